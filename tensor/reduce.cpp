// Reductions over any set of dims (sum, mean, var, norm, max/min with indices, any/all).
// One engine serves them all: after dropping size-1 dims it splits the input into kept dims (the output
// elements) and reduced dims, then picks one of three loops:
//   row    - the reduced elements of each output are one contiguous run (e.g. the last dim of a contiguous
//            tensor): a vectorised loop per output, or per chunk of a long run when outputs are few;
//   column - the last kept dim has stride 1 (e.g. reducing dim 0 of [N, C]): a block of neighbouring
//            outputs is accumulated together while walking the reduced elements, vectorised across the block;
//   generic- anything else (transposed / strided inputs): per-output walk over a table of reduced offsets.
// Additive ops (sum, mean, var, p-norms) accumulate in double. max/min return the first index on ties and
// propagate NaN (the first NaN wins), like PyTorch. Softmax lives in softmax.cpp.
#include "tensor/reduce.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <omp.h>

namespace sonar {

namespace {

constexpr int64_t kParallelMin = 1 << 14;  // elements below which a reduction stays single-threaded
constexpr int64_t kChunkMin = 1 << 13;     // smallest slice of one long reduction given to one thread
constexpr int64_t kColBlock = 64;          // outputs accumulated together on the column path

struct Plan {
  Shape out_shape;     // final output shape (keepdim respected)
  Shape ksz, kst;      // kept dims of size > 1: sizes and input strides, in input order
  Shape rsz, rst;      // reduced dims of size > 1
  int64_t O = 1, R = 1;
};

Plan make_plan(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim, const char* op) {
  SONAR_CHECK(a.defined(), op, ": input tensor is undefined");
  const int64_t nd = a.dim();
  std::vector<bool> red(static_cast<size_t>(std::max<int64_t>(nd, 1)), dims.empty());
  for (int64_t d : dims) {
    const int64_t w = wrap_dim(d, nd, op);
    SONAR_CHECK(dims.empty() || !red[w], op, ": dim ", d, " repeated in ", shape_str(dims));
    red[w] = true;
  }
  Plan p;
  for (int64_t i = 0; i < nd; ++i) {
    const int64_t s = a.size(i);
    if (red[i]) {
      if (keepdim) p.out_shape.push_back(1);
      p.R *= s;
      if (s != 1) p.rsz.push_back(s), p.rst.push_back(a.stride(i));
    } else {
      p.out_shape.push_back(s);
      p.O *= s;
      if (s != 1) p.ksz.push_back(s), p.kst.push_back(a.stride(i));
    }
  }
  return p;
}

// Offsets of every element of (shape, strides) in row-major order.
std::vector<int64_t> offsets(const Shape& shape, const Shape& strides) {
  std::vector<int64_t> v(static_cast<size_t>(shape_numel(shape)));
  for_each_offset(shape, strides, [&](int64_t i, int64_t off) { v[i] = off; });
  return v;
}

// Reduces elements r0..r1 of one output: x[r] on a contiguous run (roff == nullptr), else x[roff[r]].
template <class Op>
typename Op::Acc reduce_range(const Op& op, const typename Op::In* x, const int64_t* roff, int64_t r0, int64_t r1,
                              int64_t o) {
  if constexpr (Op::additive) {
    double s = 0.0;
    if (!roff) {
#pragma omp simd reduction(+ : s)
      for (int64_t r = r0; r < r1; ++r) s += op.map(x[r], o);
    } else {
      for (int64_t r = r0; r < r1; ++r) s += op.map(x[roff[r]], o);
    }
    return s;
  } else {
    if constexpr (requires { op.run_contiguous(x, r0, r1); }) {
      if (!roff) return op.run_contiguous(x, r0, r1);
    }
    typename Op::Acc acc = op.init();
    if (!roff)
      for (int64_t r = r0; r < r1; ++r) op.step(acc, x[r], r);
    else
      for (int64_t r = r0; r < r1; ++r) op.step(acc, x[roff[r]], r);
    return acc;
  }
}

// acc[c] += op.map(xr[c]) for a whole block of kColBlock neighbouring columns (one row of a column
// reduction). Kept out of line on purpose: inlined into the loop over rows, GCC vectorised that outer loop
// instead (gathering one column from 8 rows at a time) and the column reductions ran at 5 GB/s (3.6 ms for
// weight_norm's norm of BEATs' [768, 48, 128] positional-conv weight).
template <class Op>
__attribute__((noinline)) void add_column_block(const Op& op, const typename Op::In* xr, int64_t obase,
                                                typename Op::Acc* acc) {
#pragma omp simd
  for (int64_t c = 0; c < kColBlock; ++c) acc[c] += op.map(xr[c], obase + c);
}

template <class Op>
void combine(const Op& op, typename Op::Acc& a, const typename Op::Acc& b) {
  if constexpr (Op::additive) a += b;
  else op.combine(a, b);
}

// Runs `op` over a (whose data pointer is x) with plan p; returns one accumulator per output element.
template <class Op>
std::vector<typename Op::Acc> run(const Op& op, const Plan& p, const Tensor& a) {
  using Acc = typename Op::Acc;
  std::vector<Acc> out(static_cast<size_t>(p.O), op.init());
  if (p.O == 0 || p.R == 0) return out;
  const auto* x = static_cast<const typename Op::In*>(a.raw_data());
  const bool par = p.O * p.R > kParallelMin;
  const int64_t nt = par ? omp_get_max_threads() : 1;

  bool block = true;  // reduced elements form one contiguous run
  for (size_t i = 0; i < p.rsz.size(); ++i) {
    const int64_t want = i + 1 < p.rsz.size() ? p.rst[i + 1] * p.rsz[i + 1] : 1;
    if (p.rst[i] != want) block = false;
  }
  const bool column = !block && !p.kst.empty() && p.kst.back() == 1;

  const std::vector<int64_t> roff = block ? std::vector<int64_t>() : offsets(p.rsz, p.rst);
  const int64_t* rp = block ? nullptr : roff.data();

  // Work units: outputs (row/generic) or blocks of kColBlock neighbouring outputs (column). When there are
  // fewer units than threads, each unit's reduction is split into ordered chunks combined afterwards.
  const int64_t V = column ? p.ksz.back() : 1;
  const int64_t nb = column ? (V + kColBlock - 1) / kColBlock : 1;
  Shape osz = p.ksz, ost = p.kst;
  if (column) osz.pop_back(), ost.pop_back();
  const std::vector<int64_t> base = offsets(osz, ost);
  const int64_t units = static_cast<int64_t>(base.size()) * nb;
  int64_t nchunks = 1;
  if (par && units < 4 * nt) nchunks = std::clamp<int64_t>(p.R / kChunkMin, 1, 4 * nt);
  const int64_t W = column ? kColBlock : 1;
  std::vector<Acc> part(nchunks > 1 ? static_cast<size_t>(units * nchunks * W) : 0, op.init());

#pragma omp parallel for schedule(static) if (par)
  for (int64_t t = 0; t < units * nchunks; ++t) {
    const int64_t u = t / nchunks, ch = t % nchunks;
    const int64_t r0 = p.R * ch / nchunks, r1 = p.R * (ch + 1) / nchunks;
    if (!column) {
      const Acc acc = reduce_range(op, x + base[u], rp, r0, r1, u);
      if (nchunks > 1) part[t] = acc;
      else out[u] = acc;
      continue;
    }
    const int64_t o = u / nb, c0 = (u % nb) * kColBlock, w = std::min(V, c0 + kColBlock) - c0;
    const int64_t obase = o * V + c0;  // first output element of this block
    Acc acc[kColBlock];
    for (int64_t c = 0; c < w; ++c) acc[c] = op.init();
    if constexpr (Op::additive) {
      if (w == kColBlock) {
        for (int64_t r = r0; r < r1; ++r) add_column_block(op, x + base[o] + rp[r] + c0, obase, acc);
      } else {
        for (int64_t r = r0; r < r1; ++r) {
          const typename Op::In* xr = x + base[o] + rp[r] + c0;
#pragma omp simd
          for (int64_t c = 0; c < w; ++c) acc[c] += op.map(xr[c], obase + c);
        }
      }
    } else {
      for (int64_t r = r0; r < r1; ++r) {
        const typename Op::In* xr = x + base[o] + rp[r] + c0;
        for (int64_t c = 0; c < w; ++c) op.step(acc[c], xr[c], r);
      }
    }
    Acc* dst = nchunks > 1 ? part.data() + t * W : out.data() + obase;
    for (int64_t c = 0; c < w; ++c) dst[c] = acc[c];
  }
  if (nchunks > 1) {
    for (int64_t u = 0; u < units; ++u) {
      if (!column) {
        Acc acc = part[u * nchunks];
        for (int64_t ch = 1; ch < nchunks; ++ch) combine(op, acc, part[u * nchunks + ch]);
        out[u] = acc;
        continue;
      }
      const int64_t o = u / nb, c0 = (u % nb) * kColBlock, w = std::min(V, c0 + kColBlock) - c0;
      for (int64_t c = 0; c < w; ++c) {
        Acc acc = part[(u * nchunks) * W + c];
        for (int64_t ch = 1; ch < nchunks; ++ch) combine(op, acc, part[(u * nchunks + ch) * W + c]);
        out[o * V + c0 + c] = acc;
      }
    }
  }
  return out;
}

// ---- ops ----

struct SumOp {
  using In = float;
  using Acc = double;
  static constexpr bool additive = true;
  Acc init() const { return 0.0; }
  double map(float x, int64_t) const { return x; }
};
struct SqDevOp {  // (x - mean[o])^2
  using In = float;
  using Acc = double;
  static constexpr bool additive = true;
  const double* mean;
  Acc init() const { return 0.0; }
  double map(float x, int64_t o) const {
    const double d = x - mean[o];
    return d * d;
  }
};
struct AbsSumOp {
  using In = float;
  using Acc = double;
  static constexpr bool additive = true;
  Acc init() const { return 0.0; }
  double map(float x, int64_t) const { return std::fabs(static_cast<double>(x)); }
};
struct SqSumOp {
  using In = float;
  using Acc = double;
  static constexpr bool additive = true;
  Acc init() const { return 0.0; }
  double map(float x, int64_t) const { return static_cast<double>(x) * x; }
};
struct CountNzOp {
  using In = float;
  using Acc = double;
  static constexpr bool additive = true;
  Acc init() const { return 0.0; }
  double map(float x, int64_t) const { return x != 0.0f ? 1.0 : 0.0; }
};
struct PowSumOp {
  using In = float;
  using Acc = double;
  static constexpr bool additive = true;
  double p;
  Acc init() const { return 0.0; }
  double map(float x, int64_t) const { return std::pow(std::fabs(static_cast<double>(x)), p); }
};

// Max (kMax) or min of x[r0..r1) in one vectorised pass, and whether a NaN was seen (the selects below
// skip NaNs, so they are detected separately). (std::max/std::min do not vectorise here with GCC 12.)
template <bool kMax, bool kAbs>
float extreme_of(const float* x, int64_t r0, int64_t r1, bool& has_nan) {
  float m = kMax ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();
  int nan = 0;
  if constexpr (kMax) {
#pragma omp simd reduction(max : m) reduction(| : nan)
    for (int64_t r = r0; r < r1; ++r) {
      const float v = kAbs ? std::fabs(x[r]) : x[r];
      m = v > m ? v : m;
      nan |= v != v;
    }
  } else {
#pragma omp simd reduction(min : m) reduction(| : nan)
    for (int64_t r = r0; r < r1; ++r) {
      const float v = kAbs ? std::fabs(x[r]) : x[r];
      m = v < m ? v : m;
      nan |= v != v;
    }
  }
  has_nan = nan != 0;
  return m;
}

// Running max (kMax) or min of a value; NaN wins and sticks.
template <bool kMax>
struct ExtremeOp {
  using In = float;
  using Acc = float;
  static constexpr bool additive = false;
  bool absval = false;
  Acc init() const {
    return kMax ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();
  }
  void step(Acc& a, float x, int64_t) const {
    const float v = absval ? std::fabs(x) : x;
    if (std::isnan(v) || (kMax ? v > a : v < a)) a = std::isnan(a) ? a : v;
  }
  void combine(Acc& a, const Acc& b) const { step(a, b, 0); }
  Acc run_contiguous(const float* x, int64_t r0, int64_t r1) const {
    bool nan = false;
    const float m = absval ? extreme_of<kMax, true>(x, r0, r1, nan) : extreme_of<kMax, false>(x, r0, r1, nan);
    return nan ? std::numeric_limits<float>::quiet_NaN() : m;
  }
};

struct ValIdx {
  float v;
  int64_t i;  // -1: nothing seen yet
};
// Running max/min with the index of its first occurrence; the first NaN wins.
template <bool kMax>
struct ArgOp {
  using In = float;
  using Acc = ValIdx;
  static constexpr bool additive = false;
  Acc init() const { return {0.0f, -1}; }
  static bool better(float x, float best) {
    if (std::isnan(best)) return false;
    return std::isnan(x) || (kMax ? x > best : x < best);
  }
  void step(Acc& a, float x, int64_t r) const {
    if (a.i < 0 || better(x, a.v)) a = {x, r};
  }
  void combine(Acc& a, const Acc& b) const {  // b covers later elements than a
    if (b.i >= 0 && (a.i < 0 || better(b.v, a.v))) a = b;
  }
  // Vectorised: find the extreme value, then its first occurrence (or the first NaN).
  Acc run_contiguous(const float* x, int64_t r0, int64_t r1) const {
    if (r0 == r1) return init();
    bool nan = false;
    const float m = extreme_of<kMax, false>(x, r0, r1, nan);
    for (int64_t r = r0; r < r1; ++r)
      if (nan ? x[r] != x[r] : x[r] == m) return {x[r], r};
    return init();  // unreachable
  }
};

template <bool kAny>
struct BoolOp {
  using In = uint8_t;
  using Acc = uint8_t;
  static constexpr bool additive = false;
  Acc init() const { return kAny ? 0 : 1; }
  void step(Acc& a, uint8_t x, int64_t) const {
    if (kAny) a = a | (x != 0);
    else a = a & (x != 0);
  }
  void combine(Acc& a, const Acc& b) const { step(a, b, 0); }
};

Tensor float_input(const Tensor& a, const char* op) {
  SONAR_CHECK(a.defined(), op, ": input tensor is undefined");
  return a.dtype() == DType::Float32 ? a : a.to(DType::Float32);
}

template <class Acc, class F>
Tensor to_float_tensor(const Shape& shape, const std::vector<Acc>& acc, F&& f) {
  Tensor out = Tensor::empty(shape);
  float* o = out.data<float>();
  for (size_t i = 0; i < acc.size(); ++i) o[i] = static_cast<float>(f(acc[i]));
  return out;
}

ValuesIndices extreme_with_index(const Tensor& a, int64_t dim, bool keepdim, bool is_max, const char* op) {
  a.check_dtype(DType::Float32, op);
  const Plan p = make_plan(a, {dim}, keepdim, op);
  SONAR_CHECK(p.R > 0, op, ": cannot reduce dim ", dim, " of size 0 in ", shape_str(a.shape()));
  std::vector<ValIdx> acc = is_max ? run(ArgOp<true>{}, p, a) : run(ArgOp<false>{}, p, a);
  ValuesIndices r{Tensor::empty(p.out_shape), Tensor::empty(p.out_shape, DType::Int64)};
  float* v = r.values.data<float>();
  int64_t* ix = r.indices.data<int64_t>();
  for (size_t i = 0; i < acc.size(); ++i) v[i] = acc[i].v, ix[i] = acc[i].i;
  return r;
}

Tensor extreme_all(const Tensor& a, bool is_max, const char* op) {
  a.check_dtype(DType::Float32, op);
  SONAR_CHECK(a.numel() > 0, op, ": cannot reduce an empty tensor ", shape_str(a.shape()));
  const Plan p = make_plan(a, {}, false, op);
  std::vector<float> acc = is_max ? run(ExtremeOp<true>{}, p, a) : run(ExtremeOp<false>{}, p, a);
  return scalar_tensor(acc[0]);
}

Tensor bool_reduce(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim, bool is_any, const char* op) {
  SONAR_CHECK(a.defined(), op, ": input tensor is undefined");
  SONAR_CHECK(a.dtype() == DType::Bool || a.dtype() == DType::UInt8, op, ": expected a bool or uint8 tensor, got ",
              dtype_name(a.dtype()), " ", shape_str(a.shape()));
  const Plan p = make_plan(a, dims, keepdim, op);
  std::vector<uint8_t> acc = is_any ? run(BoolOp<true>{}, p, a) : run(BoolOp<false>{}, p, a);
  Tensor out = Tensor::empty(p.out_shape, DType::Bool);
  std::copy(acc.begin(), acc.end(), out.bytes());
  return out;
}

}  // namespace

Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  Tensor x = float_input(a, "sum");
  const Plan p = make_plan(x, dims, keepdim, "sum");
  return to_float_tensor(p.out_shape, run(SumOp{}, p, x), [](double s) { return s; });
}

Tensor mean(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  Tensor x = float_input(a, "mean");
  const Plan p = make_plan(x, dims, keepdim, "mean");
  const double n = static_cast<double>(p.R);
  return to_float_tensor(p.out_shape, run(SumOp{}, p, x), [n](double s) { return s / n; });
}

// Two passes in double: the mean, then the sum of squared deviations from it.
Tensor var(const Tensor& a, const std::vector<int64_t>& dims, bool unbiased, bool keepdim) {
  Tensor x = float_input(a, "var");
  const Plan p = make_plan(x, dims, keepdim, "var");
  const double n = static_cast<double>(p.R);
  std::vector<double> m = run(SumOp{}, p, x);
  for (double& v : m) v /= n;
  const double denom = unbiased ? n - 1.0 : n;  // 0 -> NaN (or inf), as in torch
  std::vector<double> ss = run(SqDevOp{m.data()}, p, x);
  return to_float_tensor(p.out_shape, ss, [denom](double s) {
    return denom > 0 ? s / denom : std::numeric_limits<double>::quiet_NaN();
  });
}

Tensor norm(const Tensor& a, double p, const std::vector<int64_t>& dims, bool keepdim) {
  Tensor x = float_input(a, "norm");
  const Plan pl = make_plan(x, dims, keepdim, "norm");
  if (p == 2.0) return to_float_tensor(pl.out_shape, run(SqSumOp{}, pl, x), [](double s) { return std::sqrt(s); });
  if (p == 1.0) return to_float_tensor(pl.out_shape, run(AbsSumOp{}, pl, x), [](double s) { return s; });
  if (p == 0.0) return to_float_tensor(pl.out_shape, run(CountNzOp{}, pl, x), [](double s) { return s; });
  if (std::isinf(p)) {
    if (pl.R == 0) return to_float_tensor(pl.out_shape, std::vector<float>(pl.O, 0.0f), [](float v) { return v; });
    auto id = [](float v) { return v; };
    if (p > 0) return to_float_tensor(pl.out_shape, run(ExtremeOp<true>{true}, pl, x), id);
    return to_float_tensor(pl.out_shape, run(ExtremeOp<false>{true}, pl, x), id);
  }
  return to_float_tensor(pl.out_shape, run(PowSumOp{p}, pl, x), [p](double s) { return std::pow(s, 1.0 / p); });
}

ValuesIndices max(const Tensor& a, int64_t dim, bool keepdim) { return extreme_with_index(a, dim, keepdim, true, "max"); }
ValuesIndices min(const Tensor& a, int64_t dim, bool keepdim) {
  return extreme_with_index(a, dim, keepdim, false, "min");
}
Tensor max_all(const Tensor& a) { return extreme_all(a, true, "max_all"); }
Tensor min_all(const Tensor& a) { return extreme_all(a, false, "min_all"); }
Tensor argmax(const Tensor& a, int64_t dim, bool keepdim) {
  return extreme_with_index(a, dim, keepdim, true, "argmax").indices;
}
Tensor argmin(const Tensor& a, int64_t dim, bool keepdim) {
  return extreme_with_index(a, dim, keepdim, false, "argmin").indices;
}
Tensor any(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  return bool_reduce(a, dims, keepdim, true, "any");
}
Tensor all(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  return bool_reduce(a, dims, keepdim, false, "all");
}

}  // namespace sonar
