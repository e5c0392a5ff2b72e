// Tests of nn::Module: hierarchical names, state-dict order, strict and non-strict loading with the errors
// they must give, shared children, freezing, train/eval propagation, deep copies and RngScope.
// Not here: the layers' maths (test_layers.cpp).
#include <gtest/gtest.h>

#include "autograd/ops.h"
#include "nn/layers.h"
#include "tensor/ops.h"

namespace sonar::nn {
namespace {

// A small model: "enc.0" and "enc.1" Linear layers, a LayerNorm, a persistent and a non-persistent buffer,
// and (after share_table) one Embedding registered under two names, "table_a" and "table_b".
class Net : public Module {
 public:
  Net() : Module("Net") {
    enc = register_module("enc", std::make_shared<Sequential>());
    enc->push_back(std::make_shared<Linear>(4, 3));
    enc->push_back(std::make_shared<Linear>(3, 2, false));
    norm = register_module("norm", std::make_shared<LayerNorm>(2));
    steps = register_buffer("steps", zeros({1}));
    scratch = register_buffer("scratch", zeros({2}), false);
    auto shared = std::make_shared<Embedding>(5, 2);
    table_head = register_module("table_a", shared);
  }
  ag::Var forward(const ag::Var& x) { return norm->forward(enc->forward(x)); }
  std::shared_ptr<Sequential> enc;
  std::shared_ptr<LayerNorm> norm;
  std::shared_ptr<Embedding> table_head;
  ag::Var steps, scratch;

  void share_table() { alias = register_module("table_b", table_head); }
  std::shared_ptr<Embedding> alias;

 protected:
  std::shared_ptr<Module> create_like() const override {
    auto n = std::make_shared<Net>();
    if (alias) n->share_table();
    return n;
  }
};

std::vector<std::string> names(const StateDict& sd) {
  std::vector<std::string> out;
  for (auto& [k, t] : sd) out.push_back(k);
  return out;
}

TEST(Module, HierarchicalNamesInRegistrationOrder) {
  Net n;
  // As torch: a module's own parameters and buffers first, then each child's, depth first.
  std::vector<std::string> want = {"steps", "enc.0.weight", "enc.0.bias", "enc.1.weight", "norm.weight", "norm.bias",
                                   "table_a.weight"};
  EXPECT_EQ(names(n.state_dict()), want);
  std::vector<std::string> params;
  for (auto& [k, v] : n.named_parameters()) params.push_back(k);
  EXPECT_EQ(params, (std::vector<std::string>{"enc.0.weight", "enc.0.bias", "enc.1.weight", "norm.weight",
                                              "norm.bias", "table_a.weight"}));
  EXPECT_EQ(n.named_buffers().size(), 2u);
  EXPECT_EQ(n.named_buffers("", true).size(), 1u);
  EXPECT_EQ(n.num_parameters(), 12 + 3 + 6 + 2 + 2 + 10);
  EXPECT_EQ(n.find("enc.1.weight").shape(), (Shape{2, 3}));
  EXPECT_THROW(n.find("enc.1.bias"), Error);
}

TEST(Module, SharedChildListedOnceAsParameterTwiceInStateDict) {
  Net n;
  n.share_table();
  auto sd = names(n.state_dict());
  EXPECT_EQ(std::count(sd.begin(), sd.end(), "table_a.weight"), 1);
  EXPECT_EQ(std::count(sd.begin(), sd.end(), "table_b.weight"), 1);
  int tables = 0;
  for (auto& [k, v] : n.named_parameters()) tables += k.find("table") != std::string::npos;
  EXPECT_EQ(tables, 1);

  // Either name satisfies a strict load; both must agree when both are given.
  std::map<std::string, Tensor> src;
  for (auto& [k, t] : n.state_dict()) src[k] = t.clone();
  src.erase("table_b.weight");
  src["table_a.weight"] = full({5, 2}, 3.0);
  EXPECT_NO_THROW(n.load_state_dict(src));
  EXPECT_EQ(n.alias->weight.value().at({4, 1}), 3.0);
  src["table_b.weight"] = full({5, 2}, 4.0);
  EXPECT_THROW(n.load_state_dict(src), Error);
}

TEST(Module, StrictLoadNamesMissingUnexpectedAndShapes) {
  Net n;
  std::map<std::string, Tensor> src;
  for (auto& [k, t] : n.state_dict()) src[k] = full(t.shape(), 0.5);
  EXPECT_NO_THROW(n.load_state_dict(src));
  EXPECT_EQ(n.enc->find("0.weight").value().at({2, 3}), 0.5);

  auto missing = src;
  missing.erase("norm.bias");
  try {
    n.load_state_dict(missing);
    FAIL() << "a missing key must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("norm.bias"), std::string::npos) << e.what();
  }
  auto extra = src;
  extra["enc.2.weight"] = zeros({1});
  try {
    n.load_state_dict(extra);
    FAIL() << "an unexpected key must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("enc.2.weight"), std::string::npos) << e.what();
  }
  auto bad = src;
  bad["enc.0.weight"] = zeros({4, 3});
  try {
    n.load_state_dict(bad, false);
    FAIL() << "a shape mismatch must throw even when not strict";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("enc.0.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("[4, 3]"), std::string::npos) << m;
    EXPECT_NE(m.find("[3, 4]"), std::string::npos) << m;
  }
  // A failed load leaves the values untouched.
  EXPECT_EQ(n.enc->find("0.weight").value().at({2, 3}), 0.5);

  LoadResult r = n.load_state_dict(missing, false);
  EXPECT_EQ(r.missing, std::vector<std::string>{"norm.bias"});
  r = n.load_state_dict(extra, false);
  EXPECT_EQ(r.unexpected, std::vector<std::string>{"enc.2.weight"});
}

TEST(Module, FreezingAndModes) {
  Net n;
  EXPECT_EQ(n.trainable_parameters().size(), 6u);
  n.enc->set_requires_grad(false);
  EXPECT_EQ(n.trainable_parameters().size(), 3u);
  Generator gen(1);
  ag::Var y = n.forward(ag::Var(randn({2, 4}, gen)));
  ag::sum(ag::mul(y, ag::Var(randn({2, 2}, gen)))).backward();
  EXPECT_FALSE(n.enc->find("0.weight").grad().defined());
  EXPECT_TRUE(n.norm->weight.grad().defined());
  n.zero_grad();
  EXPECT_FALSE(n.norm->weight.grad().defined());

  EXPECT_TRUE(n.is_training());
  n.eval();
  EXPECT_FALSE(n.is_training());
  EXPECT_FALSE(n.enc->is_training());
  EXPECT_FALSE((*n.enc)[1]->is_training());
  n.train();
  EXPECT_TRUE((*n.enc)[1]->is_training());
}

TEST(Module, CloneIsDeepAndKeepsFlagsModesAndSharing) {
  Net n;
  n.share_table();
  Generator gen(2);
  for (auto& [k, v] : n.named_parameters()) v.value().copy_(randn(v.shape(), gen));
  n.enc->set_requires_grad(false);
  n.eval();
  auto c = clone_as(n);
  EXPECT_FALSE(c->is_training());
  EXPECT_EQ(c->trainable_parameters().size(), n.trainable_parameters().size());
  EXPECT_EQ(c->alias.get(), c->table_head.get());
  auto a = n.state_dict(), b = c->state_dict();
  ASSERT_EQ(names(a), names(b));
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_FALSE(a[i].second.shares_storage(b[i].second)) << a[i].first;
    EXPECT_EQ(a[i].second.to_vector<float>(), b[i].second.to_vector<float>()) << a[i].first;
  }
  c->norm->weight.value().fill_(9.0);
  EXPECT_NE(n.norm->weight.value().at({0}), 9.0);
  // Non-persistent buffers are copied too.
  n.scratch.value().fill_(2.0);
  EXPECT_EQ(clone_as(n)->scratch.value().at({1}), 2.0);
}

TEST(Module, RegistrationErrors) {
  EXPECT_THROW(Linear(0, 3), Error);
  Net n;
  EXPECT_NO_THROW(n.share_table());
  EXPECT_THROW(n.share_table(), Error);  // "table_b" registered twice
}

TEST(Module, RngScopeInstallsAndRestoresTheGenerator) {
  Generator a(11), b(22);
  {
    RngScope s1(a);
    EXPECT_EQ(&rng(), &a);
    {
      RngScope s2(b);
      EXPECT_EQ(&rng(), &b);
    }
    EXPECT_EQ(&rng(), &a);
  }
  EXPECT_NE(&rng(), &a);
}

}  // namespace
}  // namespace sonar::nn
