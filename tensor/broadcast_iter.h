// Internal: a strided, broadcasting loop over N operands for elementwise kernels (and anything else that
// walks several same-shaped or broadcast views in lockstep). It is not a public API of the framework and
// does no math; kernels in tensor/elementwise*.cpp are its main users.
//
// Usage (out = a + b with numpy broadcasting; out freshly allocated):
//   Shape sa = detail::broadcast_strides(a, out.shape()), sb = detail::broadcast_strides(b, out.shape());
//   detail::StridedLoop<3> loop(out.shape(), {out.strides().data(), sa.data(), sb.data()});
//   loop.run([&](const int64_t* off, int64_t n) {
//     // n consecutive elements of the innermost (coalesced) dim; operand k starts at element offset off[k]
//     // and steps by loop.inner_stride(k) (1 for contiguous runs, 0 for a broadcast operand).
//   });
//
// The loop drops size-1 dims, merges dims that are contiguous for every operand (so a contiguous
// elementwise op becomes a single run split among threads), and, when operand 0 is written (never
// broadcast), orders dims so operand 0 is walked in memory order. run() splits the flat element range
// evenly among OpenMP threads; each thread sees runs in row-major order within its range, so the result
// never depends on the thread count for kernels that write each output element once.
#pragma once
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "tensor/tensor.h"

// Inlines everything a kernel's inner loop calls (the per-element op), so the loop can vectorise even when
// the op is too big for the inliner's default budget.
#if defined(__GNUC__) && !defined(__clang__)
#define SONAR_FLATTEN __attribute__((flatten))
#else
#define SONAR_FLATTEN
#endif

namespace sonar::detail {

// Elements per thread below which run() stays serial: cheap ops (add) vs expensive ones (erf, exp).
constexpr int64_t kGrainCheap = 1 << 15;
constexpr int64_t kGrainMath = 1 << 12;

// Strides of `t` viewed as broadcast to `shape` (aligned from the right; 0 where t has size 1 or lacks
// the dim). Throws naming `op` when t does not broadcast to shape.
inline Shape broadcast_strides(const Tensor& t, const Shape& shape, const char* op = "broadcast") {
  const int64_t nd = static_cast<int64_t>(shape.size()), td = t.dim();
  SONAR_CHECK(td <= nd, op, ": cannot broadcast ", shape_str(t.shape()), " to ", shape_str(shape));
  Shape st(shape.size(), 0);
  for (int64_t i = 0; i < td; ++i) {
    const int64_t d = nd - td + i, s = t.shape()[i];
    SONAR_CHECK(s == shape[d] || s == 1, op, ": cannot broadcast ", shape_str(t.shape()), " to ",
                shape_str(shape));
    st[d] = (s == 1 && shape[d] != 1) ? 0 : t.strides()[i];
  }
  return st;
}

template <int N>
class StridedLoop {
 public:
  // `shape` is the iteration shape; strides[k] points at shape.size() element strides of operand k.
  StridedLoop(const Shape& shape, const std::array<const int64_t*, N>& strides) {
    numel_ = shape_numel(shape);
    const int nd = static_cast<int>(shape.size());
    SONAR_CHECK(nd <= kMaxDims, "StridedLoop: at most ", kMaxDims, " dims, got ", shape_str(shape));
    // Keep non-trivial dims.
    for (int d = 0; d < nd; ++d) {
      if (shape[d] == 1) continue;
      shape_[ndim_] = shape[d];
      for (int k = 0; k < N; ++k) strides_[k][ndim_] = strides[k][d];
      ++ndim_;
    }
    // Walk operand 0 in memory order when it has no broadcast (zero) strides: stable insertion sort of
    // dims by operand-0 stride, descending (innermost = smallest).
    bool sortable = true;
    for (int d = 0; d < ndim_; ++d) sortable &= strides_[0][d] > 0;
    if (sortable) {
      for (int i = 1; i < ndim_; ++i)
        for (int j = i; j > 0 && strides_[0][j - 1] < strides_[0][j]; --j) swap_dims(j - 1, j);
    }
    // Merge dim d into d-1 when every operand is contiguous across the pair.
    int w = 0;
    for (int d = 1; d < ndim_; ++d) {
      bool merge = true;
      for (int k = 0; k < N; ++k) merge &= strides_[k][w] == strides_[k][d] * shape_[d];
      if (merge) {
        shape_[w] *= shape_[d];
        for (int k = 0; k < N; ++k) strides_[k][w] = strides_[k][d];
      } else {
        ++w;
        shape_[w] = shape_[d];
        for (int k = 0; k < N; ++k) strides_[k][w] = strides_[k][d];
      }
    }
    if (ndim_ > 0) ndim_ = w + 1;
    if (ndim_ == 0) {  // scalar (or all size-1 dims): one run of one element
      ndim_ = 1;
      shape_[0] = 1;
      for (int k = 0; k < N; ++k) strides_[k][0] = 0;
    }
  }

  int64_t numel() const { return numel_; }
  int ndim() const { return ndim_; }
  int64_t size(int d) const { return shape_[d]; }
  int64_t stride(int k, int d) const { return strides_[k][d]; }
  int64_t inner_size() const { return shape_[ndim_ - 1]; }
  int64_t inner_stride(int k) const { return strides_[k][ndim_ - 1]; }

  // Serial walk of flat elements [begin, end): f(off, n) per run, off[k] = element offset of operand k.
  template <class F>
  void run_range(int64_t begin, int64_t end, F&& f) const {
    if (begin >= end) return;
    const int in = ndim_ - 1;
    int64_t idx[kMaxDims];
    int64_t off[N];
    for (int k = 0; k < N; ++k) off[k] = 0;
    int64_t rem = begin;
    for (int d = in; d >= 0; --d) {
      idx[d] = rem % shape_[d];
      rem /= shape_[d];
      for (int k = 0; k < N; ++k) off[k] += idx[d] * strides_[k][d];
    }
    int64_t pos = begin;
    while (pos < end) {
      const int64_t n = std::min(shape_[in] - idx[in], end - pos);
      f(static_cast<const int64_t*>(off), n);
      pos += n;
      if (pos >= end) break;
      // Advance to the start of the next inner row (n always reaches the row end here).
      for (int k = 0; k < N; ++k) off[k] -= idx[in] * strides_[k][in];
      idx[in] = 0;
      for (int d = in - 1; d >= 0; --d) {
        if (++idx[d] < shape_[d]) {
          for (int k = 0; k < N; ++k) off[k] += strides_[k][d];
          break;
        }
        for (int k = 0; k < N; ++k) off[k] -= (shape_[d] - 1) * strides_[k][d];
        idx[d] = 0;
      }
    }
  }

  // Parallel walk of every element: the flat range is split evenly among up to omp_get_max_threads()
  // threads, each with at least `grain` elements (serial inside an enclosing parallel region).
  template <class F>
  void run(F&& f, int64_t grain = kGrainCheap) const {
    if (numel_ == 0) return;
    int64_t nt = std::min<int64_t>(omp_get_max_threads(), (numel_ + grain - 1) / std::max<int64_t>(grain, 1));
    if (nt <= 1 || omp_in_parallel()) {
      run_range(0, numel_, f);
      return;
    }
#pragma omp parallel num_threads(static_cast<int>(nt))
    {
      const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
      // Chunk edges rounded to 16 elements so vector loops start aligned on contiguous data.
      auto edge = [&](int64_t i) { return i == T ? numel_ : std::min(numel_, (numel_ * i / T) & ~int64_t{15}); };
      run_range(edge(t), edge(t + 1), f);
    }
  }

 private:
  void swap_dims(int a, int b) {
    std::swap(shape_[a], shape_[b]);
    for (int k = 0; k < N; ++k) std::swap(strides_[k][a], strides_[k][b]);
  }

  int ndim_ = 0;
  int64_t numel_ = 0;
  int64_t shape_[kMaxDims] = {};
  int64_t strides_[N][kMaxDims] = {};
};

// Splits [0, n) among threads (at least `grain` items each) and calls f(begin, end) per thread.
template <class F>
void parallel_range(int64_t n, int64_t grain, F&& f) {
  if (n <= 0) return;
  int64_t nt = std::min<int64_t>(omp_get_max_threads(), (n + grain - 1) / std::max<int64_t>(grain, 1));
  if (nt <= 1 || omp_in_parallel()) {
    f(int64_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(static_cast<int>(nt))
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t b = n * t / T, e = n * (t + 1) / T;
    if (b < e) f(b, e);
  }
}

template <class T>
inline T* ptr(const Tensor& t) {  // typed element pointer without the dtype check (bool is read as uint8_t)
  return static_cast<T*>(t.raw_data());
}

// out[i] = op(a[i]) over out's shape, a broadcast to it. out may be strided (it is written once per element).
template <class To, class Ta, class Op>
void map_unary(const Tensor& out, const Tensor& a, Op op, int64_t grain = kGrainCheap, const char* name = "map") {
  const Shape sa = broadcast_strides(a, out.shape(), name);
  StridedLoop<2> loop(out.shape(), {out.strides().data(), sa.data()});
  To* po = ptr<To>(out);
  const Ta* pa = ptr<Ta>(a);
  const int64_t so = loop.inner_stride(0), s1 = loop.inner_stride(1);
  loop.run(
      [&](const int64_t* off, int64_t n) SONAR_FLATTEN {
        To* o = po + off[0];
        const Ta* x = pa + off[1];
        if (so == 1 && s1 == 1) {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) o[i] = op(x[i]);
        } else if (so == 1 && s1 == 0) {
          const To v = op(x[0]);
          for (int64_t i = 0; i < n; ++i) o[i] = v;
        } else {
          for (int64_t i = 0; i < n; ++i) o[i * so] = op(x[i * s1]);
        }
      },
      grain);
}

// out[i] = op(a[i], b[i]) over out's shape, a and b broadcast to it.
template <class To, class Ta, class Tb, class Op>
void map_binary(const Tensor& out, const Tensor& a, const Tensor& b, Op op, int64_t grain = kGrainCheap,
                const char* name = "map") {
  const Shape sa = broadcast_strides(a, out.shape(), name), sb = broadcast_strides(b, out.shape(), name);
  StridedLoop<3> loop(out.shape(), {out.strides().data(), sa.data(), sb.data()});
  To* po = ptr<To>(out);
  const Ta* pa = ptr<Ta>(a);
  const Tb* pb = ptr<Tb>(b);
  const int64_t so = loop.inner_stride(0), s1 = loop.inner_stride(1), s2 = loop.inner_stride(2);
  loop.run(
      [&](const int64_t* off, int64_t n) SONAR_FLATTEN {
        To* o = po + off[0];
        const Ta* x = pa + off[1];
        const Tb* y = pb + off[2];
        if (so == 1 && s1 == 1 && s2 == 1) {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) o[i] = op(x[i], y[i]);
        } else if (so == 1 && s1 == 1 && s2 == 0) {
          const Tb yv = y[0];
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) o[i] = op(x[i], yv);
        } else if (so == 1 && s1 == 0 && s2 == 1) {
          const Ta xv = x[0];
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) o[i] = op(xv, y[i]);
        } else {
          for (int64_t i = 0; i < n; ++i) o[i * so] = op(x[i * s1], y[i * s2]);
        }
      },
      grain);
}

// out[i] = op(a[i], b[i], c[i]) over out's shape, a, b and c broadcast to it.
template <class To, class Ta, class Tb, class Tc, class Op>
void map_ternary(const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& c, Op op,
                 int64_t grain = kGrainCheap, const char* name = "map") {
  const Shape sa = broadcast_strides(a, out.shape(), name), sb = broadcast_strides(b, out.shape(), name),
              sc = broadcast_strides(c, out.shape(), name);
  StridedLoop<4> loop(out.shape(), {out.strides().data(), sa.data(), sb.data(), sc.data()});
  To* po = ptr<To>(out);
  const Ta* pa = ptr<Ta>(a);
  const Tb* pb = ptr<Tb>(b);
  const Tc* pc = ptr<Tc>(c);
  const int64_t so = loop.inner_stride(0), s1 = loop.inner_stride(1), s2 = loop.inner_stride(2),
                s3 = loop.inner_stride(3);
  loop.run(
      [&](const int64_t* off, int64_t n) SONAR_FLATTEN {
        To* o = po + off[0];
        const Ta* x = pa + off[1];
        const Tb* y = pb + off[2];
        const Tc* z = pc + off[3];
        if (so == 1 && s1 == 1 && s2 == 1 && s3 == 1) {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) o[i] = op(x[i], y[i], z[i]);
        } else {
          for (int64_t i = 0; i < n; ++i) o[i * so] = op(x[i * s1], y[i * s2], z[i * s3]);
        }
      },
      grain);
}

}  // namespace sonar::detail
