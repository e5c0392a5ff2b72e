// Tests of the layers (nn/layers.h) against plain reference computations, including weight-normalised
// Conv1d and finite-difference gradient checks through it, and of the initialisers' distributions (nn/init.h).
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "nn/init.h"
#include "nn/layers.h"
#include "tensor/ops.h"

namespace sonar::nn {
namespace {

constexpr double kTol = 1e-5;         // float32 results against the same maths done another way
constexpr double kStatTol = 0.05;     // relative tolerance on a sample std of ~10^4 draws
constexpr double kErfinvTol = 1e-12;

double max_diff(const Tensor& a, const Tensor& b) { return max_all(abs(sub(a, b))).item<double>(); }

TEST(Layers, LinearMatchesMatmulPlusBias) {
  Generator gen(1);
  Linear l(5, 3, true, &gen);
  Tensor x = randn({2, 4, 5}, gen);
  Tensor want = add(matmul(x, l.weight.value(), false, true), l.bias.value());
  EXPECT_LT(max_diff(l.forward(ag::Var(x)).value(), want), kTol);
  // PyTorch's default init: |w| <= 1/sqrt(fan_in), |b| <= 1/sqrt(fan_in).
  EXPECT_LE(max_all(abs(l.weight.value())).item<double>(), 1.0 / std::sqrt(5.0) + 1e-6);
  EXPECT_LE(max_all(abs(l.bias.value())).item<double>(), 1.0 / std::sqrt(5.0) + 1e-6);
  EXPECT_THROW(l.forward(ag::Var(zeros({2, 4}))), Error);
  Linear nb(5, 3, false);
  EXPECT_FALSE(nb.bias.defined());
  EXPECT_EQ(nb.state_dict().size(), 1u);
}

TEST(Layers, WeightNormalisedConv1dUsesGOverNormOfV) {
  Generator gen(2);
  Conv1dOptions o;
  o.in_channels = 4;
  o.out_channels = 6;
  o.kernel_size = 4;
  o.padding = 2;
  o.groups = 2;
  o.weight_norm_dim = 2;
  Conv1d c(o, &gen);
  EXPECT_EQ(c.weight_g.shape(), (Shape{1, 1, 4}));
  EXPECT_EQ(c.weight_v.shape(), (Shape{6, 2, 4}));
  // Fresh: g = ||v|| over dims 0 and 1, so the effective weight equals v.
  EXPECT_LT(max_diff(c.effective_weight().value(), c.weight_v.value()), kTol);
  c.weight_g.value().copy_(from_vector(std::vector<float>{0.5f, 2.0f, -1.0f, 3.0f}, {1, 1, 4}));
  Tensor v = c.weight_v.value();
  Tensor want_w = mul(v, div(c.weight_g.value(), norm(v, 2.0, {0, 1}, true)));
  EXPECT_LT(max_diff(c.effective_weight().value(), want_w), kTol);
  Tensor x = randn({2, 4, 9}, gen);
  Conv1dParams p;
  p.padding = 2;
  p.groups = 2;
  EXPECT_LT(max_diff(c.forward(ag::Var(x)).value(), conv1d_reference(x, want_w, c.bias.value(), p)), kTol);
  std::vector<std::string> names;
  for (auto& [k, t] : c.state_dict()) names.push_back(k);
  EXPECT_EQ(names, (std::vector<std::string>{"bias", "weight_g", "weight_v"}));  // torch's order

  // Gradients of g, v, bias and the input through the weight normalisation.
  ag::GradcheckResult r = ag::gradcheck(
      [&](const std::vector<ag::Var>& in) {
        Conv1dParams q;
        q.padding = 2;
        q.groups = 2;
        ag::Var w = ag::mul(in[1], ag::div(in[2], ag::norm(in[1], 2.0, {0, 1}, true)));
        return ag::conv1d(in[0], w, in[3], q);
      },
      {randn({1, 4, 7}, gen), randn({6, 2, 4}, gen), c.weight_g.value().clone(), randn({6}, gen)});
  EXPECT_TRUE(r.ok) << r.report;
}

// The fused weight_norm op against the chain of ops it replaces, for each dim: the forward bit-identical (it
// runs the same three ops), the gradients within kTol of the chain's (the fused backward sums in another
// order), and both gradients by finite differences.
TEST(Layers, FusedWeightNormMatchesTheChainOfOps) {
  Generator gen(12);
  for (int64_t dim : {0, 1, 2}) {
    Tensor v = randn({6, 5, 7}, gen);
    Shape gs(3, 1);
    gs[dim] = v.size(dim);
    Tensor g = randn(gs, gen);
    Tensor gw = randn(v.shape(), gen);
    std::vector<int64_t> dims;
    for (int64_t i = 0; i < 3; ++i)
      if (i != dim) dims.push_back(i);
    ag::Var v1(v.clone(), true), g1(g.clone(), true), v2(v.clone(), true), g2(g.clone(), true);
    ag::Var fused = ag::weight_norm(v1, g1, dim);
    ag::Var chain = ag::mul(v2, ag::div(g2, ag::norm(v2, 2.0, dims, true)));
    EXPECT_EQ(max_diff(fused.value(), chain.value()), 0.0) << "dim " << dim;
    ag::sum(ag::mul(fused, ag::Var(gw))).backward();
    ag::sum(ag::mul(chain, ag::Var(gw))).backward();
    EXPECT_LT(max_diff(v1.grad(), v2.grad()), kTol) << "dim " << dim;
    EXPECT_LT(max_diff(g1.grad(), g2.grad()), kTol) << "dim " << dim;
    ag::GradcheckResult r =
        ag::gradcheck([dim](const std::vector<ag::Var>& in) { return ag::weight_norm(in[0], in[1], dim); },
                      {randn({3, 4, 5}, gen), randn(dim == 0 ? Shape{3, 1, 1} : dim == 1 ? Shape{1, 4, 1} : Shape{1, 1, 5}, gen)});
    EXPECT_TRUE(r.ok) << "dim " << dim << ": " << r.report;
  }
  EXPECT_THROW(ag::weight_norm(ag::Var(randn({3, 4}, gen)), ag::Var(randn({1, 3}, gen)), 1), Error);
}

TEST(Layers, Conv2dLayerNormEmbeddingDropoutAndSequential) {
  Generator gen(3);
  Conv2dOptions o;
  o.in_channels = 1;
  o.out_channels = 3;
  o.kernel_size = {2, 2};
  o.stride = {2, 2};
  o.bias = false;
  Conv2d c(o, &gen);
  Tensor x = randn({1, 1, 5, 4}, gen);
  Conv2dParams p;
  p.stride = {2, 2};
  EXPECT_LT(max_diff(c.forward(ag::Var(x)).value(), conv2d_reference(x, c.weight.value(), Tensor(), p)), kTol);

  LayerNorm ln(4);
  Tensor y = ln.forward(ag::Var(randn({3, 4}, gen))).value();
  EXPECT_LT(max_all(abs(mean(y, {1}))).item<double>(), kTol);

  Embedding e(5, 3, &gen);
  Tensor idx = from_vector(std::vector<int64_t>{4, 0, 4}, {3});
  Tensor rows = e.forward(idx).value();
  EXPECT_EQ(max_diff(rows.select(0, 0), e.weight.value().select(0, 4)), 0.0);

  Dropout d(0.5f);
  Tensor ones_t = ones({1000});
  d.eval();
  EXPECT_EQ(max_diff(d.forward(ag::Var(ones_t)).value(), ones_t), 0.0);
  d.train();
  Generator g2(4);
  RngScope scope(g2);
  Tensor dropped = d.forward(ag::Var(ones_t)).value();
  const double kept = sum(gt(dropped, 0.0f).to(DType::Float32)).item<double>();
  EXPECT_NEAR(kept / 1000.0, 0.5, 0.06);
  EXPECT_NEAR(max_all(dropped).item<double>(), 2.0, 1e-6);  // inverted scaling 1/(1-p)

  Sequential s({std::make_shared<Linear>(3, 3, true, &gen), std::make_shared<Tanh>(), std::make_shared<GELU>()});
  Tensor in = randn({2, 3}, gen);
  Tensor want = gelu(tanh(s[0]->forward(ag::Var(in)).value()));
  EXPECT_LT(max_diff(s.forward(ag::Var(in)).value(), want), kTol);
  EXPECT_EQ(s.state_dict()[0].first, "0.weight");
  auto copy = clone_as(s);
  EXPECT_LT(max_diff(copy->forward(ag::Var(in)).value(), want), kTol);
}

double sample_std(const Tensor& t) { return std::sqrt(var(t).item<double>()); }

TEST(Init, DistributionsFollowTorchFormulas) {
  Generator gen(5);
  Tensor w = zeros({100, 200});
  init::xavier_normal_(w, 0.5, gen);
  EXPECT_NEAR(sample_std(w) / (0.5 * std::sqrt(2.0 / 300.0)), 1.0, kStatTol);
  init::xavier_uniform_(w, 1.0, gen);
  EXPECT_LE(max_all(abs(w)).item<double>(), std::sqrt(6.0 / 300.0) + 1e-6);
  EXPECT_NEAR(sample_std(w) / (std::sqrt(6.0 / 300.0) / std::sqrt(3.0)), 1.0, kStatTol);
  init::kaiming_normal_(w, 0.0, init::FanMode::FanIn, "relu", gen);
  EXPECT_NEAR(sample_std(w) / (std::sqrt(2.0) / std::sqrt(200.0)), 1.0, kStatTol);
  init::normal_(w, 1.0, 0.02, gen);
  EXPECT_NEAR(mean(w).item<double>(), 1.0, 1e-3);
  init::trunc_normal_(w, 0.0, 1.0, -0.5, 1.0, gen);
  EXPECT_GE(min_all(w).item<double>(), -0.5);
  EXPECT_LE(max_all(w).item<double>(), 1.0);
  EXPECT_GT(max_all(w).item<double>(), 0.99);
  Tensor conv = zeros({8, 4, 3});
  init::Fans f = init::compute_fans(conv.shape());
  EXPECT_EQ(f.fan_in, 12);
  EXPECT_EQ(f.fan_out, 24);
  EXPECT_NEAR(init::calculate_gain("leaky_relu", std::sqrt(5.0)), std::sqrt(1.0 / 3.0), 1e-12);
  EXPECT_THROW(init::calculate_gain("swishy"), Error);
  for (double y : {-0.999, -0.5, 0.0, 0.3, 0.9, 0.999999})
    EXPECT_NEAR(std::erf(init::erfinv(y)), y, kErfinvTol) << y;
}

}  // namespace
}  // namespace sonar::nn
