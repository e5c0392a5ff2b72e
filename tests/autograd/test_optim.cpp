// Optimisers and schedules: AdamW and SGD steps against their formulas evaluated by hand in double, parameter
// groups, skipping parameters without gradients, gradient clipping, state save -> restore -> identical steps,
// schedule values, and a small MLP trained to near-zero loss. Not the engine or the ops (test_autograd_*).
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/loss.h"
#include "autograd/ops.h"
#include "autograd/optim.h"
#include "autograd/schedule.h"
#include "tensor/ops.h"
#include "tests/test_util.h"

using namespace sonar;
using namespace sonar::ag;

namespace {

using testutil::expect_error;

constexpr double kStepTol = 1e-6;  // float32 updates vs the double formula on O(1) parameters
constexpr double kLrTol = 1e-12;   // schedules are computed in double

Tensor vec(std::vector<float> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return from_vector(v, {n});
}

// Reference AdamW (PyTorch semantics) on one parameter vector, in double.
struct RefAdamW {
  std::vector<double> p, m, v;
  int t = 0;
  void step(const std::vector<double>& g, double lr, double wd, double b1, double b2, double eps) {
    ++t;
    if (m.empty()) m.assign(p.size(), 0.0), v.assign(p.size(), 0.0);
    for (size_t k = 0; k < p.size(); ++k) {
      p[k] -= lr * wd * p[k];
      m[k] = b1 * m[k] + (1 - b1) * g[k];
      v[k] = b2 * v[k] + (1 - b2) * g[k] * g[k];
      const double mhat = m[k] / (1 - std::pow(b1, t)), vhat = v[k] / (1 - std::pow(b2, t));
      p[k] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

std::vector<double> as_double(const Tensor& t) {
  std::vector<double> out;
  for (float x : t.to_vector<float>()) out.push_back(x);
  return out;
}
}  // namespace

TEST(Optim, AdamWMatchesFormulaWithGroups) {
  AdamWOptions o;
  o.lr = 0.01f;
  o.beta1 = 0.8f;
  o.beta2 = 0.95f;
  o.eps = 1e-6f;
  o.weight_decay = 0.1f;
  Var w(vec({0.5f, -1.0f, 2.0f}), true);
  Var b(vec({0.25f, -0.75f}), true);
  ParamGroup decayed{{w}};
  ParamGroup no_decay{{b}, 0.5f, 0.0f};  // half the lr, no weight decay
  AdamW opt({decayed, no_decay}, o);
  RefAdamW rw, rb;
  rw.p = as_double(w.value());
  rb.p = as_double(b.value());
  const std::vector<std::vector<float>> gw = {{0.1f, -0.2f, 0.3f}, {0.05f, 0.4f, -0.1f}, {-0.3f, 0.0f, 0.2f}};
  const std::vector<std::vector<float>> gb = {{1.0f, -0.5f}, {0.2f, 0.3f}, {-0.7f, 0.1f}};
  for (size_t s = 0; s < gw.size(); ++s) {
    w.set_grad(vec(gw[s]));
    b.set_grad(vec(gb[s]));
    opt.step();
    rw.step(as_double(vec(gw[s])), 0.01, 0.1, 0.8, 0.95, 1e-6);
    rb.step(as_double(vec(gb[s])), 0.005, 0.0, 0.8, 0.95, 1e-6);
    auto pw = w.value().to_vector<float>(), pb = b.value().to_vector<float>();
    for (size_t k = 0; k < pw.size(); ++k) EXPECT_NEAR(pw[k], rw.p[k], kStepTol) << "step " << s << " w[" << k << "]";
    for (size_t k = 0; k < pb.size(); ++k) EXPECT_NEAR(pb[k], rb.p[k], kStepTol) << "step " << s << " b[" << k << "]";
  }
}

TEST(Optim, SgdMomentumMatchesFormula) {
  // PyTorch: d = g + wd p; buf = d on the first step, then mu buf + d (dampening 0); p -= lr buf.
  const double lr = 0.1, mu = 0.9, wd = 0.01;
  SGDOptions o;
  o.lr = static_cast<float>(lr);
  o.momentum = static_cast<float>(mu);
  o.weight_decay = static_cast<float>(wd);
  Var p(vec({1.0f, -2.0f}), true);
  SGD opt({p}, o);
  std::vector<double> ref = {1.0, -2.0}, buf;
  const std::vector<std::vector<float>> grads = {{0.5f, 0.1f}, {-0.2f, 0.3f}, {0.4f, -0.6f}};
  for (const auto& g : grads) {
    p.set_grad(vec(g));
    opt.step();
    std::vector<double> d = {g[0] + wd * ref[0], g[1] + wd * ref[1]};
    if (buf.empty()) buf = d;
    else for (int k = 0; k < 2; ++k) buf[k] = mu * buf[k] + d[k];
    for (int k = 0; k < 2; ++k) ref[k] -= lr * buf[k];
    auto pv = p.value().to_vector<float>();
    for (int k = 0; k < 2; ++k) EXPECT_NEAR(pv[k], ref[k], kStepTol);
  }
}

TEST(Optim, SgdPlainAndNesterov) {
  SGDOptions plain;
  plain.lr = 0.5f;
  Var p(vec({1.0f}), true);
  SGD sgd({p}, plain);
  p.set_grad(vec({0.2f}));
  sgd.step();
  EXPECT_NEAR(p.item(), 1.0 - 0.5 * 0.2, kStepTol);

  SGDOptions nest;
  nest.lr = 0.1f;
  nest.momentum = 0.5f;
  nest.nesterov = true;
  Var q(vec({1.0f}), true);
  SGD sgdn({q}, nest);
  double ref = 1.0, buf = 0;
  for (float g : {0.4f, -0.2f}) {
    q.set_grad(vec({g}));
    sgdn.step();
    buf = buf == 0 ? g : 0.5 * buf + g;
    ref -= 0.1 * (g + 0.5 * buf);
    EXPECT_NEAR(q.item(), ref, kStepTol);
  }
}

TEST(Optim, ParameterWithoutGradientIsSkipped) {
  // PyTorch behaviour: no gradient -> no weight decay, no moment update, step count unchanged.
  AdamWOptions o;
  o.lr = 0.1f;
  o.weight_decay = 0.5f;
  Var used(vec({1.0f}), true), unused(vec({3.0f}), true);
  AdamW opt({used, unused}, o);
  used.set_grad(vec({0.5f}));
  opt.step();
  opt.step();
  EXPECT_EQ(unused.item(), 3.0f);
  OptimizerState st = opt.save_state();
  EXPECT_EQ(st.scalars.at("param.0.step"), 2.0);
  EXPECT_EQ(st.scalars.count("param.1.step"), 0u);
  EXPECT_EQ(st.tensors.count("param.1.exp_avg"), 0u);
  // Its first real step uses t = 1 bias correction: |update| = lr (Adam's first step is lr * sign(g)).
  opt.zero_grad();
  EXPECT_FALSE(used.grad().defined());
  unused.set_grad(vec({2.0f}));
  opt.step();
  EXPECT_NEAR(unused.item(), 3.0 * (1 - 0.1 * 0.5) - 0.1, 1e-5);
  EXPECT_EQ(opt.save_state().scalars.at("param.0.step"), 2.0);
}

TEST(Optim, ClipGradNorm) {
  Var a(vec({3.0f, 0.0f}), true), b(vec({4.0f}), true), c(vec({1.0f}), true);
  a.set_grad(vec({3.0f, 0.0f}));
  b.set_grad(vec({4.0f}));
  // c has no gradient: ignored
  constexpr float kMax = 1.0f;
  const float norm = clip_grad_norm({a, b, c}, kMax);
  EXPECT_NEAR(norm, 5.0, 1e-6);
  const double coef = kMax / (5.0 + 1e-6);
  EXPECT_NEAR(a.grad().to_vector<float>()[0], 3.0 * coef, 1e-6);
  EXPECT_NEAR(b.grad().item<float>(), 4.0 * coef, 1e-6);
  EXPECT_FALSE(c.grad().defined());
  // Below the threshold nothing changes, and the norm is still reported.
  EXPECT_NEAR(clip_grad_norm({a, b}, 10.0f), 1.0, 1e-5);
  EXPECT_NEAR(b.grad().item<float>(), 4.0 * coef, 1e-6);
}

TEST(Optim, StateSaveRestoreGivesIdenticalSteps) {
  auto make = [] {
    return std::vector<Var>{Var(vec({0.5f, -1.0f, 2.0f}), true),
                            Var(from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2}), true)};
  };
  auto grads = [](int s) {
    return std::vector<Tensor>{vec({0.1f * s, -0.2f, 0.3f / (s + 1)}),
                               from_vector(std::vector<float>{0.5f, -0.1f * s, 0.2f, 0.05f}, {2, 2})};
  };
  AdamWOptions o;
  o.lr = 0.05f;
  std::vector<Var> pa = make();
  AdamW a(pa, o);
  for (int s = 0; s < 3; ++s) {
    auto g = grads(s);
    for (size_t i = 0; i < pa.size(); ++i) pa[i].set_grad(g[i]);
    a.step();
  }
  OptimizerState st = a.save_state();
  // A fresh optimiser over parameters with the same values, restored from the saved state.
  std::vector<Var> pb = make();
  for (size_t i = 0; i < pb.size(); ++i) pb[i].value().copy_(pa[i].value());
  AdamW b(pb, AdamWOptions{});  // different default lr: restored from the state
  b.load_state(st);
  EXPECT_EQ(b.lr(), a.lr());
  for (int s = 3; s < 6; ++s) {
    auto g = grads(s);
    for (size_t i = 0; i < pa.size(); ++i) {
      pa[i].set_grad(g[i]);
      pb[i].set_grad(g[i]);
    }
    a.step();
    b.step();
    for (size_t i = 0; i < pa.size(); ++i)
      EXPECT_EQ(pa[i].value().to_vector<float>(), pb[i].value().to_vector<float>());
  }
  // SGD momentum buffers round-trip too.
  SGDOptions so;
  so.momentum = 0.9f;
  std::vector<Var> qa = make(), qb = make();
  SGD sa(qa, so), sb(qb, so);
  for (size_t i = 0; i < qa.size(); ++i) qa[i].set_grad(grads(1)[i]);
  sa.step();
  for (size_t i = 0; i < qb.size(); ++i) qb[i].value().copy_(qa[i].value());
  sb.load_state(sa.save_state());
  for (size_t i = 0; i < qa.size(); ++i) {
    qa[i].set_grad(grads(2)[i]);
    qb[i].set_grad(grads(2)[i]);
  }
  sa.step();
  sb.step();
  for (size_t i = 0; i < qa.size(); ++i) EXPECT_EQ(qa[i].value().to_vector<float>(), qb[i].value().to_vector<float>());
}

TEST(Optim, LoadStateErrorsNameTheKey) {
  Var p(vec({1.0f, 2.0f}), true);
  AdamW opt({p}, AdamWOptions{});
  OptimizerState bad_shape;
  bad_shape.tensors["param.0.exp_avg"] = zeros({3});
  expect_error([&] { opt.load_state(bad_shape); }, {"param.0.exp_avg", "[3]", "[2]"});
  OptimizerState bad_index;
  bad_index.tensors["param.4.exp_avg"] = zeros({2});
  expect_error([&] { opt.load_state(bad_index); }, {"param.4.exp_avg", "parameter 4"});
  OptimizerState bad_buffer;
  bad_buffer.tensors["param.0.momentum_buffer"] = zeros({2});
  expect_error([&] { opt.load_state(bad_buffer); }, {"momentum_buffer"});
  OptimizerState bad_scalar;
  bad_scalar.scalars["beta9"] = 1.0;
  expect_error([&] { opt.load_state(bad_scalar); }, {"beta9"});
}

TEST(Optim, ConstructionErrors) {
  Var p(vec({1.0f}), true);
  expect_error([&] { AdamW({p, p}, AdamWOptions{}); }, {"twice"});
  Var frozen(vec({1.0f}));
  expect_error([&] { SGD({frozen}, SGDOptions{}); }, {"requires_grad"});
  AdamWOptions bad;
  bad.beta2 = 1.0f;
  expect_error([&] { AdamW({p}, bad); }, {"betas"});
  Var nc(from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2}).t(), true);
  SGD sgd({nc}, SGDOptions{});
  nc.set_grad(zeros({2, 2}));
  expect_error([&] { sgd.step(); }, {"contiguous", "[2, 2]"});
}

TEST(Optim, ScheduleWarmupPeakAndEnd) {
  LrScheduleOptions o;
  o.peak_lr = 1e-3;
  o.warmup_steps = 10;
  o.total_steps = 110;
  o.final_lr = 1e-5;
  LrSchedule cosine(o);
  EXPECT_NEAR(cosine.lr_at(0), 0.0, kLrTol);
  EXPECT_NEAR(cosine.lr_at(5), 0.5e-3, kLrTol);
  EXPECT_NEAR(cosine.lr_at(10), 1e-3, kLrTol);                     // peak at the end of warm-up
  EXPECT_NEAR(cosine.lr_at(60), 1e-5 + (1e-3 - 1e-5) * 0.5, kLrTol);  // half-way through the cosine
  EXPECT_NEAR(cosine.lr_at(35), 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + std::cos(M_PI * 0.25)), kLrTol);
  EXPECT_NEAR(cosine.lr_at(110), 1e-5, kLrTol);
  EXPECT_NEAR(cosine.lr_at(500), 1e-5, kLrTol);  // floor after the end

  o.decay = Decay::Linear;
  o.init_lr = 1e-4;
  LrSchedule linear(o);
  EXPECT_NEAR(linear.lr_at(0), 1e-4, kLrTol);
  EXPECT_NEAR(linear.lr_at(10), 1e-3, kLrTol);
  EXPECT_NEAR(linear.lr_at(85), 1e-3 + (1e-5 - 1e-3) * 0.75, kLrTol);
  EXPECT_NEAR(linear.lr_at(110), 1e-5, kLrTol);

  o.decay = Decay::Constant;
  EXPECT_NEAR(LrSchedule(o).lr_at(1000), 1e-3, kLrTol);

  LrScheduleOptions bad = o;
  bad.total_steps = 5;
  expect_error([&] { LrSchedule s(bad); }, {"total_steps 5", "10"});
  expect_error([&] { cosine.lr_at(-1); }, {"-1"});
}

TEST(Optim, MlpTrainsToNearZeroLossWithAdamW) {
  // Toy regression y = sin(2 x0) * x1 + 0.5 x0 on 64 points in [-1, 1]^2, fitted by a 2-16-16-1 MLP
  // (tanh, then gelu) with full-batch AdamW under a warm-up + cosine schedule.
  constexpr int kPoints = 64, kSteps = 400;
  constexpr double kFinalLossMax = 1e-3;  // the initial loss is ~0.37
  constexpr double kFinalOverInitial = 0.01;
  Generator gen(42);
  Tensor x = sub(mul(rand({kPoints, 2}, gen), 2.0f), 1.0f);
  std::vector<float> xv = x.to_vector<float>(), yv;
  for (int i = 0; i < kPoints; ++i) yv.push_back(std::sin(2 * xv[2 * i]) * xv[2 * i + 1] + 0.5f * xv[2 * i]);
  Tensor y = from_vector(yv, {kPoints, 1});
  auto init = [&](int64_t out, int64_t in) {
    return Var(mul(randn({out, in}, gen), 1.0f / std::sqrt(static_cast<float>(in))), true);
  };
  Var w1 = init(16, 2), w2 = init(16, 16), w3 = init(1, 16);
  Var b1(zeros({16}), true), b2(zeros({16}), true), b3(zeros({1}), true);
  AdamWOptions o;
  o.lr = 0.02f;
  o.weight_decay = 1e-4f;
  AdamW opt({ParamGroup{{w1, w2, w3}}, ParamGroup{{b1, b2, b3}, 1.0f, 0.0f}}, o);
  LrScheduleOptions so;
  so.peak_lr = 0.02;
  so.warmup_steps = 20;
  so.total_steps = kSteps;
  so.final_lr = 1e-4;
  LrSchedule sched(so);
  Var xin(x);
  double initial = 0, final_loss = 0;
  for (int s = 0; s < kSteps; ++s) {
    opt.zero_grad();
    Var h = tanh(linear(xin, w1, b1));
    h = gelu(linear(h, w2, b2));
    Var loss = mse_loss(linear(h, w3, b3), Var(y));
    if (s == 0) initial = loss.item();
    final_loss = loss.item();
    loss.backward();
    clip_grad_norm(opt.params(), 10.0f);
    opt.set_lr(static_cast<float>(sched.lr_at(s)));
    opt.step();
  }
  EXPECT_LT(final_loss, kFinalLossMax) << "initial " << initial;
  EXPECT_LT(final_loss, kFinalOverInitial * initial);
}

// A parameter that grows after its moments exist (a label head that gained classes) must be reported,
// never stepped with buffers of the old size.
TEST(OptimState, ParameterThatChangedShapeIsAnErrorNamingBothShapes) {
  Var w(zeros({2, 3}), true);
  AdamW adam({w}, AdamWOptions{});
  w.set_grad(ones({2, 3}));
  adam.step();
  w.value() = zeros({4, 3});
  w.set_grad(ones({4, 3}));
  try {
    adam.step();
    FAIL() << "expected an error";
  } catch (const sonar::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("[2, 3]"), std::string::npos) << m;
    EXPECT_NE(m.find("[4, 3]"), std::string::npos) << m;
  }
  Var u(zeros({3}), true);
  SGD sgd({u}, SGDOptions{0.1f, 0.9f});
  u.set_grad(ones({3}));
  sgd.step();
  u.value() = zeros({5});
  u.set_grad(ones({5}));
  EXPECT_THROW(sgd.step(), sonar::Error);
}
