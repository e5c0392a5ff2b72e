// Tests of the backward engine: accumulation of shared inputs, diamonds, deep chains (no recursion), graph
// freeing, NoGradGuard, detach, retain_grad, make_result's checks and error messages, leaf-gradient-ready
// callbacks. Not the per-op gradients (test_autograd_ops.cpp).
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/ops.h"
#include "autograd/var.h"
#include "tensor/elementwise.h"
#include "tensor/ops.h"
#include "tests/test_util.h"

using namespace sonar;
using namespace sonar::ag;

namespace {

using testutil::expect_error;

constexpr double kTol = 1e-5;  // float32 results of a few ops on O(1) values

Tensor vec(std::vector<float> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return from_vector(v, {n});
}

}  // namespace

TEST(AutogradEngine, SharedInputAccumulates) {
  // y = sum(x*x + x): dy/dx = 2x + 1, x reaches the graph three times.
  Var x(vec({1.0f, -2.0f, 0.5f}), true);
  Var y = sum(x * x + x);
  y.backward();
  auto g = x.grad().to_vector<float>();
  std::vector<float> xs = {1.0f, -2.0f, 0.5f};
  for (size_t i = 0; i < xs.size(); ++i) EXPECT_NEAR(g[i], 2 * xs[i] + 1, kTol);
}

TEST(AutogradEngine, DiamondGraph) {
  // u = 3x, v = tanh(x), y = sum(u * v): dy/dx = 3 tanh(x) + 3x (1 - tanh^2 x).
  std::vector<float> xs = {0.3f, -1.2f, 2.0f, 0.0f};
  Var x(vec(xs), true);
  Var u = x * 3.0f;
  Var v = tanh(x);
  sum(u * v).backward();
  auto g = x.grad().to_vector<float>();
  for (size_t i = 0; i < xs.size(); ++i) {
    double t = std::tanh(xs[i]);
    EXPECT_NEAR(g[i], 3 * t + 3 * xs[i] * (1 - t * t), kTol);
  }
}

TEST(AutogradEngine, NodeUsedTwiceRunsOnce) {
  // h feeds two consumers; its backward must run once with the summed gradient: y = sum(h) + sum(2h), h = x^2.
  Var x(vec({1.5f, -0.5f}), true);
  Var h = x * x;
  Var y = sum(h) + sum(h * 2.0f);
  y.backward();
  auto g = x.grad().to_vector<float>();
  EXPECT_NEAR(g[0], 3 * 2 * 1.5, kTol);
  EXPECT_NEAR(g[1], 3 * 2 * -0.5, kTol);
}

TEST(AutogradEngine, DeepChainNeedsNoRecursion) {
  constexpr int kDepth = 50000;  // far beyond what a recursive engine survives on a default stack
  Var x(vec({1.0f}), true);
  Var y = x;
  for (int i = 0; i < kDepth; ++i) y = y + 1.0f;
  y.backward();
  EXPECT_NEAR(x.grad().item<float>(), 1.0, kTol);
}

TEST(AutogradEngine, GradientsAccumulateAcrossBackwardCallsUntilZeroed) {
  Var x(vec({2.0f}), true);
  sum(x * 3.0f).backward();
  sum(x * 3.0f).backward();
  EXPECT_NEAR(x.grad().item<float>(), 6.0, kTol);
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
  sum(x * 3.0f).backward();
  EXPECT_NEAR(x.grad().item<float>(), 3.0, kTol);
}

TEST(AutogradEngine, GraphIsFreedAfterBackward) {
  Var x(vec({1.0f, 2.0f}), true);
  std::weak_ptr<Node> inner;
  Tensor saved = x.value();
  const long base_uses = saved.storage().use_count();
  Var y;
  {
    Var h = x * x;  // mul saves x's value twice (once per operand)
    inner = h.grad_fn();
    y = sum(h);
  }
  EXPECT_FALSE(inner.expired());
  EXPECT_GT(saved.storage().use_count(), base_uses);
  y.backward();
  EXPECT_TRUE(inner.expired());  // the intermediate node was released
  EXPECT_EQ(saved.storage().use_count(), base_uses);  // and the tensors its closure saved
  ASSERT_NE(y.grad_fn(), nullptr);
  EXPECT_TRUE(y.grad_fn()->released);
  expect_error([&] { y.backward(); }, {"already freed", "sum"});
}

TEST(AutogradEngine, NoGradGuardRecordsNothing) {
  Var x(vec({1.0f, 2.0f}), true);
  {
    NoGradGuard g;
    EXPECT_FALSE(grad_enabled());
    Var y = x * x;
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(y.grad_fn(), nullptr);
    {
      GradModeGuard on(true);
      EXPECT_TRUE((x * x).requires_grad());
    }
    EXPECT_FALSE(grad_enabled());
  }
  EXPECT_TRUE(grad_enabled());
  EXPECT_TRUE((x * x).requires_grad());
}

TEST(AutogradEngine, InputsWithoutGradGetNone) {
  Var x(vec({1.0f, 2.0f}), true);
  Var c(vec({3.0f, 4.0f}));
  sum(x * c).backward();
  EXPECT_FALSE(c.grad().defined());
  auto g = x.grad().to_vector<float>();
  EXPECT_NEAR(g[0], 3.0, kTol);
  EXPECT_NEAR(g[1], 4.0, kTol);
  Var z = c * c;
  EXPECT_FALSE(z.requires_grad());
  EXPECT_EQ(z.grad_fn(), nullptr);
}

TEST(AutogradEngine, NonScalarBackwardNeedsGradOutput) {
  Var x(vec({1.0f, 2.0f}), true);
  Var y = x * 2.0f;
  expect_error([&] { y.backward(); }, {"grad_output", "[2]"});
  expect_error([&] { y.backward(from_vector(std::vector<float>{1, 2, 3}, {3})); }, {"grad_output", "[3]", "[2]"});
  y.backward(vec({1.0f, 10.0f}));
  auto g = x.grad().to_vector<float>();
  EXPECT_NEAR(g[0], 2.0, kTol);
  EXPECT_NEAR(g[1], 20.0, kTol);
}

TEST(AutogradEngine, DetachSharesValueButCutsHistory) {
  Var x(vec({1.0f, 2.0f}), true);
  Var h = x * 3.0f;
  Var d = h.detach();
  EXPECT_TRUE(d.is_leaf());
  EXPECT_FALSE(d.requires_grad());
  EXPECT_TRUE(d.value().shares_storage(h.value()));
  sum(h * d).backward();  // gradient only through h: d(3x * const)/dx = 3 * d
  auto g = x.grad().to_vector<float>();
  EXPECT_NEAR(g[0], 9.0, kTol);
  EXPECT_NEAR(g[1], 18.0, kTol);
}

TEST(AutogradEngine, RetainGradKeepsNonLeafGradient) {
  Var x(vec({1.0f, 2.0f}), true);
  Var h = x * 2.0f;
  h.retain_grad();
  sum(h * h).backward();
  auto gh = h.grad().to_vector<float>();
  EXPECT_NEAR(gh[0], 4.0, kTol);
  EXPECT_NEAR(gh[1], 8.0, kTol);
}

TEST(AutogradEngine, MakeResultChecksGradientShapes) {
  Var x(vec({1.0f, 2.0f}), true);
  Var bad = make_result(x.value().clone(), {x}, [](const Tensor& g) {
    return std::vector<Tensor>{zeros({3})};
  }, "my_op");
  expect_error([&] { sum(bad).backward(); }, {"my_op", "[3]", "[2]"});
  Var wrong_count = make_result(x.value().clone(), {x}, [](const Tensor& g) {
    return std::vector<Tensor>{g, g};
  }, "two_grads");
  expect_error([&] { sum(wrong_count).backward(); }, {"two_grads", "2 gradients", "1 inputs"});
}

// A fresh gradient becomes the leaf's gradient without a copy, but one that something else still holds (the
// same tensor handed to two leaves, or kept by the caller) is copied: in-place edits of one leaf's gradient,
// as the optimiser makes, must never reach another's or the caller's tensor.
TEST(AutogradEngine, LeafGradientsNeverAliasEachOther) {
  Var a(vec({1.0f, 2.0f}), true), b(vec({3.0f, 4.0f}), true);
  Tensor kept;
  Var both = make_result(add(a.value(), b.value()), {a, b}, [&kept](const Tensor& g) {
    Tensor fresh = mul(g, 3.0f);
    kept = fresh;  // also held here
    return std::vector<Tensor>{fresh, fresh};
  }, "same_for_both");
  sum(both).backward();
  ASSERT_TRUE(a.grad().defined() && b.grad().defined());
  EXPECT_FALSE(a.grad().shares_storage(b.grad()));
  EXPECT_FALSE(a.grad().shares_storage(kept));
  EXPECT_FALSE(b.grad().shares_storage(kept));
  Tensor ga = a.grad();
  mul_(ga, 10.0f);
  EXPECT_EQ(b.grad().to_vector<float>(), (std::vector<float>{3.0f, 3.0f}));
  EXPECT_EQ(kept.to_vector<float>(), (std::vector<float>{3.0f, 3.0f}));
  EXPECT_EQ(a.grad().to_vector<float>(), (std::vector<float>{30.0f, 30.0f}));

  // Sole owner: the kernel's fresh tensor is taken over (the gradient's storage has no other handle).
  Var w(vec({1.0f, -1.0f}), true);
  const float* made = nullptr;
  Var y = make_result(mul(w.value(), 2.0f), {w}, [&made](const Tensor& g) {
    Tensor fresh = mul(g, 2.0f);
    made = fresh.data<float>();
    return std::vector<Tensor>{fresh};
  }, "fresh");
  sum(y).backward();
  EXPECT_EQ(w.grad().data<float>(), made);
  EXPECT_EQ(w.grad().storage().use_count(), 1);
  EXPECT_EQ(w.grad().to_vector<float>(), (std::vector<float>{2.0f, 2.0f}));
}

TEST(AutogradEngine, MultiOutputNodePassesZerosForUnusedOutputs) {
  Var x(vec({1.0f, 2.0f}), true);
  std::vector<Var> outs = make_results({x.value().clone(), mul(x.value(), 2.0f)}, {x},
                                       [](const std::vector<Tensor>& g) {
                                         return std::vector<Tensor>{add(g[0], mul(g[1], 2.0f))};
                                       }, "pair");
  ASSERT_EQ(outs.size(), 2u);
  EXPECT_EQ(outs[0].grad_fn(), outs[1].grad_fn());
  sum(outs[1]).backward();  // output 0 unused: the closure receives zeros for it
  auto g = x.grad().to_vector<float>();
  EXPECT_NEAR(g[0], 2.0, kTol);
  EXPECT_NEAR(g[1], 2.0, kTol);
}

TEST(AutogradEngine, RequiresGradRules) {
  Var x(vec({1.0f}), true);
  Var y = x * 2.0f;
  EXPECT_FALSE(y.is_leaf());
  expect_error([&] { y.set_requires_grad(false); }, {"leaves", "mul_scalar"});
  expect_error([&] { Var i(from_vector(std::vector<int64_t>{1, 2}, {2}), true); }, {"float32", "int64"});
  Var u;
  EXPECT_FALSE(u.defined());
  expect_error([&] { (void)u.value(); }, {"undefined"});
  expect_error([&] { x.set_grad(zeros({2})); }, {"[2]", "[1]"});
}

TEST(AutogradEngine, BackwardOnLeafAccumulatesGradOutput) {
  Var x(vec({1.0f, 2.0f}), true);
  x.backward(vec({0.5f, -1.0f}));
  auto g = x.grad().to_vector<float>();
  EXPECT_EQ(g[0], 0.5f);
  EXPECT_EQ(g[1], -1.0f);
  Var c(vec({1.0f}));
  expect_error([&] { c.backward(); }, {"does not require grad"});
}

TEST(AutogradEngine, LeafGradReadyFiresOnceWhenTheGradientIsFinal) {
  // y = sum(tanh(x * w) * w + b): w is reached twice (late and early in the backward), b once, u never.
  Var x(vec({0.3f, -1.2f, 2.0f}), false);
  Var w(vec({0.7f, 0.4f, -0.9f}), true), b(vec({0.1f, 0.2f, 0.3f}), true), u(vec({1.0f}), true);
  std::vector<const VarImpl*> order;
  std::vector<Tensor> at_ready;  // each gradient as the callback saw it
  {
    LeafGradReadyScope scope([&](VarImpl& leaf) {
      order.push_back(&leaf);
      at_ready.push_back(leaf.grad.clone());
    });
    sum(tanh(x * w) * w + b).backward();
  }
  ASSERT_EQ(order.size(), 2u);
  EXPECT_EQ(order[0], b.impl().get());  // b's only use is the last op; w's second use is the first op
  EXPECT_EQ(order[1], w.impl().get());
  EXPECT_EQ(testutil::max_abs_diff(at_ready[0], b.grad()), 0.0);
  EXPECT_EQ(testutil::max_abs_diff(at_ready[1], w.grad()), 0.0);  // both contributions were in
  // dy/dw = tanh(xw) + w x (1 - tanh^2(xw)), dy/db = 1, checked against a double computation.
  const std::vector<float> xs = {0.3f, -1.2f, 2.0f}, ws = {0.7f, 0.4f, -0.9f};
  const auto gw = w.grad().to_vector<float>();
  for (size_t i = 0; i < xs.size(); ++i) {
    const double t = std::tanh(static_cast<double>(xs[i]) * ws[i]);
    EXPECT_NEAR(gw[i], t + ws[i] * xs[i] * (1 - t * t), kTol);
  }
  EXPECT_FALSE(u.grad().defined());

  // Without a scope (and after it ended) nothing is called and the gradients are the same.
  w.zero_grad();
  b.zero_grad();
  sum(tanh(x * w) * w + b).backward();
  EXPECT_EQ(order.size(), 2u);
  EXPECT_EQ(testutil::max_abs_diff(at_ready[1], w.grad()), 0.0);
}

TEST(AutogradEngine, LeafGradReadyCanReplaceTheGradientAndSeesLeafRoots) {
  Var w(vec({1.0f, 2.0f}), true);
  int calls = 0;
  LeafGradReadyScope scope([&](VarImpl& leaf) {
    ++calls;
    leaf.grad = sonar::mul(leaf.grad, 2.0f);
  });
  sum(w * w).backward();  // 2w, doubled by the callback
  EXPECT_EQ(calls, 1);
  EXPECT_NEAR(w.grad().to_vector<float>()[1], 8.0, kTol);
  w.zero_grad();
  w.backward(vec({1.0f, 1.0f}));  // a leaf as the root
  EXPECT_EQ(calls, 2);
  EXPECT_NEAR(w.grad().to_vector<float>()[0], 2.0, kTol);
}
