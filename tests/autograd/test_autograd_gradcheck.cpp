// Tests of the gradient checker itself: it must pass correct gradients, catch wrong or missing ones (so the
// op tests can fail), perturb non-contiguous inputs through their strides, restore its inputs and refuse
// expanded inputs. Not the op gradients (test_autograd_ops.cpp).
#include <gtest/gtest.h>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "tensor/ops.h"

using namespace sonar;
using namespace sonar::ag;

namespace {
constexpr float kWrongFactor = 1.1f;  // a 10% gradient error must be caught at the default tolerances

// x^3 with a backward scaled by `factor` (1 = correct).
Var cube(const Var& x, float factor) {
  Tensor xv = x.value();
  return make_result(pow(xv, 3.0f), {x}, [xv, factor](const Tensor& g) {
    return std::vector<Tensor>{mul(mul(g, mul(xv, xv)), 3.0f * factor)};
  }, "cube");
}

Tensor sample(const Shape& s) {
  std::vector<float> v(shape_numel(s));
  for (size_t i = 0; i < v.size(); ++i) v[i] = 0.3f + 0.17f * static_cast<float>(i % 7) - 0.05f * (i % 3);
  return from_vector(v, s);
}
}  // namespace

TEST(AutogradGradcheck, PassesACorrectGradient) {
  GradcheckResult r = gradcheck([](auto& v) { return cube(v[0], 1.0f); }, {sample({3, 4})});
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_EQ(r.checked, 12);
  EXPECT_LT(r.max_abs_err, GradcheckOptions{}.atol);
}

TEST(AutogradGradcheck, CatchesAWrongGradient) {
  GradcheckResult r = gradcheck([](auto& v) { return cube(v[0], kWrongFactor); }, {sample({3, 4})});
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.report.find("analytic"), std::string::npos) << r.report;
}

TEST(AutogradGradcheck, CatchesAMissingGradient) {
  // The closure claims no gradient for b although the output depends on it.
  auto f = [](const std::vector<Var>& v) {
    Tensor av = v[0].value(), bv = v[1].value();
    return make_result(mul(av, bv), {v[0], v[1]}, [bv](const Tensor& g) {
      return std::vector<Tensor>{mul(g, bv), Tensor()};
    }, "half_mul");
  };
  GradcheckResult r = gradcheck(f, {sample({4}), sample({4})});
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.report.find("input 1"), std::string::npos) << r.report;
}

TEST(AutogradGradcheck, CatchesAGradientSentToTheWrongElementOfAStridedInput) {
  // The analytic gradient treats the transposed view as if it were contiguous: only a checker that perturbs
  // through the strides notices.
  Tensor base = sample({4, 3});
  Tensor x = base.t();  // [3, 4] view
  auto f = [](const std::vector<Var>& v) {
    Tensor xv = v[0].value();
    Tensor w = from_vector(std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {3, 4});
    return make_result(mul(xv, w), {v[0]}, [w](const Tensor& g) {
      Tensor wrong = mul(g, w.reshape({4, 3}).t());  // element order of the underlying storage
      return std::vector<Tensor>{wrong.contiguous()};
    }, "strided_mul");
  };
  EXPECT_FALSE(gradcheck(f, {x}).ok);
}

TEST(AutogradGradcheck, RestoresItsInputs) {
  Tensor x = sample({2, 5}).t();
  std::vector<float> before = x.to_vector<float>();
  (void)gradcheck([](auto& v) { return cube(v[0], 1.0f); }, {x});
  EXPECT_EQ(x.to_vector<float>(), before);
}

TEST(AutogradGradcheck, RefusesExpandedInputs) {
  Tensor x = sample({3, 1}).expand({3, 4});
  EXPECT_THROW(gradcheck([](auto& v) { return v[0] * 2.0f; }, {x}), Error);
}
