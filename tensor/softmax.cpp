// softmax / log_softmax over any dim, and their backward kernels given the forward output y.
// Numerically stable (the row max is subtracted before exp). Rows along the last dim of a contiguous
// tensor take a vectorised fast path; other dims are processed as [outer, n, inner] blocks with the
// inner dim vectorised. Not here: masking (callers add -inf or use masked_fill first).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "tensor/reduce.h"
#include "tensor/split3.h"

namespace sonar {

namespace {

// exp for float, written so that GCC vectorises it inside `omp simd` loops: glibc's expf does not vectorise
// without -ffast-math, and GCC 12 with -march=native does not vectorise std::floor/std::fmax here either,
// so rounding uses the 1.5*2^23 shift trick and clamping uses plain selects. Cephes' expf: range reduction
// by n*ln2 (ln2 split in two constants) and a degree-6 polynomial; max relative error 1.4 ulp on [-87.3, 0]
// (measured against double exp). Inputs below -87.33 (and -inf) give 0; NaN propagates. Relies on IEEE
// round-to-nearest arithmetic, so this file must not be built with -ffast-math.
inline float exp_simd(float x) {
  float xc = x < -87.33654f ? -87.33654f : x;
  xc = xc > 88.0f ? 88.0f : xc;
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer kept in the low bits
  const float t = xc * 1.44269504088896341f + kShift;
  const float n = t - kShift;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kShift) + 127) << 23;
  return x < -87.33654f ? 0.0f : p * std::bit_cast<float>(e);
}

using detail::Split3;
using detail::split3;

constexpr int64_t kParallelMin = 1 << 14;  // elements below which a kernel stays single-threaded
constexpr int64_t kInnerBlock = 256;       // inner-dim block width for non-last-dim kernels

// ---- rows along the last dim ----

void softmax_row(const float* x, float* y, int64_t n, bool log) {
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t i = 0; i < n; ++i) mx = x[i] > mx ? x[i] : mx;  // (std::max does not vectorise here)
  float s = 0.f;
  if (log) {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += exp_simd(x[i] - mx);
    const float lse = mx + std::log(s);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] - lse;
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) {
      const float e = exp_simd(x[i] - mx);
      y[i] = e;
      s += e;
    }
    const float inv = 1.0f / s;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] *= inv;
  }
}

// ---- [n, inner] blocks (reduction along a non-last dim); columns [c0, c1) of one outer slice ----

void softmax_cols(const float* x, float* y, int64_t n, int64_t inner, int64_t c0, int64_t c1, bool log) {
  const int64_t w = c1 - c0;
  float mx[kInnerBlock], s[kInnerBlock];
  for (int64_t c = 0; c < w; ++c) {
    mx[c] = -std::numeric_limits<float>::infinity();
    s[c] = 0.f;
  }
  for (int64_t j = 0; j < n; ++j) {
    const float* xr = x + j * inner + c0;
#pragma omp simd
    for (int64_t c = 0; c < w; ++c) mx[c] = xr[c] > mx[c] ? xr[c] : mx[c];  // a NaN still poisons its column via exp
  }
  for (int64_t j = 0; j < n; ++j) {
    const float* xr = x + j * inner + c0;
    float* yr = y + j * inner + c0;
#pragma omp simd
    for (int64_t c = 0; c < w; ++c) {
      const float e = exp_simd(xr[c] - mx[c]);
      if (!log) yr[c] = e;
      s[c] += e;
    }
  }
  if (log) {
    for (int64_t c = 0; c < w; ++c) s[c] = mx[c] + std::log(s[c]);  // log-sum-exp
    for (int64_t j = 0; j < n; ++j) {
      const float* xr = x + j * inner + c0;
      float* yr = y + j * inner + c0;
#pragma omp simd
      for (int64_t c = 0; c < w; ++c) yr[c] = xr[c] - s[c];
    }
  } else {
    for (int64_t c = 0; c < w; ++c) s[c] = 1.0f / s[c];
    for (int64_t j = 0; j < n; ++j) {
      float* yr = y + j * inner + c0;
#pragma omp simd
      for (int64_t c = 0; c < w; ++c) yr[c] *= s[c];
    }
  }
}

Tensor softmax_impl(const Tensor& a, int64_t dim, bool log, const char* op) {
  a.check_dtype(DType::Float32, op);
  const int64_t d = wrap_dim(dim, a.dim(), op);
  Tensor x = a.contiguous();
  Tensor out = Tensor::empty(a.shape());
  if (a.numel() == 0) return out;
  const Shape s = a.dim() == 0 ? Shape{1} : a.shape();
  const Split3 sp = split3(s, d);
  const float* xp = x.data<float>();
  float* yp = out.data<float>();
  if (sp.inner == 1) {
#pragma omp parallel for schedule(static) if (a.numel() > kParallelMin)
    for (int64_t r = 0; r < sp.outer; ++r) softmax_row(xp + r * sp.n, yp + r * sp.n, sp.n, log);
  } else {
    const int64_t nb = (sp.inner + kInnerBlock - 1) / kInnerBlock;
#pragma omp parallel for schedule(static) if (a.numel() > kParallelMin)
    for (int64_t t = 0; t < sp.outer * nb; ++t) {
      const int64_t o = t / nb, b = t % nb;
      const int64_t c0 = b * kInnerBlock, c1 = std::min(sp.inner, c0 + kInnerBlock);
      softmax_cols(xp + o * sp.n * sp.inner, yp + o * sp.n * sp.inner, sp.n, sp.inner, c0, c1, log);
    }
  }
  return out;
}

// dx = y * (g - sum(g*y))  (softmax)   or   dx = g - exp(y) * sum(g)  (log_softmax), sums along dim.
Tensor softmax_backward_impl(const Tensor& grad_out, const Tensor& y, int64_t dim, bool log, const char* op) {
  grad_out.check_dtype(DType::Float32, op);
  y.check_dtype(DType::Float32, op);
  SONAR_CHECK(grad_out.shape() == y.shape(), op, ": grad shape ", shape_str(grad_out.shape()),
              " differs from output shape ", shape_str(y.shape()));
  const int64_t d = wrap_dim(dim, y.dim(), op);
  Tensor g = grad_out.contiguous(), yc = y.contiguous();
  Tensor dx = Tensor::empty(y.shape());
  if (y.numel() == 0) return dx;
  const Shape s = y.dim() == 0 ? Shape{1} : y.shape();
  const Split3 sp = split3(s, d);
  const float* gp = g.data<float>();
  const float* yp = yc.data<float>();
  float* dp = dx.data<float>();
  if (sp.inner == 1) {
#pragma omp parallel for schedule(static) if (y.numel() > kParallelMin)
    for (int64_t r = 0; r < sp.outer; ++r) {
      const float* gr = gp + r * sp.n;
      const float* yr = yp + r * sp.n;
      float* dr = dp + r * sp.n;
      double acc = 0.0;
      if (log) {
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < sp.n; ++i) acc += gr[i];
        const float sg = static_cast<float>(acc);
#pragma omp simd
        for (int64_t i = 0; i < sp.n; ++i) dr[i] = gr[i] - exp_simd(yr[i]) * sg;
      } else {
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < sp.n; ++i) acc += static_cast<double>(gr[i]) * yr[i];
        const float sg = static_cast<float>(acc);
#pragma omp simd
        for (int64_t i = 0; i < sp.n; ++i) dr[i] = yr[i] * (gr[i] - sg);
      }
    }
  } else {
    const int64_t nb = (sp.inner + kInnerBlock - 1) / kInnerBlock;
#pragma omp parallel for schedule(static) if (y.numel() > kParallelMin)
    for (int64_t t = 0; t < sp.outer * nb; ++t) {
      const int64_t o = t / nb, b = t % nb;
      const int64_t c0 = b * kInnerBlock, w = std::min(sp.inner, c0 + kInnerBlock) - c0;
      const int64_t base = o * sp.n * sp.inner + c0;
      double acc[kInnerBlock];
      for (int64_t c = 0; c < w; ++c) acc[c] = 0.0;
      for (int64_t j = 0; j < sp.n; ++j) {
        const float* gr = gp + base + j * sp.inner;
        const float* yr = yp + base + j * sp.inner;
        if (log) {
#pragma omp simd
          for (int64_t c = 0; c < w; ++c) acc[c] += gr[c];
        } else {
#pragma omp simd
          for (int64_t c = 0; c < w; ++c) acc[c] += static_cast<double>(gr[c]) * yr[c];
        }
      }
      float sg[kInnerBlock];
      for (int64_t c = 0; c < w; ++c) sg[c] = static_cast<float>(acc[c]);
      for (int64_t j = 0; j < sp.n; ++j) {
        const float* gr = gp + base + j * sp.inner;
        const float* yr = yp + base + j * sp.inner;
        float* dr = dp + base + j * sp.inner;
        if (log) {
#pragma omp simd
          for (int64_t c = 0; c < w; ++c) dr[c] = gr[c] - exp_simd(yr[c]) * sg[c];
        } else {
#pragma omp simd
          for (int64_t c = 0; c < w; ++c) dr[c] = yr[c] * (gr[c] - sg[c]);
        }
      }
    }
  }
  return dx;
}

}  // namespace

Tensor softmax(const Tensor& a, int64_t dim) { return softmax_impl(a, dim, false, "softmax"); }
Tensor log_softmax(const Tensor& a, int64_t dim) { return softmax_impl(a, dim, true, "log_softmax"); }
Tensor softmax_backward(const Tensor& grad_out, const Tensor& y, int64_t dim) {
  return softmax_backward_impl(grad_out, y, dim, false, "softmax_backward");
}
Tensor log_softmax_backward(const Tensor& grad_out, const Tensor& y, int64_t dim) {
  return softmax_backward_impl(grad_out, y, dim, true, "log_softmax_backward");
}

}  // namespace sonar
