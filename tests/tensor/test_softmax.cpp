// Tests of softmax / log_softmax and their backward kernels: against double-precision reference loops over
// every dim, non-contiguous inputs, extreme values (stability, -inf, NaN), finite-difference gradients,
// and error messages.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "tensor/reduce.h"
#include "tests/tensor/kernel_ref.h"

using namespace sonar;
using namespace sonar::testref;

namespace {

constexpr double kFwdAtol = 1e-6;   // softmax outputs are in [0, 1]; float rounding plus our exp's ~2 ulp
constexpr double kFwdRtol = 1e-5;
constexpr double kLogAtol = 1e-5;   // log_softmax values are O(log n) and O(|x|)
constexpr double kLogRtol = 1e-5;
constexpr double kBwdAtol = 1e-5;   // backward kernels against the closed form in double
constexpr double kBwdRtol = 1e-4;
constexpr double kFdAtol = 2e-5;    // analytic (float kernel) vs central differences of the double reference
constexpr double kFdRtol = 1e-3;

// Reference (log_)softmax in double along dim d of row-major values with shape s.
std::vector<double> ref_softmax(const std::vector<double>& x, const Shape& s, int64_t d, bool log) {
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < d; ++i) outer *= s[i];
  for (size_t i = d + 1; i < s.size(); ++i) inner *= s[i];
  const int64_t n = s[d];
  std::vector<double> y(x.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < inner; ++c) {
      auto at = [&](int64_t j) { return (o * n + j) * inner + c; };
      double mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, x[at(j)]);
      double sum = 0;
      for (int64_t j = 0; j < n; ++j) sum += std::exp(x[at(j)] - mx);
      for (int64_t j = 0; j < n; ++j)
        y[at(j)] = log ? x[at(j)] - mx - std::log(sum) : std::exp(x[at(j)] - mx) / sum;
    }
  return y;
}

TEST(Softmax, MatchesReferenceOverEveryDim) {
  const Shape s{3, 4, 5};
  Tensor x = rand_tensor(s, 1, -4.f, 4.f);
  const std::vector<double> xv = x.to_vector<double>();
  for (int64_t d = 0; d < 3; ++d) {
    expect_close(softmax(x, d), ref_softmax(xv, s, d, false), kFwdAtol, kFwdRtol, "softmax dim " + std::to_string(d));
    expect_close(log_softmax(x, d), ref_softmax(xv, s, d, true), kLogAtol, kLogRtol,
                 "log_softmax dim " + std::to_string(d));
    expect_close(softmax(x, d - 3), ref_softmax(xv, s, d, false), kFwdAtol, kFwdRtol, "softmax negative dim");
  }
}

TEST(Softmax, NonContiguousInputs) {
  const Shape s{6, 7};
  Tensor x = rand_tensor(s, 2, -3.f, 3.f);
  const std::vector<double> xv = x.to_vector<double>();
  for (const Tensor& v : {transposed_copy(x), strided_copy(x)})
    for (int64_t d = 0; d < 2; ++d) {
      expect_close(softmax(v, d), ref_softmax(xv, s, d, false), kFwdAtol, kFwdRtol, "softmax non-contiguous");
      expect_close(log_softmax(v, d), ref_softmax(xv, s, d, true), kLogAtol, kLogRtol, "log_softmax non-contiguous");
    }
}

TEST(Softmax, LargeAttentionShapeBothPaths) {
  // Long rows (parallel last-dim path) and a large non-last dim (column-block path with several blocks).
  const Shape s{4, 50, 300};
  Tensor x = rand_tensor(s, 3, -10.f, 10.f);
  const std::vector<double> xv = x.to_vector<double>();
  for (int64_t d : {2, 1, 0}) {
    expect_close(softmax(x, d), ref_softmax(xv, s, d, false), kFwdAtol, kFwdRtol, "softmax large dim " + std::to_string(d));
    expect_close(log_softmax(x, d), ref_softmax(xv, s, d, true), kLogAtol, kLogRtol,
                 "log_softmax large dim " + std::to_string(d));
  }
}

TEST(Softmax, StableForHugeInputsAndMaskedEntries) {
  const float inf = std::numeric_limits<float>::infinity();
  Tensor x = from_vector(std::vector<float>{1000.f, 1001.f, 999.f, -inf, -1e30f, 0.f, -inf, 5.f, 88.f, -88.f, -100.f, 80.f}, {3, 4});
  const std::vector<double> xv = x.to_vector<double>();
  expect_close(softmax(x, 1), ref_softmax(xv, {3, 4}, 1, false), kFwdAtol, kFwdRtol, "softmax huge");
  expect_close(log_softmax(x, 1), ref_softmax(xv, {3, 4}, 1, true), kLogAtol, kLogRtol, "log_softmax huge");
  Tensor y = softmax(x, 1);
  EXPECT_EQ(y.at({0, 3}), 0.0);  // masked entry is exactly 0
  for (int r = 0; r < 3; ++r) {
    double s = 0;
    for (int c = 0; c < 4; ++c) s += y.at({r, c});
    EXPECT_NEAR(s, 1.0, 1e-6);
  }
}

TEST(Softmax, NaNPoisonsOnlyItsRow) {
  Tensor x = from_vector(std::vector<float>{1.f, NAN, 2.f, 1.f, 2.f, 3.f}, {2, 3});
  Tensor y = softmax(x, 1);
  for (int c = 0; c < 3; ++c) EXPECT_TRUE(std::isnan(y.at({0, c})));
  for (int c = 0; c < 3; ++c) EXPECT_FALSE(std::isnan(y.at({1, c})));
}

TEST(Softmax, ExpAccuracyOverWideRange) {
  // Row [0, t]: softmax = [1/(1+e^t), e^t/(1+e^t)]; checks our vectorised exp across its input range.
  std::vector<float> v;
  std::vector<double> want;
  for (int i = 0; i <= 200; ++i) {
    const float t = -87.f + i * 0.435f;  // x - max spans [-87, 0]
    v.push_back(t);
    v.push_back(0.f);
    const double e = std::exp(static_cast<double>(t));
    want.push_back(e / (1 + e));
    want.push_back(1 / (1 + e));
  }
  expect_close(softmax(from_vector(v, {201, 2}), 1), want, 1e-30, 4e-7, "softmax exp accuracy");
}

// L(x) = sum(w * f(x)); checks the kernel's dL/dx with central differences of the double reference.
void check_backward_fd(bool log, const Shape& s, int64_t d, bool noncontig) {
  Tensor x = rand_tensor(s, 10 + d, -2.f, 2.f);
  Tensor w = rand_tensor(s, 20 + d, -1.f, 1.f);
  Tensor y = log ? log_softmax(x, d) : softmax(x, d);
  Tensor g = noncontig ? transposed_copy(w) : w;
  Tensor yy = noncontig ? transposed_copy(y) : y;
  Tensor dx = log ? log_softmax_backward(g, yy, d) : softmax_backward(g, yy, d);
  const std::vector<double> wv = w.to_vector<double>();
  auto loss = [&](const std::vector<double>& xv) {
    std::vector<double> f = ref_softmax(xv, s, d, log);
    double l = 0;
    for (size_t i = 0; i < f.size(); ++i) l += wv[i] * f[i];
    return l;
  };
  expect_close(dx, numeric_grad(loss, x.to_vector<double>()), kFdAtol, kFdRtol,
               std::string(log ? "log_softmax" : "softmax") + "_backward fd dim " + std::to_string(d));
}

TEST(SoftmaxBackward, FiniteDifferencesEveryDim) {
  for (bool log : {false, true})
    for (int64_t d = 0; d < 3; ++d) check_backward_fd(log, {2, 3, 4}, d, false);
}

TEST(SoftmaxBackward, FiniteDifferencesNonContiguous) {
  for (bool log : {false, true})
    for (int64_t d = 0; d < 2; ++d) check_backward_fd(log, {4, 5}, d, true);
}

TEST(SoftmaxBackward, LargeMatchesClosedForm) {
  const Shape s{3, 40, 333};
  Tensor x = rand_tensor(s, 5, -5.f, 5.f);
  Tensor g = rand_tensor(s, 6);
  const std::vector<double> gv = g.to_vector<double>();
  for (int64_t d : {2, 1}) {
    for (bool log : {false, true}) {
      Tensor y = log ? log_softmax(x, d) : softmax(x, d);
      const std::vector<double> yv = y.to_vector<double>();
      // Closed form in double: softmax dx = y (g - sum g y); log_softmax dx = g - exp(y) sum g.
      int64_t outer = 1, inner = 1;
      for (int64_t i = 0; i < d; ++i) outer *= s[i];
      for (size_t i = d + 1; i < s.size(); ++i) inner *= s[i];
      std::vector<double> want(yv.size());
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t c = 0; c < inner; ++c) {
          double acc = 0;
          for (int64_t j = 0; j < s[d]; ++j) {
            const int64_t i = (o * s[d] + j) * inner + c;
            acc += log ? gv[i] : gv[i] * yv[i];
          }
          for (int64_t j = 0; j < s[d]; ++j) {
            const int64_t i = (o * s[d] + j) * inner + c;
            want[i] = log ? gv[i] - std::exp(yv[i]) * acc : yv[i] * (gv[i] - acc);
          }
        }
      Tensor dx = log ? log_softmax_backward(g, y, d) : softmax_backward(g, y, d);
      expect_close(dx, want, kBwdAtol, kBwdRtol, std::string(log ? "log_" : "") + "softmax_backward large");
    }
  }
}

TEST(Softmax, Errors) {
  Tensor xi = from_vector(std::vector<int64_t>{1, 2, 3}, {3});
  expect_error([&] { softmax(xi, 0); }, {"softmax", "int64"});
  Tensor x = rand_tensor({2, 3}, 1);
  expect_error([&] { log_softmax(x, 2); }, {"log_softmax", "dim 2"});
  expect_error([&] { softmax_backward(rand_tensor({3, 2}, 1), x, 1); }, {"softmax_backward", "[3, 2]", "[2, 3]"});
}

TEST(Softmax, EmptyAndScalar) {
  EXPECT_EQ(softmax(Tensor::empty({0, 4}), 1).shape(), (Shape{0, 4}));
  EXPECT_FLOAT_EQ(softmax(scalar_tensor(3.f), 0).item<float>(), 1.f);
  EXPECT_FLOAT_EQ(log_softmax(scalar_tensor(3.f), 0).item<float>(), 0.f);
}

}  // namespace
