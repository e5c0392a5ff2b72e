// Unary elementwise math (neg, abs, exp, log, sqrt, rsqrt, tanh, sigmoid, relu, gelu, clamp, sign),
// gelu_backward and gelu_with_grad (gelu and its derivative in one pass, for training). All float32 math is
// done in float32 (exp, tanh, sigmoid and the erf of gelu by the vectorisable few-ulp functions of
// tensor/elementwise_math.h); outputs are fresh contiguous tensors of the input's shape, inputs may be
// strided. Not here: binary ops (elementwise.cpp), comparisons (elementwise_compare.cpp).
#include <cmath>
#include <limits>
#ifdef __AVX__
#include <immintrin.h>
#endif

#include "tensor/broadcast_iter.h"
#include "tensor/elementwise_math.h"
#include "tensor/elementwise.h"

namespace sonar {

using detail::map_binary;
using detail::map_unary;

namespace {

void check_defined(const Tensor& t, const char* op) { SONAR_CHECK(t.defined(), op, ": undefined tensor"); }

// Float-only op: throws naming the op and dtype for non-float input.
template <class Op>
Tensor unary_float(const Tensor& a, const char* name, Op op, int64_t grain = detail::kGrainMath) {
  check_defined(a, name);
  SONAR_CHECK(a.dtype() == DType::Float32, name, ": needs a float32 tensor, got ", dtype_name(a.dtype()), " ",
              shape_str(a.shape()), " (convert with .to(DType::Float32))");
  Tensor out = Tensor::empty(a.shape());
  map_unary<float, float>(out, a, op, grain, name);
  return out;
}

// Op defined for float32 and int64 (keeps the dtype); bool/uint8 are refused.
template <class Op>
Tensor unary_numeric(const Tensor& a, const char* name, Op op) {
  check_defined(a, name);
  if (a.dtype() == DType::Int64) {
    Tensor out = Tensor::empty(a.shape(), DType::Int64);
    map_unary<int64_t, int64_t>(out, a, op, detail::kGrainCheap, name);
    return out;
  }
  SONAR_CHECK(a.dtype() == DType::Float32, name, ": needs a float32 or int64 tensor, got ", dtype_name(a.dtype()));
  Tensor out = Tensor::empty(a.shape());
  map_unary<float, float>(out, a, op, detail::kGrainCheap, name);
  return out;
}

// GCC does not vectorise sqrt unless errno may be ignored. These loops use AVX directly, written before the
// build set -fno-math-errno (CMakeLists.txt; since then plain loops would vectorise too, e.g. AdamW's).
// vsqrtps is correctly rounded, like sqrtf, so either way the results are those of sqrtf.
void sqrt_loop(const float* x, float* o, int64_t n) {
  int64_t i = 0;
#ifdef __AVX__
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(o + i, _mm256_sqrt_ps(_mm256_loadu_ps(x + i)));
#endif
  for (; i < n; ++i) o[i] = std::sqrt(x[i]);
}
void rsqrt_loop(const float* x, float* o, int64_t n) {
  int64_t i = 0;
#ifdef __AVX__
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(o + i, _mm256_div_ps(one, _mm256_sqrt_ps(_mm256_loadu_ps(x + i))));
#endif
  for (; i < n; ++i) o[i] = 1.0f / std::sqrt(x[i]);
}

Tensor contiguous_loop(const Tensor& a, const char* name, void (*loop)(const float*, float*, int64_t)) {
  check_defined(a, name);
  SONAR_CHECK(a.dtype() == DType::Float32, name, ": needs a float32 tensor, got ", dtype_name(a.dtype()), " ",
              shape_str(a.shape()), " (convert with .to(DType::Float32))");
  const Tensor x = a.contiguous();
  Tensor out = Tensor::empty(a.shape());
  const float* px = detail::ptr<float>(x);
  float* po = detail::ptr<float>(out);
  detail::parallel_range(x.numel(), detail::kGrainCheap, [&](int64_t lo, int64_t hi) { loop(px + lo, po + lo, hi - lo); });
  return out;
}

}  // namespace

Tensor neg(const Tensor& a) {
  return unary_numeric(a, "neg", [](auto x) { return -x; });
}
Tensor abs(const Tensor& a) {
  return unary_numeric(a, "abs", [](auto x) { return x < 0 ? -x : x; });
}
Tensor sign(const Tensor& a) {
  // NaN stays NaN for floats.
  return unary_numeric(a, "sign", [](auto x) {
    using T = decltype(x);
    return x != x ? x : static_cast<T>((x > 0) - (x < 0));
  });
}
Tensor relu(const Tensor& a) {
  return unary_numeric(a, "relu", [](auto x) { return x < 0 ? decltype(x)(0) : x; });  // NaN propagates
}
Tensor clamp(const Tensor& a, float lo, float hi) {
  check_defined(a, "clamp");
  SONAR_CHECK(!(lo > hi), "clamp: lo ", lo, " is greater than hi ", hi);
  if (a.dtype() == DType::Int64) {
    // Bounds rounded inwards and saturated to the int64 range (a float bound may be +-inf or huge).
    auto to_i64 = [](double v) {
      if (v <= -9.2233720368547758e18) return std::numeric_limits<int64_t>::min();
      if (v >= 9.2233720368547758e18) return std::numeric_limits<int64_t>::max();
      return static_cast<int64_t>(v);
    };
    const int64_t l = to_i64(std::ceil(double(lo))), h = to_i64(std::floor(double(hi)));
    return unary_numeric(a, "clamp", [=](int64_t x) { return x < l ? l : (x > h ? h : x); });
  }
  return unary_numeric(a, "clamp", [=](float x) { return x < lo ? lo : (x > hi ? hi : x); });  // NaN propagates
}

Tensor exp(const Tensor& a) {
  return unary_float(a, "exp", [](float x) { return detail::exp_f(x); }, detail::kGrainCheap);
}
Tensor log(const Tensor& a) {
  return unary_float(a, "log", [](float x) { return std::log(x); });
}
Tensor sqrt(const Tensor& a) {
  return contiguous_loop(a, "sqrt", sqrt_loop);
}
Tensor rsqrt(const Tensor& a) {
  return contiguous_loop(a, "rsqrt", rsqrt_loop);
}
Tensor tanh(const Tensor& a) {
  return unary_float(a, "tanh", [](float x) { return detail::tanh_f(x); });
}
Tensor sigmoid(const Tensor& a) {
  // Stable for large |x|: see detail::sigmoid_f.
  return unary_float(a, "sigmoid", [](float x) { return detail::sigmoid_f(x); });
}
Tensor gelu(const Tensor& a) {
  return unary_float(a, "gelu", [](float x) { return detail::gelu_f(x); });
}

Tensor gelu_with_grad(const Tensor& x, Tensor& dydx) {
  check_defined(x, "gelu_with_grad");
  SONAR_CHECK(x.dtype() == DType::Float32, "gelu_with_grad: needs a float32 tensor, got ", dtype_name(x.dtype()),
              " ", shape_str(x.shape()));
  Tensor y = Tensor::empty(x.shape());
  dydx = Tensor::empty(x.shape());
  detail::StridedLoop<3> loop(x.shape(), {y.strides().data(), dydx.strides().data(), x.strides().data()});
  float* py = y.data<float>();
  float* pd = dydx.data<float>();
  const float* px = x.data<float>();
  const int64_t sx = loop.inner_stride(2);
  loop.run(
      [&](const int64_t* off, int64_t n) SONAR_FLATTEN {
        float* o = py + off[0];
        float* d = pd + off[1];
        const float* v = px + off[2];
        if (sx == 1) {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) detail::gelu_and_grad_f(v[i], o[i], d[i]);
        } else {
          for (int64_t i = 0; i < n; ++i) detail::gelu_and_grad_f(v[i * sx], o[i], d[i]);
        }
      },
      detail::kGrainMath);
  return y;
}

Tensor gelu_backward(const Tensor& grad_out, const Tensor& x) {
  check_defined(grad_out, "gelu_backward");
  check_defined(x, "gelu_backward");
  SONAR_CHECK(grad_out.dtype() == DType::Float32 && x.dtype() == DType::Float32,
              "gelu_backward: needs float32 tensors, got ", dtype_name(grad_out.dtype()), " and ",
              dtype_name(x.dtype()));
  const Shape shape = broadcast_shapes(grad_out.shape(), x.shape(), "gelu_backward");
  Tensor out = Tensor::empty(shape);
  // d/dx [x * Phi(x)] = Phi(x) + x * phi(x).
  map_binary<float, float, float>(
      out, grad_out, x,
      [](float g, float v) { return g * detail::gelu_grad_f(v); },
      detail::kGrainMath, "gelu_backward");
  return out;
}

}  // namespace sonar
