// Broadcasting binary arithmetic (add, sub, mul, div, pow, maximum, minimum and their scalar forms), the
// in-place accumulation primitives add_ and mul_, and sum_to_shape (the broadcast-gradient reduction).
// Unary math lives in elementwise_unary.cpp; comparisons, where and logical ops in elementwise_compare.cpp.
// Not here: reductions along a dim (tensor/reduce.h).
#include <cmath>
#include <vector>

#include "tensor/broadcast_iter.h"
#include "tensor/elementwise.h"

namespace sonar {

using detail::map_binary;
using detail::map_unary;
using detail::ptr;

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    SONAR_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", shape_str(a), " and ", shape_str(b),
                " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  SONAR_CHECK(n <= static_cast<size_t>(kMaxDims), op, ": broadcast of ", shape_str(a), " and ", shape_str(b),
              " has more than ", kMaxDims, " dims");
  return out;
}

namespace {

void check_defined(const Tensor& t, const char* op) { SONAR_CHECK(t.defined(), op, ": undefined tensor"); }

bool is_float(const Tensor& t) { return t.dtype() == DType::Float32; }

// A float that converts exactly to int64 (whole and in range).
bool is_whole(float s) { return std::isfinite(s) && s == std::trunc(s) && std::fabs(s) < 9.2e18f; }

// An in-place destination must not have several elements at one address (an expanded view): the
// writes would race and the result would depend on the order.
void check_writable(const Tensor& t, const char* op) {
  for (int64_t d = 0; d < t.dim(); ++d)
    SONAR_CHECK(t.strides()[d] != 0 || t.shape()[d] <= 1, op, ": destination ", shape_str(t.shape()), " with strides ",
                shape_str(t.strides()), " is an expanded view (several elements share one address)");
}

// Result dtype of an arithmetic op: float32 if either input is float32, otherwise int64 (bool and uint8
// count as integers). `float_only` ops (div, pow) refuse two non-float inputs.
DType arith_dtype(const Tensor& a, const Tensor& b, const char* op, bool float_only) {
  if (is_float(a) || is_float(b)) return DType::Float32;
  SONAR_CHECK(!float_only, op, ": needs a float32 input, got ", dtype_name(a.dtype()), " and ",
              dtype_name(b.dtype()), " (convert with .to(DType::Float32))");
  return DType::Int64;
}

struct AddOp { template <class T> T operator()(T x, T y) const { return x + y; } };
struct SubOp { template <class T> T operator()(T x, T y) const { return x - y; } };
struct MulOp { template <class T> T operator()(T x, T y) const { return x * y; } };
struct DivOp { float operator()(float x, float y) const { return x / y; } };
struct PowOp { float operator()(float x, float y) const { return std::pow(x, y); } };
// NaN-propagating like torch.maximum / torch.minimum.
struct MaxOp {
  template <class T> T operator()(T x, T y) const { return (x > y || x != x) ? x : y; }
};
struct MinOp {
  template <class T> T operator()(T x, T y) const { return (x < y || x != x) ? x : y; }
};

template <class Op>
Tensor binary(const Tensor& a, const Tensor& b, const char* name, bool float_only, Op op,
              int64_t grain = detail::kGrainCheap) {
  check_defined(a, name);
  check_defined(b, name);
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  const DType dt = arith_dtype(a, b, name, float_only);
  Tensor out = Tensor::empty(shape, dt);
  const Tensor x = a.to(dt), y = b.to(dt);
  if (dt == DType::Float32) {
    map_binary<float, float, float>(out, x, y, op, grain, name);
  } else if constexpr (std::is_invocable_v<Op, int64_t, int64_t>) {
    map_binary<int64_t, int64_t, int64_t>(out, x, y, op, grain, name);
  }
  return out;
}

// a (op) scalar. Integer tensors stay int64 when the scalar is a whole number, otherwise become float32.
template <class Op>
Tensor binary_scalar(const Tensor& a, float s, const char* name, Op op) {
  check_defined(a, name);
  if (!is_float(a) && is_whole(s)) {
    Tensor x = a.to(DType::Int64);
    Tensor out = Tensor::empty(a.shape(), DType::Int64);
    const int64_t v = static_cast<int64_t>(s);
    map_unary<int64_t, int64_t>(out, x, [=](int64_t e) { return op(e, v); }, detail::kGrainCheap, name);
    return out;
  }
  Tensor x = a.to(DType::Float32);
  Tensor out = Tensor::empty(a.shape(), DType::Float32);
  map_unary<float, float>(out, x, [=](float e) { return op(e, s); }, detail::kGrainCheap, name);
  return out;
}

Tensor float_input(const Tensor& a, const char* name) {
  check_defined(a, name);
  SONAR_CHECK(is_float(a), name, ": needs a float32 tensor, got ", dtype_name(a.dtype()), " ", shape_str(a.shape()),
              " (convert with .to(DType::Float32))");
  return a;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary(a, b, "add", false, AddOp{}); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(a, b, "sub", false, SubOp{}); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(a, b, "mul", false, MulOp{}); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(a, b, "div", true, DivOp{}); }
Tensor pow(const Tensor& a, const Tensor& b) { return binary(a, b, "pow", true, PowOp{}, detail::kGrainMath); }
Tensor maximum(const Tensor& a, const Tensor& b) { return binary(a, b, "maximum", false, MaxOp{}); }
Tensor minimum(const Tensor& a, const Tensor& b) { return binary(a, b, "minimum", false, MinOp{}); }

Tensor add(const Tensor& a, float b) { return binary_scalar(a, b, "add", AddOp{}); }
Tensor sub(const Tensor& a, float b) { return binary_scalar(a, b, "sub", SubOp{}); }
Tensor mul(const Tensor& a, float b) { return binary_scalar(a, b, "mul", MulOp{}); }

Tensor div(const Tensor& a, float b) {
  float_input(a, "div");
  Tensor out = Tensor::empty(a.shape());
  map_unary<float, float>(out, a, [=](float x) { return x / b; }, detail::kGrainCheap, "div");
  return out;
}

Tensor pow(const Tensor& a, float e) {
  float_input(a, "pow");
  Tensor out = Tensor::empty(a.shape());
  // Common exponents get exact, vectorisable forms.
  if (e == 2.0f) {
    map_unary<float, float>(out, a, [](float x) { return x * x; });
  } else if (e == 1.0f) {
    map_unary<float, float>(out, a, [](float x) { return x; });
  } else if (e == 3.0f) {
    map_unary<float, float>(out, a, [](float x) { return x * x * x; });
  } else if (e == 0.5f) {
    map_unary<float, float>(out, a, [](float x) { return std::sqrt(x); });
  } else if (e == -1.0f) {
    map_unary<float, float>(out, a, [](float x) { return 1.0f / x; });
  } else if (e == 0.0f) {
    out.fill_(1.0);
  } else {
    map_unary<float, float>(out, a, [=](float x) { return std::pow(x, e); }, detail::kGrainMath);
  }
  return out;
}

void add_(Tensor& a, const Tensor& b, float alpha) {
  check_defined(a, "add_");
  check_defined(b, "add_");
  check_writable(a, "add_");
  SONAR_CHECK(a.dtype() == DType::Float32 || a.dtype() == DType::Int64, "add_: destination must be float32 or int64, got ",
              dtype_name(a.dtype()));
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), "add_");
  SONAR_CHECK(shape == a.shape(), "add_: cannot broadcast ", shape_str(b.shape()), " into the destination shape ",
              shape_str(a.shape()));
  Tensor y = b.to(a.dtype());
  // A source that overlaps the destination with another layout would be read after being written.
  if (y.shares_storage(a) && !(y.offset() == a.offset() && y.strides() == a.strides() && y.shape() == a.shape()))
    y = y.clone();
  if (a.dtype() == DType::Int64) {
    SONAR_CHECK(is_whole(alpha), "add_: int64 destination needs a whole alpha, got ", alpha);
    const int64_t al = static_cast<int64_t>(alpha);
    map_binary<int64_t, int64_t, int64_t>(a, a, y, [=](int64_t x, int64_t v) { return x + al * v; },
                                          detail::kGrainCheap, "add_");
    return;
  }
  if (a.is_contiguous() && y.is_contiguous() && y.shape() == a.shape()) {  // the gradient-accumulation case
    float* pa = ptr<float>(a);
    const float* pb = ptr<float>(y);
    detail::parallel_range(a.numel(), detail::kGrainCheap, [&](int64_t lo, int64_t hi) {
      if (alpha == 1.0f) {
#pragma omp simd
        for (int64_t i = lo; i < hi; ++i) pa[i] += pb[i];
      } else {
#pragma omp simd
        for (int64_t i = lo; i < hi; ++i) pa[i] += alpha * pb[i];
      }
    });
    return;
  }
  if (alpha == 1.0f)
    map_binary<float, float, float>(a, a, y, AddOp{}, detail::kGrainCheap, "add_");
  else
    map_binary<float, float, float>(a, a, y, [=](float x, float v) { return x + alpha * v; }, detail::kGrainCheap,
                                    "add_");
}

void mul_(Tensor& a, float s) {
  check_defined(a, "mul_");
  check_writable(a, "mul_");
  if (a.dtype() == DType::Int64) {
    SONAR_CHECK(is_whole(s), "mul_: int64 tensor needs a whole factor, got ", s);
    const int64_t v = static_cast<int64_t>(s);
    map_unary<int64_t, int64_t>(a, a, [=](int64_t x) { return x * v; });
    return;
  }
  float_input(a, "mul_");
  map_unary<float, float>(a, a, [=](float x) { return x * s; });
}

// ---- sum_to_shape ----

namespace {

// out[p, q] = sum_r in[p, r, q] for a contiguous [P, R, Q] input; out is contiguous [P, Q].
void sum_middle(const float* in, float* out, int64_t P, int64_t R, int64_t Q) {
  const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
  const int64_t work = P * R * Q;
  if (Q == 1) {  // row sums
    if (P >= nt || work < detail::kGrainCheap) {
      detail::parallel_range(P, std::max<int64_t>(1, detail::kGrainCheap / std::max<int64_t>(R, 1)),
                             [&](int64_t lo, int64_t hi) {
                               for (int64_t p = lo; p < hi; ++p) {
                                 const float* x = in + p * R;
                                 float s = 0.0f;
#pragma omp simd reduction(+ : s)
                                 for (int64_t r = 0; r < R; ++r) s += x[r];
                                 out[p] = s;
                               }
                             });
    } else {  // few long rows: split each row among threads
      for (int64_t p = 0; p < P; ++p) {
        const float* x = in + p * R;
        std::vector<double> part(nt, 0.0);
        detail::parallel_range(R, detail::kGrainCheap, [&](int64_t lo, int64_t hi) {
          float s = 0.0f;
#pragma omp simd reduction(+ : s)
          for (int64_t r = lo; r < hi; ++r) s += x[r];
          part[omp_get_thread_num()] = s;
        });
        double s = 0.0;
        for (double v : part) s += v;
        out[p] = static_cast<float>(s);
      }
    }
    return;
  }
  // Column sums of [R, Q] blocks.
  auto colsum = [&](const float* x, float* o, int64_t r0, int64_t r1) {
    for (int64_t q = 0; q < Q; ++q) o[q] = 0.0f;
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = x + r * Q;
#pragma omp simd
      for (int64_t q = 0; q < Q; ++q) o[q] += row[q];
    }
  };
  if (P >= nt || work < detail::kGrainCheap) {
    detail::parallel_range(P, std::max<int64_t>(1, detail::kGrainCheap / std::max<int64_t>(R * Q, 1)),
                           [&](int64_t lo, int64_t hi) {
                             for (int64_t p = lo; p < hi; ++p) colsum(in + p * R * Q, out + p * Q, 0, R);
                           });
    return;
  }
  // Few blocks: split the rows of each block among threads, each with its own partial row, then add them.
  for (int64_t p = 0; p < P; ++p) {
    const float* x = in + p * R * Q;
    float* o = out + p * Q;
    const int64_t rows_grain = std::max<int64_t>(1, detail::kGrainCheap / Q);
    const int64_t T = std::max<int64_t>(1, std::min<int64_t>(nt, R / rows_grain));
    if (T <= 1) {
      colsum(x, o, 0, R);
      continue;
    }
    std::vector<float> part(static_cast<size_t>(T * Q));
#pragma omp parallel for num_threads(static_cast<int>(T)) schedule(static, 1)
    for (int64_t t = 0; t < T; ++t) colsum(x, part.data() + t * Q, R * t / T, R * (t + 1) / T);
    for (int64_t q = 0; q < Q; ++q) o[q] = part[q];
    for (int64_t t = 1; t < T; ++t) {
      const float* pt = part.data() + t * Q;
#pragma omp simd
      for (int64_t q = 0; q < Q; ++q) o[q] += pt[q];
    }
  }
}

}  // namespace

Tensor sum_to_shape(const Tensor& grad, const Shape& shape) {
  check_defined(grad, "sum_to_shape");
  if (grad.shape() == shape) return grad;
  const int64_t nd = grad.dim(), td = static_cast<int64_t>(shape.size());
  auto mismatch = [&]() {
    return detail::concat("sum_to_shape: cannot reduce ", shape_str(grad.shape()), " to ", shape_str(shape),
                          " (the target must broadcast to the gradient's shape)");
  };
  if (td > nd) throw Error(mismatch());
  // reduced[d]: dim d of grad is summed away (a leading extra dim, or target size 1 vs grad size > 1).
  std::vector<bool> reduced(nd);
  for (int64_t d = 0; d < nd; ++d) {
    const int64_t t = d < nd - td ? 1 : shape[d - (nd - td)];
    if (t == grad.shape()[d]) {
      reduced[d] = false;  // kept (leading size-1 dims of grad just disappear)
    } else if (t == 1) {
      reduced[d] = true;
    } else {
      throw Error(mismatch());
    }
  }
  SONAR_CHECK(grad.dtype() == DType::Float32, "sum_to_shape: needs a float32 gradient, got ",
              dtype_name(grad.dtype()));
  Tensor g = grad.contiguous();
  Tensor out = Tensor::empty(shape);
  if (g.numel() == 0 || out.numel() == 0) {
    out.zero_();
    return out;
  }
  // Group consecutive dims of the same kind (size-1 dims join any group): sizes alternate kept/reduced.
  std::vector<int64_t> gsize;
  std::vector<bool> gred;
  for (int64_t d = 0; d < nd; ++d) {
    const int64_t s = g.shape()[d];
    if (s == 1) continue;
    if (!gsize.empty() && gred.back() == reduced[d]) {
      gsize.back() *= s;
    } else {
      gsize.push_back(s);
      gred.push_back(reduced[d]);
    }
  }
  // Reduce the innermost reduced group each pass: [P, R, Q] -> [P, Q] (P = product of outer groups).
  Tensor cur = g;
  while (true) {
    int64_t k = static_cast<int64_t>(gsize.size()) - 1;
    while (k >= 0 && !gred[k]) --k;
    if (k < 0) break;
    int64_t P = 1, Q = 1;
    for (int64_t i = 0; i < k; ++i) P *= gsize[i];
    for (size_t i = k + 1; i < gsize.size(); ++i) Q *= gsize[i];
    const int64_t R = gsize[k];
    bool last = true;
    for (int64_t i = 0; i < k; ++i) last &= !gred[i];
    Tensor next = last ? out : Tensor::empty({P * Q});
    sum_middle(ptr<float>(cur), ptr<float>(next), P, R, Q);
    cur = next;
    // Drop group k and merge its neighbours if both are kept.
    gsize.erase(gsize.begin() + k);
    gred.erase(gred.begin() + k);
    if (k > 0 && k < static_cast<int64_t>(gsize.size()) && gred[k - 1] == gred[k]) {
      gsize[k - 1] *= gsize[k];
      gsize.erase(gsize.begin() + k);
      gred.erase(gred.begin() + k);
    }
    if (last) return out;
  }
  // Nothing summed (only size-1 dims differ): a reshaped copy.
  out.copy_(g.reshape(shape));
  return out;
}

}  // namespace sonar
