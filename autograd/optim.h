// Optimisers over Var parameters with PyTorch semantics: SGD (momentum, dampening, Nesterov, L2 weight decay)
// and AdamW (decoupled weight decay, bias correction), parameter groups with their own learning-rate scale and
// weight decay, gradient-norm clipping, and state save/restore as named tensors plus scalars (a training
// checkpoint can store them in safetensors). Not the learning-rate schedule (autograd/schedule.h).
//
// Behaviour notes:
//  - A parameter whose grad() is undefined when step() runs is skipped entirely, like PyTorch: no weight decay,
//    no moment update, its step count does not advance. zero_grad() resets gradients to undefined.
//  - The effective learning rate of a group is lr() * group.lr_scale; schedules call set_lr() every step.
//  - Parameter values must be contiguous float32 (they are updated in place through Var::value()).
//  - State keys use the parameter's index in group order ("param.3.exp_avg"), so restore into an optimiser
//    built over the same parameters in the same order.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "autograd/var.h"

namespace sonar::ag {

struct ParamGroup {
  ParamGroup() = default;
  ParamGroup(std::vector<Var> p, float scale = 1.0f, std::optional<float> wd = std::nullopt)
      : params(std::move(p)), lr_scale(scale), weight_decay(wd) {}
  std::vector<Var> params;
  float lr_scale = 1.0f;                // this group's lr = optimiser lr * lr_scale
  std::optional<float> weight_decay;    // unset: the optimiser's default (e.g. 0 for biases and norms)
};

struct OptimizerState {
  std::map<std::string, Tensor> tensors;  // per-parameter buffers: "param.<i>.<buffer>"
  std::map<std::string, double> scalars;  // "lr", "param.<i>.step", ...
};

class Optimizer {
 public:
  Optimizer(std::vector<ParamGroup> groups, float lr, float weight_decay, const char* name);
  virtual ~Optimizer() = default;

  virtual void step() = 0;
  void zero_grad();  // every parameter's gradient back to undefined

  float lr() const { return lr_; }
  void set_lr(float lr);
  float default_weight_decay() const { return weight_decay_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  std::vector<Var> params() const;  // all parameters in group order (the index used in state keys)
  int64_t num_params() const { return static_cast<int64_t>(flat_.size()); }

  virtual OptimizerState save_state() const;
  // Replaces the state; throws naming the key on unknown keys, indices out of range or shape mismatches.
  virtual void load_state(const OptimizerState& state);

 protected:
  struct Slot {
    Var param;
    float lr_scale;
    float weight_decay;
  };
  // Names of the per-parameter buffers this optimiser keeps ("exp_avg", ...), for save/load.
  virtual std::vector<std::string> buffer_names() const = 0;
  // Per-parameter buffers and step counts, indexed like flat_.
  std::vector<std::map<std::string, Tensor>> buffers_;
  std::vector<int64_t> steps_;
  std::vector<Slot> flat_;
  std::string name_;
  // Checks the parameter's value and gradient before an update; returns the contiguous gradient.
  Tensor checked_grad(size_t i) const;

 private:
  std::vector<ParamGroup> groups_;
  float lr_;
  float weight_decay_;
};

struct SGDOptions {
  float lr = 1e-2f;
  float momentum = 0.0f;
  float dampening = 0.0f;
  float weight_decay = 0.0f;  // L2: added to the gradient (g += wd * p)
  bool nesterov = false;
};

// buf = momentum * buf + (1 - dampening) * g (buf = g on a parameter's first step); p -= lr * buf
// (or lr * (g + momentum * buf) with Nesterov). Buffer: "momentum_buffer".
class SGD : public Optimizer {
 public:
  SGD(std::vector<Var> params, const SGDOptions& opt);
  SGD(std::vector<ParamGroup> groups, const SGDOptions& opt);
  void step() override;

 protected:
  std::vector<std::string> buffer_names() const override { return {"momentum_buffer"}; }

 private:
  SGDOptions opt_;
};

struct AdamWOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 1e-2f;  // decoupled: p -= lr * wd * p before the Adam update
};

// t += 1; p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps). Buffers: "exp_avg", "exp_avg_sq".
class AdamW : public Optimizer {
 public:
  AdamW(std::vector<Var> params, const AdamWOptions& opt);
  AdamW(std::vector<ParamGroup> groups, const AdamWOptions& opt);
  void step() override;
  const AdamWOptions& options() const { return opt_; }

 protected:
  std::vector<std::string> buffer_names() const override { return {"exp_avg", "exp_avg_sq"}; }

 private:
  AdamWOptions opt_;
};

// Scales every defined gradient by max_norm / (total_norm + 1e-6) when that is below 1, where total_norm is
// the L2 norm of all gradients together (computed in double). Returns total_norm before clipping.
// Parameters without a gradient are ignored.
float clip_grad_norm(const std::vector<Var>& params, float max_norm);

}  // namespace sonar::ag
