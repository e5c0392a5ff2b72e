// Losses against values derived by hand in double precision (cross-entropy with label smoothing and an
// ignored label, cosine similarity, BCE with logits including |x| in the hundreds, MSE), their gradient
// checks, and their error messages. Not the optimisers (test_optim.cpp).
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/loss.h"
#include "autograd/ops.h"
#include "tensor/ops.h"
#include "tests/test_util.h"

using namespace sonar;
using namespace sonar::ag;

namespace {

using testutil::expect_error;

constexpr double kLossTol = 1e-5;  // float32 loss vs double reference, relative to O(1) values
constexpr double kGradTol = 1e-6;  // closed-form gradients of O(1/N)
constexpr float kSmoothing = 0.1f;
constexpr int64_t kIgnore = -100;

GradcheckOptions fd_opts() {
  GradcheckOptions o;
  o.eps = 1e-3;
  o.atol = 2e-3;
  o.rtol = 1e-2;
  return o;
}

Tensor t2(std::vector<float> v, int64_t r, int64_t c) { return from_vector(v, {r, c}); }

const std::vector<float> kLogits = {0.5f, -1.0f, 2.0f, 0.1f,   //
                                    1.5f, 0.3f, -0.7f, 0.0f,   //
                                    -2.0f, 0.8f, 0.4f, 1.1f};  // [3, 4]

// (1 - s) * nll + s * mean_c(-log p_c), averaged over rows whose target is not ignored.
double reference_ce(const std::vector<float>& z, const std::vector<int64_t>& tgt, int64_t c, double s) {
  double total = 0;
  int kept = 0;
  for (size_t i = 0; i < tgt.size(); ++i) {
    if (tgt[i] == kIgnore) continue;
    double m = -1e300, se = 0;
    for (int64_t k = 0; k < c; ++k) m = std::max(m, static_cast<double>(z[i * c + k]));
    for (int64_t k = 0; k < c; ++k) se += std::exp(z[i * c + k] - m);
    const double lse = m + std::log(se);
    double mean_neg_logp = 0;
    for (int64_t k = 0; k < c; ++k) mean_neg_logp += (lse - z[i * c + k]) / c;
    total += (1 - s) * (lse - z[i * c + tgt[i]]) + s * mean_neg_logp;
    ++kept;
  }
  return total / kept;
}

}  // namespace

TEST(AutogradLoss, CrossEntropyPlain) {
  std::vector<int64_t> tgt = {2, 0, 3};
  Var z(t2(kLogits, 3, 4), true);
  Var loss = cross_entropy(z, from_vector(tgt, {3}));
  EXPECT_NEAR(loss.item(), reference_ce(kLogits, tgt, 4, 0.0), kLossTol);
  loss.backward();
  // d/dz = (softmax - onehot) / N
  auto g = z.grad().to_vector<float>();
  for (int i = 0; i < 3; ++i) {
    double m = 0, se = 0;
    for (int k = 0; k < 4; ++k) se += std::exp(kLogits[i * 4 + k] - m);
    for (int k = 0; k < 4; ++k) {
      double p = std::exp(kLogits[i * 4 + k]) / se;
      EXPECT_NEAR(g[i * 4 + k], (p - (k == tgt[i])) / 3.0, kGradTol);
    }
  }
}

TEST(AutogradLoss, CrossEntropyLabelSmoothingAndIgnoreIndex) {
  std::vector<int64_t> tgt = {1, kIgnore, 3};
  Var z(t2(kLogits, 3, 4), true);
  Var loss = cross_entropy(z, from_vector(tgt, {3}), kSmoothing, kIgnore);
  const double ref = reference_ce(kLogits, tgt, 4, kSmoothing);
  EXPECT_NEAR(loss.item(), ref, kLossTol);
  // Ignoring a row is not the same as keeping it: the kept-row mean changes.
  EXPECT_GT(std::fabs(ref - reference_ce(kLogits, {1, 0, 3}, 4, kSmoothing)), 1e-3);
  loss.backward();
  auto g = z.grad().to_vector<float>();
  for (int k = 0; k < 4; ++k) EXPECT_EQ(g[4 + k], 0.0f);  // ignored row gets no gradient
  double row_sum = 0;
  for (int k = 0; k < 4; ++k) row_sum += g[k];
  EXPECT_NEAR(row_sum, 0.0, kGradTol);  // softmax - smoothed one-hot sums to zero
}

TEST(AutogradLoss, CrossEntropyCustomIgnoreIndexAndAllIgnored) {
  std::vector<int64_t> tgt = {0, 7, 2};
  Var z(t2(kLogits, 3, 4), true);
  EXPECT_NEAR(cross_entropy(z, from_vector(tgt, {3}), 0.0f, 7).item(), reference_ce(kLogits, {0, kIgnore, 2}, 4, 0),
              kLossTol);
  Var all = cross_entropy(z, from_vector(std::vector<int64_t>{kIgnore, kIgnore, kIgnore}, {3}));
  EXPECT_TRUE(std::isnan(all.item()));  // PyTorch: mean over zero rows
  all.backward();
  for (float g : z.grad().to_vector<float>()) EXPECT_EQ(g, 0.0f);
}

TEST(AutogradLoss, CrossEntropyGradcheck) {
  Tensor tgt = from_vector(std::vector<int64_t>{1, kIgnore, 3, 0}, {4});
  Tensor z = from_vector(std::vector<float>{0.5f, -1.0f, 2.0f, 0.1f, 1.5f, 0.3f, -0.7f, 0.0f,  //
                                            -2.0f, 0.8f, 0.4f, 1.1f, 0.2f, 0.9f, -0.3f, 0.6f}, {4, 4});
  auto r = gradcheck([tgt](auto& v) { return cross_entropy(v[0], tgt, kSmoothing); }, {z.t()}, fd_opts());
  EXPECT_TRUE(r.ok) << r.report;
  auto r2 = gradcheck([tgt](auto& v) { return cross_entropy(v[0] * 2.0f, tgt); }, {z}, fd_opts());
  EXPECT_TRUE(r2.ok) << r2.report;
}

TEST(AutogradLoss, CrossEntropyErrors) {
  Var z(t2(kLogits, 3, 4), true);
  expect_error([&] { cross_entropy(z, from_vector(std::vector<int64_t>{0, 4, 1}, {3})); }, {"target 4", "row 1"});
  expect_error([&] { cross_entropy(z, from_vector(std::vector<int64_t>{0, 1}, {2})); }, {"[2]", "[3, 4]"});
  expect_error([&] { cross_entropy(reshape(z, {12}), from_vector(std::vector<int64_t>{0}, {1})); }, {"[12]"});
}

TEST(AutogradLoss, CosineSimilarity) {
  Tensor a = t2({1, 2, 3, 0, -1, 0.5f}, 2, 3), b = t2({2, 0, 1, 1, 1, 1}, 2, 3);
  Var va(a, true), vb(b, true);
  Var c = cosine_similarity(va, vb, 1);
  ASSERT_EQ(c.shape(), (Shape{2}));
  auto cv = c.value().to_vector<float>();
  EXPECT_NEAR(cv[0], 5.0 / (std::sqrt(14.0) * std::sqrt(5.0)), kLossTol);
  EXPECT_NEAR(cv[1], -0.5 / (std::sqrt(1.25) * std::sqrt(3.0)), kLossTol);
  // A zero vector: the eps clamp gives similarity 0 and finite gradients.
  Var z(zeros({1, 3}), true);
  Var cz = cosine_similarity(z, Var(t2({1, 2, 3}, 1, 3)), 1);
  EXPECT_EQ(cz.item(), 0.0f);
  GradcheckOptions o = fd_opts();
  auto r = gradcheck([](auto& v) { return cosine_similarity(v[0], v[1], 1); },
                     {a.clone(), b.clone().t().contiguous().t()}, o);
  EXPECT_TRUE(r.ok) << r.report;
  // Broadcast: [2, 3, 4] against [4] along the last dim.
  Tensor x = from_vector(std::vector<float>{0.1f, 0.5f, -0.3f, 0.8f, 0.2f, -0.6f, 0.4f, 0.9f, -0.2f, 0.3f, 0.7f, -0.5f,
                                            0.6f, 0.1f, 0.2f, -0.4f, 0.9f, -0.1f, 0.3f, 0.5f, -0.8f, 0.4f, 0.2f, 0.1f},
                         {2, 3, 4});
  Tensor y = from_vector(std::vector<float>{0.3f, -0.2f, 0.5f, 0.7f}, {4});
  auto rb = gradcheck([](auto& v) { return cosine_similarity(v[0], v[1], -1); }, {x, y}, o);
  EXPECT_TRUE(rb.ok) << rb.report;
}

TEST(AutogradLoss, BceWithLogitsIsStableForLargeLogits) {
  const std::vector<float> xs = {-1000.f, -100.f, -2.f, 0.f, 3.f, 100.f, 1000.f, 50.f};
  const std::vector<float> ts = {0.f, 1.f, 0.3f, 1.f, 0.f, 0.f, 1.f, 1.f};
  Var x(from_vector(xs, {8}), true);
  Var loss = binary_cross_entropy_with_logits(x, from_vector(ts, {8}));
  double ref = 0;
  std::vector<double> ref_grad;
  for (size_t i = 0; i < xs.size(); ++i) {
    const double xi = xs[i], ti = ts[i];
    // log(1 + e^x) - x t, written per sign so the double reference does not overflow either
    const double softplus = xi > 0 ? xi + std::log1p(std::exp(-xi)) : std::log1p(std::exp(xi));
    ref += softplus - xi * ti;
    ref_grad.push_back((1.0 / (1.0 + std::exp(-xi)) - ti) / xs.size());
  }
  ref /= xs.size();
  ASSERT_TRUE(std::isfinite(loss.item()));
  EXPECT_NEAR(loss.item(), ref, kLossTol * std::fabs(ref));
  loss.backward();
  auto g = x.grad().to_vector<float>();
  for (size_t i = 0; i < xs.size(); ++i) {
    ASSERT_TRUE(std::isfinite(g[i]));
    EXPECT_NEAR(g[i], ref_grad[i], kGradTol);
  }
  Tensor xm = from_vector(std::vector<float>{-2.f, -0.5f, 0.3f, 1.7f, 0.9f, -1.1f}, {2, 3});
  Tensor tm = from_vector(std::vector<float>{0.f, 1.f, 0.5f, 1.f, 0.f, 0.2f}, {3, 2}).t().contiguous();
  auto r = gradcheck([tm](auto& v) { return binary_cross_entropy_with_logits(v[0], tm); }, {xm.t().contiguous().t()},
                     fd_opts());
  EXPECT_TRUE(r.ok) << r.report;
  expect_error([&] { binary_cross_entropy_with_logits(x, zeros({7})); }, {"[7]", "[8]"});
}

TEST(AutogradLoss, MseLoss) {
  Var a(t2({1, 2, 3, 4}, 2, 2), true), b(t2({0, 2, 5, 3}, 2, 2), true);
  Var l = mse_loss(a, b);
  EXPECT_NEAR(l.item(), (1 + 0 + 4 + 1) / 4.0, kLossTol);
  l.backward();
  auto ga = a.grad().to_vector<float>(), gb = b.grad().to_vector<float>();
  const std::vector<float> d = {1, 0, -2, 1};
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(ga[i], 2 * d[i] / 4.0, kGradTol);
    EXPECT_NEAR(gb[i], -2 * d[i] / 4.0, kGradTol);
  }
  auto r = gradcheck([](auto& v) { return mse_loss(v[0], v[1]); },
                     {t2({0.1f, 0.5f, -0.3f, 0.8f, 0.2f, -0.6f}, 2, 3),
                      t2({0.3f, -0.2f, 0.5f, 0.7f, 0.1f, 0.4f}, 3, 2).t()},
                     fd_opts());
  EXPECT_TRUE(r.ok) << r.report;
  expect_error([&] { mse_loss(a, Var(zeros({4}))); }, {"[2, 2]", "[4]"});
}
