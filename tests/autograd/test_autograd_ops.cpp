// Finite-difference gradient checks of every differentiable op in autograd/ops.h, on contiguous,
// non-contiguous (transposed or strided-slice views) and broadcast inputs; plus forward values that the
// autograd wrappers compute themselves (views, cat/stack/split, dropout). Not losses (test_autograd_loss.cpp).
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "tensor/ops.h"

using namespace sonar;
using namespace sonar::ag;

namespace {
// Central differences over a float32 forward: step 1e-3 leaves ~1e-4 relative rounding noise per output,
// so gradients of O(1) are compared with 2e-3 absolute plus 1% relative slack.
constexpr double kFdEps = 1e-3;
constexpr double kAtol = 2e-3;
constexpr double kRtol = 1e-2;
// Inputs of ops with a kink (relu, abs, clamp, max, maximum) are kept at least this far from it.
constexpr float kKinkGap = 0.05f;

GradcheckOptions opts() {
  GradcheckOptions o;
  o.eps = kFdEps;
  o.atol = kAtol;
  o.rtol = kRtol;
  return o;
}

uint64_t g_seed = 1;

// Uniform values in [lo, hi), contiguous.
Tensor uniform(const Shape& s, float lo = -1.0f, float hi = 1.0f) {
  Generator gen(g_seed++);
  std::vector<float> v(static_cast<size_t>(shape_numel(s)));
  for (auto& x : v) x = static_cast<float>(lo + (hi - lo) * gen.next_uniform());
  return from_vector(v, s);
}

// Same distribution, returned as a non-contiguous view: the transpose of a [.., s[-1], s[-2]] tensor for
// 2+ dims, every other element of a twice-as-long vector for 1 dim.
Tensor transposed(const Shape& s, float lo = -1.0f, float hi = 1.0f) {
  if (s.size() < 2) return uniform({2 * s[0]}, lo, hi).slice(0, 0, 2 * s[0], 2);
  Shape t = s;
  std::swap(t[t.size() - 1], t[t.size() - 2]);
  Tensor v = uniform(t, lo, hi).transpose(-1, -2);
  EXPECT_FALSE(v.is_contiguous());
  return v;
}

// A strided slice view: every other element along the last dim.
Tensor sliced(const Shape& s, float lo = -1.0f, float hi = 1.0f) {
  Shape t = s;
  t.back() *= 2;
  Tensor v = uniform(t, lo, hi).slice(-1, 1, t.back(), 2);
  EXPECT_FALSE(v.is_contiguous());
  return v;
}

// Moves every element at least kKinkGap away from `at` (in place, through the view's strides).
Tensor away_from(Tensor t, float at) {
  float* p = t.data<float>();
  for_each_offset(t.shape(), t.strides(), [&](int64_t, int64_t off) {
    float d = p[off] - at;
    p[off] = at + (d >= 0 ? d + kKinkGap : d - kKinkGap);
  });
  return t;
}

void check(const std::string& what, const GradcheckFn& f, const std::vector<Tensor>& in) {
  GradcheckResult r = gradcheck(f, in, opts());
  EXPECT_TRUE(r.ok) << what << ": max abs err " << r.max_abs_err << "\n" << r.report;
  EXPECT_GT(r.checked, 0) << what;
}

Tensor idx(std::vector<int64_t> v, const Shape& s) { return from_vector(v, s); }
}  // namespace

// ---------- binary elementwise ----------

TEST(AutogradOps, BinaryOpsSameShapeContiguousAndNonContiguous) {
  for (bool nc : {false, true}) {
    auto mk = [&](float lo, float hi) { return nc ? transposed({3, 4}, lo, hi) : uniform({3, 4}, lo, hi); };
    std::string tag = nc ? " (transposed inputs)" : "";
    check("add" + tag, [](auto& v) { return add(v[0], v[1]); }, {mk(-1, 1), mk(-1, 1)});
    check("sub" + tag, [](auto& v) { return sub(v[0], v[1]); }, {mk(-1, 1), mk(-1, 1)});
    check("mul" + tag, [](auto& v) { return mul(v[0], v[1]); }, {mk(-1, 1), mk(-1, 1)});
    check("div" + tag, [](auto& v) { return div(v[0], v[1]); }, {mk(-1, 1), mk(0.5f, 2.0f)});
  }
}

TEST(AutogradOps, BinaryOpsBroadcast) {
  // [3,1,4] with [5,4] -> [3,5,4]; the gradient of each input is summed over its broadcast dims.
  check("add bcast", [](auto& v) { return add(v[0], v[1]); }, {uniform({3, 1, 4}), uniform({5, 4})});
  check("sub bcast", [](auto& v) { return sub(v[0], v[1]); }, {uniform({5, 4}), uniform({3, 1, 4})});
  check("mul bcast", [](auto& v) { return mul(v[0], v[1]); }, {uniform({3, 1, 4}), sliced({5, 4})});
  check("div bcast", [](auto& v) { return div(v[0], v[1]); }, {transposed({3, 5, 4}), uniform({4}, 0.5f, 2.0f)});
  check("mul scalar-shaped", [](auto& v) { return mul(v[0], v[1]); }, {uniform({2, 3}), uniform({1})});
  check("div [2,1] by [1,3]", [](auto& v) { return div(v[0], v[1]); }, {uniform({2, 1}), uniform({1, 3}, 0.5f, 2.0f)});
}

TEST(AutogradOps, MaximumMinimum) {
  Tensor a = uniform({3, 4});
  Tensor b = add(a, away_from(uniform({3, 4}), 0.0f));  // |a - b| >= kKinkGap
  check("maximum", [](auto& v) { return maximum(v[0], v[1]); }, {a, b});
  check("minimum", [](auto& v) { return minimum(v[0], v[1]); }, {a.clone(), b.clone()});
  Tensor c = uniform({4}, 2.0f, 3.0f);  // broadcast; c > every a, so the max is c everywhere
  check("maximum bcast", [](auto& v) { return maximum(v[0], v[1]); }, {uniform({3, 4}), c});
}

TEST(AutogradOps, ScalarOpsAndOperators) {
  check("add scalar", [](auto& v) { return v[0] + 2.5f; }, {transposed({3, 2})});
  check("sub scalar", [](auto& v) { return v[0] - 1.5f; }, {transposed({3, 2})});
  check("mul scalar", [](auto& v) { return v[0] * -3.0f; }, {transposed({3, 2})});
  check("div scalar", [](auto& v) { return v[0] / 4.0f; }, {transposed({3, 2})});
  check("scalar - x", [](auto& v) { return 1.0f - v[0]; }, {transposed({3, 2})});
  check("scalar / x", [](auto& v) { return 2.0f / v[0]; }, {transposed({3, 2}, 0.5f, 2.0f)});
  check("scalar * x + scalar", [](auto& v) { return 0.5f * v[0] + 1.0f; }, {uniform({5})});
  check("unary minus", [](auto& v) { return -v[0]; }, {uniform({5})});
  check("operators", [](auto& v) { return (v[0] * v[1] - v[0]) / (v[1] + 3.0f); }, {uniform({2, 3}), uniform({3})});
}

// ---------- unary ----------

TEST(AutogradOps, UnaryOpsOnNonContiguousInputs) {
  const Shape s = {3, 4};
  check("neg", [](auto& v) { return neg(v[0]); }, {transposed(s)});
  check("abs", [](auto& v) { return abs(v[0]); }, {away_from(transposed(s), 0.0f)});
  check("exp", [](auto& v) { return exp(v[0]); }, {transposed(s)});
  check("log", [](auto& v) { return log(v[0]); }, {transposed(s, 0.5f, 2.0f)});
  check("sqrt", [](auto& v) { return sqrt(v[0]); }, {sliced(s, 0.5f, 2.0f)});
  check("rsqrt", [](auto& v) { return rsqrt(v[0]); }, {sliced(s, 0.5f, 2.0f)});
  check("tanh", [](auto& v) { return tanh(v[0]); }, {transposed(s, -2.0f, 2.0f)});
  check("sigmoid", [](auto& v) { return sigmoid(v[0]); }, {transposed(s, -3.0f, 3.0f)});
  check("relu", [](auto& v) { return relu(v[0]); }, {away_from(transposed(s), 0.0f)});
  check("gelu", [](auto& v) { return gelu(v[0]); }, {transposed(s, -3.0f, 3.0f)});
  check("clamp", [](auto& v) { return clamp(v[0], -0.5f, 0.5f); },
        {away_from(away_from(transposed(s), -0.5f), 0.5f)});
  check("pow 2", [](auto& v) { return pow(v[0], 2.0f); }, {transposed(s)});
  check("pow 3", [](auto& v) { return pow(v[0], 3.0f); }, {transposed(s)});
  check("pow 0.5", [](auto& v) { return pow(v[0], 0.5f); }, {transposed(s, 0.5f, 2.0f)});
  check("pow -1.5", [](auto& v) { return pow(v[0], -1.5f); }, {sliced(s, 0.5f, 2.0f)});
}

TEST(AutogradOps, ClampAndReluPassNoGradientOutsideTheirRange) {
  Var x(from_vector(std::vector<float>{-2.0f, -0.2f, 0.3f, 2.0f}, {4}), true);
  sum(clamp(x, -1.0f, 1.0f) + relu(x)).backward();
  EXPECT_EQ(x.grad().to_vector<float>(), (std::vector<float>{0.0f, 1.0f, 2.0f, 1.0f}));
}

TEST(AutogradOps, WhereAndMaskedFill) {
  Tensor cond = from_bytes({1, 0, 1, 0}, {4}, DType::Bool);  // broadcast over [3, 4]
  check("where", [cond](auto& v) { return where(cond, v[0], v[1]); }, {transposed({3, 4}), uniform({3, 1})});
  Tensor mask = from_bytes({0, 1, 1, 0, 0, 1}, {2, 3}, DType::Bool);
  check("masked_fill", [mask](auto& v) { return masked_fill(v[0], mask, -7.0f); }, {transposed({2, 3})});
  Tensor row_mask = from_bytes({1, 0, 0}, {3}, DType::Bool);  // broadcast mask
  check("masked_fill bcast", [row_mask](auto& v) { return masked_fill(v[0], row_mask, 0.0f); }, {uniform({2, 3})});
}

TEST(AutogradOps, DropoutScalesKeptElementsAndRoutesGradientThroughTheMask) {
  constexpr float kP = 0.25f;
  constexpr int64_t kN = 4000;
  constexpr double kKeepTol = 0.03;  // binomial sd of the keep fraction at n = 4000 is ~0.007
  Generator gen(7);
  Var x(uniform({kN}, 1.0f, 2.0f), true);
  Var y = dropout(x, kP, gen, true);
  Tensor r = uniform({kN});
  y.backward(r);
  auto xv = x.value().to_vector<float>(), yv = y.value().to_vector<float>(), gv = x.grad().to_vector<float>();
  auto rv = r.to_vector<float>();
  int64_t kept = 0;
  for (int64_t i = 0; i < kN; ++i) {
    if (yv[i] != 0.0f) {
      ++kept;
      EXPECT_NEAR(yv[i], xv[i] / (1 - kP), 1e-5);
      EXPECT_NEAR(gv[i], rv[i] / (1 - kP), 1e-5);
    } else {
      EXPECT_EQ(gv[i], 0.0f);
    }
  }
  EXPECT_NEAR(static_cast<double>(kept) / kN, 1 - kP, kKeepTol);
  Var same = dropout(x, kP, gen, false);
  EXPECT_TRUE(same.same(x));
}

// ---------- reductions ----------

TEST(AutogradOps, SumMeanVar) {
  check("sum all", [](auto& v) { return sum(v[0]); }, {transposed({3, 4})});
  check("sum dim", [](auto& v) { return sum(v[0], {1}); }, {transposed({2, 3, 4})});
  check("sum dims keepdim", [](auto& v) { return sum(v[0], {0, -1}, true); }, {sliced({2, 3, 4})});
  check("mean all", [](auto& v) { return mean(v[0]); }, {transposed({3, 4})});
  check("mean dims", [](auto& v) { return mean(v[0], {0, 2}); }, {transposed({2, 3, 4})});
  check("mean keepdim", [](auto& v) { return mean(v[0], {-1}, true); }, {uniform({3, 5})});
  check("var unbiased", [](auto& v) { return var(v[0], {1}); }, {transposed({3, 5})});
  check("var biased keepdim", [](auto& v) { return var(v[0], {0}, false, true); }, {transposed({4, 3})});
  check("var all", [](auto& v) { return var(v[0]); }, {sliced({2, 3})});
}

TEST(AutogradOps, Norm) {
  check("norm 2 all", [](auto& v) { return norm(v[0]); }, {transposed({3, 4})});
  check("norm 2 dim", [](auto& v) { return norm(v[0], 2.0, {1}); }, {transposed({3, 4})});
  check("norm 1 dim keepdim", [](auto& v) { return norm(v[0], 1.0, {0}, true); }, {away_from(transposed({3, 4}), 0)});
  check("norm 3 dim", [](auto& v) { return norm(v[0], 3.0, {-1}); }, {away_from(sliced({3, 4}), 0)});
  // The gradient at a zero norm is defined as 0 (no NaN).
  Var z(zeros({2, 3}), true);
  sum(norm(z, 2.0, {1})).backward();
  for (float g : z.grad().to_vector<float>()) EXPECT_EQ(g, 0.0f);
}

TEST(AutogradOps, MaxMinAlongDim) {
  // Distinct values with gaps far above the finite-difference step, so the argmax never flips.
  std::vector<float> v = {0.3f, -0.9f, 0.7f, 0.1f, -0.4f, 0.9f, -0.1f, 0.5f, -0.7f, 0.2f, 0.8f, -0.3f};
  Tensor t = from_vector(v, {3, 4});
  check("max dim 1", [](auto& x) { return max(x[0], 1); }, {t.clone()});
  check("max dim 0 keepdim", [](auto& x) { return max(x[0], 0, true); }, {t.clone()});
  check("min dim -1", [](auto& x) { return min(x[0], -1); }, {t.clone()});
  check("max transposed", [](auto& x) { return max(x[0], 1); }, {t.clone().t()});
}

TEST(AutogradOps, SoftmaxLogSoftmax) {
  check("softmax -1", [](auto& v) { return softmax(v[0], -1); }, {transposed({3, 5}, -2, 2)});
  check("softmax 0", [](auto& v) { return softmax(v[0], 0); }, {transposed({4, 3}, -2, 2)});
  check("softmax mid", [](auto& v) { return softmax(v[0], 1); }, {sliced({2, 3, 4}, -2, 2)});
  check("log_softmax -1", [](auto& v) { return log_softmax(v[0], -1); }, {transposed({3, 5}, -2, 2)});
  check("log_softmax 0", [](auto& v) { return log_softmax(v[0], 0); }, {uniform({4, 3}, -2, 2)});
}

// ---------- fused layers ----------

TEST(AutogradOps, LayerNorm) {
  constexpr float kLnEps = 1e-5f;
  check("layer_norm affine", [](auto& v) { return layer_norm(v[0], v[1], v[2], kLnEps); },
        {uniform({3, 6}, -2, 2), uniform({6}, 0.5f, 1.5f), uniform({6})});
  check("layer_norm affine, transposed x", [](auto& v) { return layer_norm(v[0], v[1], v[2], kLnEps); },
        {transposed({2, 3, 5}, -2, 2), uniform({5}, 0.5f, 1.5f), uniform({5})});
  check("layer_norm no affine", [](auto& v) { return layer_norm(v[0], Var(), Var(), kLnEps); },
        {sliced({4, 5}, -2, 2)});
  check("layer_norm weight only", [](auto& v) { return layer_norm(v[0], v[1], Var(), kLnEps); },
        {uniform({4, 5}, -2, 2), uniform({5}, 0.5f, 1.5f)});
}

TEST(AutogradOps, Matmul) {
  check("matmul 2d", [](auto& v) { return matmul(v[0], v[1]); }, {uniform({3, 4}), uniform({4, 5})});
  check("matmul batched x 2d", [](auto& v) { return matmul(v[0], v[1]); }, {uniform({2, 3, 4}), uniform({4, 5})});
  check("matmul broadcast batch", [](auto& v) { return matmul(v[0], v[1]); },
        {uniform({2, 1, 3, 4}), uniform({3, 4, 2})});
  check("matmul trans_a", [](auto& v) { return matmul(v[0], v[1], true, false); },
        {uniform({2, 4, 3}), uniform({2, 4, 5})});
  check("matmul trans_b", [](auto& v) { return matmul(v[0], v[1], false, true); }, {uniform({3, 4}), uniform({5, 4})});
  check("matmul trans both", [](auto& v) { return matmul(v[0], v[1], true, true); },
        {uniform({4, 3}), uniform({2, 5, 4})});
  check("matmul transposed views", [](auto& v) { return matmul(v[0], v[1]); },
        {transposed({2, 3, 4}), transposed({4, 5})});
  check("matmul sliced view", [](auto& v) { return matmul(v[0], v[1]); }, {sliced({3, 4}), uniform({4, 2})});
}

TEST(AutogradOps, Linear) {
  check("linear bias", [](auto& v) { return linear(v[0], v[1], v[2]); },
        {uniform({2, 3, 4}), uniform({5, 4}), uniform({5})});
  check("linear no bias", [](auto& v) { return linear(v[0], v[1], Var()); }, {uniform({3, 4}), uniform({2, 4})});
  check("linear transposed x and W", [](auto& v) { return linear(v[0], v[1], v[2]); },
        {transposed({3, 4}), transposed({5, 4}), uniform({5})});
  check("linear 1-d x", [](auto& v) { return linear(v[0], v[1], v[2]); },
        {uniform({4}), uniform({3, 4}), uniform({3})});
}

TEST(AutogradOps, Conv1d) {
  Conv1dParams p;
  check("conv1d", [p](auto& v) { return conv1d(v[0], v[1], v[2], p); },
        {uniform({2, 3, 7}), uniform({4, 3, 3}), uniform({4})});
  Conv1dParams q;
  q.stride = 2;
  q.padding = 2;
  q.groups = 2;
  check("conv1d stride/pad/groups", [q](auto& v) { return conv1d(v[0], v[1], v[2], q); },
        {uniform({2, 4, 9}), uniform({6, 2, 5}), uniform({6})});
  check("conv1d no bias, transposed x", [p](auto& v) { return conv1d(v[0], v[1], Var(), p); },
        {transposed({1, 3, 6}), uniform({2, 3, 2})});
}

TEST(AutogradOps, Conv2d) {
  Conv2dParams p;
  p.stride = {2, 2};
  check("conv2d patch embed", [p](auto& v) { return conv2d(v[0], v[1], v[2], p); },
        {uniform({2, 1, 6, 4}), uniform({3, 1, 2, 2}), uniform({3})});
  Conv2dParams q;
  q.padding = {1, 0};
  q.groups = 2;
  check("conv2d pad/groups, no bias", [q](auto& v) { return conv2d(v[0], v[1], Var(), q); },
        {uniform({1, 2, 4, 3}), uniform({4, 1, 3, 2})});
  check("conv2d transposed x", [p](auto& v) { return conv2d(v[0], v[1], v[2], p); },
        {transposed({1, 2, 4, 4}), uniform({2, 2, 2, 2}), uniform({2})});
}

TEST(AutogradOps, EmbeddingGatherIndexSelect) {
  Tensor ids = idx({2, 0, 2, 4, 1, 2}, {2, 3});  // repeated rows accumulate
  check("embedding", [ids](auto& v) { return embedding(v[0], ids); }, {uniform({5, 3})});
  Tensor gi = idx({0, 2, 2, 1, 1, 0}, {2, 3});
  check("gather dim 1", [gi](auto& v) { return gather(v[0], 1, gi); }, {transposed({2, 4})});
  Tensor gi0 = idx({1, 0, 1}, {1, 3});
  check("gather dim 0", [gi0](auto& v) { return gather(v[0], 0, gi0); }, {uniform({2, 3})});
  Tensor si = idx({3, 0, 3}, {3});
  check("index_select dim 0", [si](auto& v) { return index_select(v[0], 0, si); }, {uniform({4, 2})});
  check("index_select dim 1", [si](auto& v) { return index_select(v[0], 1, si); }, {transposed({2, 4})});
}

TEST(AutogradOps, L2Normalize) {
  check("l2_normalize -1", [](auto& v) { return l2_normalize(v[0], -1); }, {transposed({3, 4})});
  check("l2_normalize 0", [](auto& v) { return l2_normalize(v[0], 0); }, {uniform({3, 4})});
}

// ---------- views and assembling ----------

TEST(AutogradOps, Views) {
  check("reshape (copying, non-contiguous in)", [](auto& v) { return mul(reshape(v[0], {4, 3}), v[1]); },
        {transposed({3, 4}), uniform({4, 3})});
  check("view", [](auto& v) { return view(v[0], {2, 6}) * 2.0f; }, {uniform({3, 4})});
  check("flatten", [](auto& v) { return flatten(v[0], 1) * 3.0f; }, {transposed({2, 3, 2})});
  check("permute", [](auto& v) { return mul(permute(v[0], {2, 0, 1}), v[1]); },
        {uniform({2, 3, 4}), uniform({4, 2, 3})});
  check("transpose", [](auto& v) { return mul(transpose(v[0], 0, 2), v[1]); },
        {uniform({2, 3, 4}), uniform({4, 3, 2})});
  check("narrow", [](auto& v) { return narrow(v[0], 1, 1, 2) * 2.0f; }, {transposed({3, 4})});
  check("slice step", [](auto& v) { return slice(v[0], 0, 1, 5, 2) * 2.0f; }, {uniform({5, 3})});
  check("select", [](auto& v) { return select(v[0], 1, 2) * 2.0f; }, {transposed({3, 4})});
  check("expand", [](auto& v) { return mul(expand(v[0], {2, 3, 4}), v[1]); }, {uniform({3, 1}), uniform({2, 3, 4})});
  check("squeeze", [](auto& v) { return squeeze(v[0]) * 2.0f; }, {uniform({3, 1, 2})});
  check("squeeze dim", [](auto& v) { return squeeze(v[0], 1) * 2.0f; }, {uniform({3, 1, 2})});
  check("unsqueeze", [](auto& v) { return mul(unsqueeze(v[0], 0), v[1]); }, {uniform({3}), uniform({2, 3})});
  check("contiguous", [](auto& v) { return contiguous(v[0]) * 2.0f; }, {transposed({3, 4})});
  check("view chain", [](auto& v) { return sum(transpose(reshape(narrow(v[0], 0, 1, 2), {4, 2}), 0, 1), {0}); },
        {transposed({3, 4})});
}

TEST(AutogradOps, ViewsShareStorageWithTheirInput) {
  Var x(uniform({3, 4}), true);
  EXPECT_TRUE(transpose(x, 0, 1).value().shares_storage(x.value()));
  EXPECT_TRUE(narrow(x, 1, 1, 2).value().shares_storage(x.value()));
  EXPECT_TRUE(select(x, 0, 1).value().shares_storage(x.value()));
  EXPECT_TRUE(reshape(x, {12}).value().shares_storage(x.value()));
}

TEST(AutogradOps, CatStackSplitChunk) {
  check("cat", [](auto& v) { return cat({v[0], v[1], v[2]}, 1); },
        {uniform({2, 1}), transposed({2, 3}), uniform({2, 2})});
  check("stack", [](auto& v) { return stack({v[0], v[1]}, 1); }, {uniform({2, 3}), transposed({2, 3})});
  check("split", [](auto& v) {
    auto parts = split(v[0], {1, 3}, 1);
    return mul(sum(parts[0]), sum(parts[1] * parts[1]));
  }, {transposed({2, 4})});
  check("chunk", [](auto& v) {
    auto parts = chunk(v[0], 3, 0);  // 5 rows -> 2, 2, 1
    return cat({parts[2] * 3.0f, parts[0], parts[1] * parts[1]}, 0);
  }, {uniform({5, 2})});
  Var x(uniform({5, 2}), true);
  auto parts = chunk(x, 3, 0);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[2].shape(), (Shape{1, 2}));
  EXPECT_THROW(split(x, {2, 2}, 0), Error);
}

TEST(AutogradOps, CompositeBlock) {
  // A small attention-like block exercising shared inputs across fused ops.
  check("block", [](auto& v) {
    Var h = layer_norm(v[0], Var(), Var());
    Var q = linear(h, v[1], Var());
    Var a = softmax(matmul(q, h, false, true), -1);
    return gelu(matmul(a, h) + v[0]);
  }, {uniform({2, 3, 4}), uniform({4, 4})});
}
