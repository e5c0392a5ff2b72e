// Module: the base of every layer and model, with PyTorch-style hierarchical names
// ("encoder.layers.3.self_attn.q_proj.weight"), train/eval mode, parameter and buffer iteration, freezing,
// deep copies (frozen teachers, EMA copies) and state-dict save/load that is strict by default.
//
// Parameters are ag::Var leaves and buffers are ag::Var holders with requires_grad off; both are shared
// handles, so a layer keeps its own handle as a member (`weight`) while the registry keeps another, and
// replacing a value through either (`weight.value() = bigger`, e.g. a codebook growing) is seen by both.
// A child module may be registered under two parents (PyTorch's shared submodules, e.g. BEATs' relative
// position bias table): named_parameters() lists it once (first name), state_dict() under every name.
//
// Not here: the layers themselves (nn/layers.h), initialisers (nn/init.h), file formats (nn/checkpoint.h).
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/var.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

namespace sonar::nn {

using NamedVar = std::pair<std::string, ag::Var>;
using NamedTensor = std::pair<std::string, Tensor>;
// An ordered state dict: names to tensors that alias the module's storage (no copies).
using StateDict = std::vector<NamedTensor>;

// What a non-strict load found (a strict load throws instead of returning any of these).
struct LoadResult {
  std::vector<std::string> missing;     // module entries the source did not provide
  std::vector<std::string> unexpected;  // source entries the module does not have
};

class Module : public std::enable_shared_from_this<Module> {
 public:
  explicit Module(std::string type_name) : type_name_(std::move(type_name)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  const std::string& type_name() const { return type_name_; }

  // ---- structure ----
  // Direct children in registration order.
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }
  // This module ("" or prefix) and every descendant, depth first, each module once.
  std::vector<std::pair<std::string, std::shared_ptr<const Module>>> named_modules(const std::string& prefix = "") const;
  // Parameters of this module and its descendants, each Var once (first name wins), registration order.
  std::vector<NamedVar> named_parameters(const std::string& prefix = "") const;
  std::vector<ag::Var> parameters() const;
  // Parameters with requires_grad on (what an optimiser should get).
  std::vector<ag::Var> trainable_parameters() const;
  std::vector<NamedVar> named_buffers(const std::string& prefix = "", bool persistent_only = false) const;
  // Number of parameter elements (shared parameters once).
  int64_t num_parameters() const;
  // The parameter or buffer with this dotted name; throws naming it when absent.
  ag::Var find(const std::string& name) const;

  // ---- mode ----
  // Sets training mode on this module and every descendant.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Freezing: requires_grad of every parameter below this module.
  void set_requires_grad(bool on);
  // Resets every parameter's gradient to undefined.
  void zero_grad();

  // ---- state ----
  // Parameters then persistent buffers of each module, depth first in registration order, under every
  // name a shared child is reachable by (as torch's state_dict()).
  StateDict state_dict(const std::string& prefix = "") const;
  // Copies the source tensors into this module's parameters and buffers (converted to their dtype).
  // Strict (default): a missing or unexpected key, or a shape mismatch, throws sonar::Error naming the key and
  // both shapes. A tensor registered under several names (a shared child) is satisfied by any of them; when
  // several are given they must hold equal values. Shape mismatches throw even when not strict.
  LoadResult load_state_dict(const std::map<std::string, Tensor>& source, bool strict = true);
  LoadResult load_state_dict(const StateDict& source, bool strict = true);

  // A deep copy: same type, structure and hyperparameters, with every parameter and buffer copied
  // (not shared), the same requires_grad flags and the same training mode. Shared children stay shared
  // inside the copy.
  std::shared_ptr<Module> clone() const;
  // Copies values (deep), requires_grad flags and training mode from a module of identical structure.
  void copy_state_from(const Module& other);

 protected:
  // A new module of the same type and hyperparameters (parameter values unspecified); clone() fills it.
  virtual std::shared_ptr<Module> create_like() const = 0;

  // Registration (names must be unique within the module and contain no '.').
  ag::Var register_parameter(const std::string& name, Tensor value, bool requires_grad = true);
  // A buffer is a tensor that is state but not trained (running statistics, EMA codebooks).
  // Non-persistent buffers are left out of state_dict().
  ag::Var register_buffer(const std::string& name, Tensor value, bool persistent = true);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> child) {
    add_child(name, child);
    return child;
  }
  // Replaces a registered child by another (same name), e.g. to share a table with another module.
  void replace_module(const std::string& name, std::shared_ptr<Module> child);

  // Called by train(); modules with state that depends on the mode may override.
  virtual void on_train(bool on) {}
  // Called on every module before load_state_dict copies anything, with this module's key prefix
  // ("encoder.layers.0." or ""): a module whose shapes may legitimately change (a codebook that grew) resizes
  // itself here to what the source holds. The default does nothing.
  virtual void before_load(const std::string& prefix, const std::map<std::string, Tensor>& source) {}

 private:
  struct Entry {
    std::string name;
    ag::Var var;
    bool persistent = true;
  };
  void add_child(const std::string& name, std::shared_ptr<Module> child);
  void check_new_name(const std::string& name) const;
  void collect_state(const std::string& prefix, StateDict& out) const;
  // (name, Var) of every parameter and buffer under every name it is reachable by, state-dict order.
  std::vector<NamedVar> state_entries(bool persistent_only) const;

  std::string type_name_;
  bool training_ = true;
  std::vector<Entry> params_;
  std::vector<Entry> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

// Typed deep copy: clone_as<Linear>(*layer).
template <class M>
std::shared_ptr<M> clone_as(const M& m) {
  auto c = std::dynamic_pointer_cast<M>(m.clone());
  SONAR_CHECK(c != nullptr, "clone_as: ", m.type_name(), " cloned to a different type");
  return c;
}

// Random numbers for modules that draw them in forward passes (dropout, layer drop, masking). Training code
// installs its Generator for the duration of a step with RngScope (so the generator's state can be saved
// with a checkpoint); without one, a process-wide generator seeded with 0 is used. Thread-local.
Generator& rng();
class RngScope {
 public:
  explicit RngScope(Generator& gen);
  ~RngScope();
  RngScope(const RngScope&) = delete;
  RngScope& operator=(const RngScope&) = delete;

 private:
  Generator* prev_;
};

}  // namespace sonar::nn
