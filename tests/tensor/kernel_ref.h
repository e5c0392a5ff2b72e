// Helpers shared by the reduce / softmax / layer_norm / index kernel tests: seeded random inputs,
// non-contiguous copies of a tensor, a closeness check that prints the first mismatches, plain
// double-precision reference reductions over any dims, and central finite differences.
// Test-only; depends on nothing but tensor/tensor.h so it works before the creation/random kernels exist.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "tensor/tensor.h"
#include "tests/test_util.h"

namespace sonar::testref {

inline std::vector<float> rand_values(int64_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(gen);
  return v;
}

inline Tensor rand_tensor(const Shape& shape, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  return from_vector(rand_values(shape_numel(shape), seed, lo, hi), shape);
}

// The same values as `t` but laid out transposed in memory: a non-contiguous view of a fresh tensor whose
// last two dims are swapped in storage (t must have >= 2 dims).
inline Tensor transposed_copy(const Tensor& t) {
  Tensor st = t.transpose(-2, -1).contiguous();  // storage holds t^T
  Tensor v = st.transpose(-2, -1);               // logical values equal t, strides not row-major
  EXPECT_FALSE(v.is_contiguous());
  return v;
}

// The same values as `t` as a view that skips every other element of the last dim of its storage.
inline Tensor strided_copy(const Tensor& t) {
  Shape big = t.shape();
  big.back() *= 2;
  Tensor b = Tensor::empty(big, t.dtype());
  b.fill_(12345.0);  // poison the skipped elements
  Tensor v = b.slice(-1, 0, big.back(), 2);
  v.copy_(t);
  EXPECT_FALSE(v.is_contiguous());
  return v;
}

// Compares a tensor with expected values (row-major) elementwise: |a - e| <= atol + rtol * |e|.
// NaNs must match NaNs. Prints the max abs / rel errors and the first few mismatches.
inline void expect_close(const Tensor& actual, const std::vector<double>& expected, double atol, double rtol,
                         const std::string& what) {
  std::vector<double> a = actual.to_vector<double>();
  ASSERT_EQ(a.size(), expected.size()) << what << ": element count";
  double max_abs = 0, max_rel = 0;
  int shown = 0, bad = 0;
  std::string first;
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = expected[i], v = a[i];
    bool ok;
    if (std::isnan(e) || std::isnan(v)) ok = std::isnan(e) && std::isnan(v);
    else if (std::isinf(e) || std::isinf(v)) ok = e == v;
    else {
      const double d = std::fabs(v - e);
      max_abs = std::max(max_abs, d);
      if (e != 0) max_rel = std::max(max_rel, d / std::fabs(e));
      ok = d <= atol + rtol * std::fabs(e);
    }
    if (!ok) {
      ++bad;
      if (shown++ < 5) first += "\n  [" + std::to_string(i) + "] got " + std::to_string(v) + " want " + std::to_string(e);
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << a.size() << " elements off (atol " << atol << ", rtol "
                    << rtol << "); max abs err " << max_abs << ", max rel err " << max_rel << first;
}

inline void expect_close(const Tensor& actual, const Tensor& expected, double atol, double rtol,
                         const std::string& what) {
  EXPECT_EQ(actual.shape(), expected.shape()) << what;
  expect_close(actual, expected.to_vector<double>(), atol, rtol, what);
}

// Row-major multi-index of linear index i in shape s.
inline std::vector<int64_t> unravel(int64_t i, const Shape& s) {
  std::vector<int64_t> idx(s.size());
  for (int64_t d = static_cast<int64_t>(s.size()) - 1; d >= 0; --d) {
    idx[d] = i % s[d];
    i /= s[d];
  }
  return idx;
}

inline int64_t ravel(const std::vector<int64_t>& idx, const Shape& s) {
  int64_t i = 0;
  for (size_t d = 0; d < s.size(); ++d) i = i * s[d] + idx[d];
  return i;
}

// Groups the elements of values (row-major, shape s) by output element when reducing `dims` (empty = all):
// result[o] lists the input values of output o in increasing input order. Also returns the output shape.
inline std::vector<std::vector<double>> group_by_output(const std::vector<double>& values, const Shape& s,
                                                        std::vector<int64_t> dims, bool keepdim, Shape& out_shape) {
  const int64_t nd = static_cast<int64_t>(s.size());
  std::vector<bool> red(nd, dims.empty());
  for (int64_t d : dims) red[d < 0 ? d + nd : d] = true;
  out_shape.clear();
  Shape kept;
  for (int64_t d = 0; d < nd; ++d) {
    if (!red[d]) kept.push_back(s[d]), out_shape.push_back(s[d]);
    else if (keepdim) out_shape.push_back(1);
  }
  std::vector<std::vector<double>> groups(static_cast<size_t>(shape_numel(kept)));
  for (int64_t i = 0; i < static_cast<int64_t>(values.size()); ++i) {
    std::vector<int64_t> idx = unravel(i, s), kidx;
    for (int64_t d = 0; d < nd; ++d)
      if (!red[d]) kidx.push_back(idx[d]);
    groups[ravel(kidx, kept)].push_back(values[i]);
  }
  return groups;
}

// Central finite differences in double: d f / d x_i for every i.
inline std::vector<double> numeric_grad(const std::function<double(const std::vector<double>&)>& f,
                                        std::vector<double> x, double h = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f(x);
    x[i] = x0 - h;
    const double fm = f(x);
    x[i] = x0;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

inline std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Expects `fn` to throw sonar::Error whose message contains every one of `parts`.
using testutil::expect_error;

}  // namespace sonar::testref
