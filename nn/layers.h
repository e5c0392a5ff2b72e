// The layers BEATs and its training need, as Modules with PyTorch's parameter names and default
// initialisation: Linear, Conv1d (groups, padding, optional weight normalisation with weight_g/weight_v),
// Conv2d, LayerNorm, Embedding, Dropout, GELU, Tanh, and the containers Sequential and ModuleList.
// Constructors given a Generator initialise like PyTorch's reset_parameters(); without one, weights are zero
// (biases zero, norms one): the fast path for modules about to be loaded from a checkpoint.
// Not here: the BEATs blocks (nn/beats/), losses (autograd/loss.h).
#pragma once
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "nn/module.h"

namespace sonar::nn {

// A module with one tensor in and one out: what Sequential chains.
class UnaryModule : public Module {
 public:
  using Module::Module;
  virtual ag::Var forward(const ag::Var& x) = 0;
  ag::Var operator()(const ag::Var& x) { return forward(x); }
};

// y = x W^T + b over the last dim. weight [out, in], bias [out].
class Linear : public UnaryModule {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, Generator* gen = nullptr);
  ag::Var forward(const ag::Var& x) override;
  // PyTorch's default: kaiming_uniform(a = sqrt(5)) weights, U(+-1/sqrt(fan_in)) bias.
  void reset_parameters(Generator& gen);

  const int64_t in_features, out_features;
  ag::Var weight, bias;  // bias undefined when built without

 protected:
  std::shared_ptr<Module> create_like() const override;
};

struct Conv1dOptions {
  int64_t in_channels = 1, out_channels = 1, kernel_size = 1;
  int64_t stride = 1, padding = 0, groups = 1;
  bool bias = true;
  // >= 0: weight normalisation over every dim except this one (torch.nn.utils.weight_norm(dim=...)):
  // parameters weight_g (size 1 except along `dim`) and weight_v replace weight; weight = g * v / ||v||.
  int weight_norm_dim = -1;
};

// x [B, C_in, L] -> [B, C_out, L_out]; weight [C_out, C_in / groups, K].
class Conv1d : public UnaryModule {
 public:
  explicit Conv1d(const Conv1dOptions& o, Generator* gen = nullptr);
  ag::Var forward(const ag::Var& x) override;
  // The effective weight (computed from weight_g and weight_v under weight normalisation).
  ag::Var effective_weight() const;
  void reset_parameters(Generator& gen);

  const Conv1dOptions options;
  ag::Var weight;              // without weight normalisation
  ag::Var weight_g, weight_v;  // with weight normalisation
  ag::Var bias;

 protected:
  std::shared_ptr<Module> create_like() const override;
};

struct Conv2dOptions {
  int64_t in_channels = 1, out_channels = 1;
  std::array<int64_t, 2> kernel_size{1, 1};
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> padding{0, 0};
  int64_t groups = 1;
  bool bias = true;
};

// x [B, C_in, H, W] -> [B, C_out, H_out, W_out]; weight [C_out, C_in / groups, KH, KW].
class Conv2d : public UnaryModule {
 public:
  explicit Conv2d(const Conv2dOptions& o, Generator* gen = nullptr);
  ag::Var forward(const ag::Var& x) override;
  void reset_parameters(Generator& gen);

  const Conv2dOptions options;
  ag::Var weight, bias;

 protected:
  std::shared_ptr<Module> create_like() const override;
};

// Normalises the last dim (biased variance, eps inside the square root); weight [C] = 1, bias [C] = 0.
class LayerNorm : public UnaryModule {
 public:
  explicit LayerNorm(int64_t dim, float eps = 1e-5f, bool affine = true);
  ag::Var forward(const ag::Var& x) override;

  const int64_t dim;
  const float eps;
  ag::Var weight, bias;  // undefined without affine

 protected:
  std::shared_ptr<Module> create_like() const override;
};

// A lookup table weight [num, dim]; forward(indices int64 any shape) -> [..., dim]. Default init N(0, 1).
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, Generator* gen = nullptr);
  ag::Var forward(const Tensor& indices) const;

  const int64_t num_embeddings, embedding_dim;
  ag::Var weight;

 protected:
  std::shared_ptr<Module> create_like() const override;
};

// Inverted dropout in training mode (draws from nn::rng()), identity in eval mode or with p = 0.
class Dropout : public UnaryModule {
 public:
  explicit Dropout(float p = 0.5f);
  ag::Var forward(const ag::Var& x) override;
  const float p;

 protected:
  std::shared_ptr<Module> create_like() const override;
};

// Exact (erf) GELU.
class GELU : public UnaryModule {
 public:
  GELU() : UnaryModule("GELU") {}
  ag::Var forward(const ag::Var& x) override { return ag::gelu(x); }

 protected:
  std::shared_ptr<Module> create_like() const override { return std::make_shared<GELU>(); }
};

class Tanh : public UnaryModule {
 public:
  Tanh() : UnaryModule("Tanh") {}
  ag::Var forward(const ag::Var& x) override { return ag::tanh(x); }

 protected:
  std::shared_ptr<Module> create_like() const override { return std::make_shared<Tanh>(); }
};

// Children named "0", "1", ...: torch.nn.ModuleList.
class ModuleList : public Module {
 public:
  ModuleList() : Module("ModuleList") {}
  void push_back(std::shared_ptr<Module> m);
  size_t size() const { return children().size(); }
  const std::shared_ptr<Module>& operator[](size_t i) const;
  template <class M>
  std::shared_ptr<M> at(size_t i) const {
    auto p = std::dynamic_pointer_cast<M>((*this)[i]);
    SONAR_CHECK(p != nullptr, "ModuleList: element ", i, " is a ", (*this)[i]->type_name());
    return p;
  }

 protected:
  std::shared_ptr<Module> create_like() const override;
};

// Unary modules applied in order, children named "0", "1", ...: torch.nn.Sequential.
class Sequential : public UnaryModule {
 public:
  Sequential() : UnaryModule("Sequential") {}
  explicit Sequential(std::vector<std::shared_ptr<UnaryModule>> layers);
  void push_back(std::shared_ptr<UnaryModule> m);
  ag::Var forward(const ag::Var& x) override;
  size_t size() const { return layers_.size(); }
  const std::shared_ptr<UnaryModule>& operator[](size_t i) const;

 protected:
  std::shared_ptr<Module> create_like() const override;

 private:
  std::vector<std::shared_ptr<UnaryModule>> layers_;
};

}  // namespace sonar::nn
