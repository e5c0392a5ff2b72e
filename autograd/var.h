// Var and the reverse-mode engine: a Var is a shared handle to a Tensor value, its gradient and the Node that
// produced it. backward() walks the recorded graph iteratively in reverse topological order, accumulates
// gradients into leaves (and into Vars that asked for retain_grad()), and frees the graph as it goes.
// This file is not the differentiable ops (autograd/ops.h), losses (autograd/loss.h) or optimisers.
//
// Semantics (PyTorch-like):
//  - Copies of a Var alias the same value, gradient and node.
//  - A leaf is a Var not produced by an op; only float32 leaves can require grad.
//  - Gradients accumulate (+=) into leaves; Var::zero_grad() and Optimizer::zero_grad() reset them to
//    "no gradient" (undefined Tensor, PyTorch's set_to_none=True), so a parameter no loss reached has no grad.
//  - backward() frees every node it runs (closures and their saved tensors are dropped); a second backward
//    through the same graph throws. Backward closures run with grad recording disabled (no double backward).
//  - Backward closures must capture Tensors and scalars only, never Vars (that would keep the graph alive).
//  - Editing an input's value in place between forward and backward gives wrong gradients (no version check).
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace sonar::ag {

struct Node;
struct VarImpl;

// Backward closure of a single-output op: given dL/d(output), returns one gradient per input, in input order
// (an undefined Tensor means "no gradient for this input"). Each gradient must have its input's shape.
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out)>;
// Backward closure of a multi-output op: one grad per output (outputs that received no gradient are passed
// as zeros of their shape), returns one gradient per input.
using MultiBackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outs)>;

// Where one input's gradient goes: to the node that produced it (non-leaf) or to a leaf that requires grad.
struct Edge {
  std::shared_ptr<Node> node;     // producer of a non-leaf input
  int output_nr = 0;              // which output of `node`
  std::shared_ptr<VarImpl> leaf;  // a leaf input with requires_grad
  bool active() const { return node != nullptr || leaf != nullptr; }
};

// One recorded op: its input edges, the shapes needed to check gradients, and the backward closure.
struct Node {
  std::string name;                 // op name for error messages ("matmul", "layer_norm", ...)
  std::vector<Edge> inputs;         // one per op input; inactive edges for inputs without grad
  std::vector<Shape> input_shapes;  // shape each input gradient must have
  std::vector<Shape> output_shapes;
  MultiBackwardFn backward;
  std::vector<std::weak_ptr<VarImpl>> retained;  // per output: Var that called retain_grad(), if any
  bool released = false;                         // true once backward() ran (and freed) this node
  int profile_part = -1;  // tensor/profile.h: the scope open when it was recorded (only while profiling)
};

struct VarImpl {
  Tensor value;
  Tensor grad;
  bool requires_grad = false;
  std::shared_ptr<Node> node;  // null for leaves
  int output_nr = 0;
};

class Var {
 public:
  Var() = default;  // undefined
  explicit Var(Tensor value, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& value() const;
  Tensor& value();  // in-place edits (optimiser steps, loading weights) go through here
  const Tensor& grad() const;  // undefined until backward reaches this Var
  void set_grad(Tensor g);     // g must be float32 with value()'s shape, or undefined
  void zero_grad();            // resets the gradient to undefined (set_to_none semantics)
  bool requires_grad() const;
  void set_requires_grad(bool r);  // leaves only
  bool is_leaf() const;            // not produced by a recorded op
  void retain_grad();              // a non-leaf keeps its gradient in grad() after backward

  const Shape& shape() const { return value().shape(); }
  int64_t size(int64_t d) const { return value().size(d); }
  int64_t dim() const { return value().dim(); }
  int64_t numel() const { return value().numel(); }
  float item() const { return value().item<float>(); }

  // A new leaf sharing this value's storage, with no history and requires_grad = false.
  Var detach() const;

  // Backward from a one-element output (gradient 1) or from any output with an explicit grad_output of
  // exactly its shape.
  void backward();
  void backward(const Tensor& grad_output);

  // The node that produced this Var (null for leaves). For tests and debugging.
  const std::shared_ptr<Node>& grad_fn() const;
  const std::shared_ptr<VarImpl>& impl() const { return impl_; }
  bool same(const Var& other) const { return impl_ == other.impl_; }

 private:
  friend std::vector<Var> make_results(std::vector<Tensor> values, std::vector<Var> inputs,
                                       MultiBackwardFn backward, const char* name);
  std::shared_ptr<VarImpl> impl_;
};

// Grad mode (thread-local). While a NoGradGuard is alive, ops record nothing and return leaves.
bool grad_enabled();
struct NoGradGuard {
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};
// Sets grad mode to `enabled` for its lifetime (e.g. re-enable inside a NoGradGuard).
struct GradModeGuard {
  explicit GradModeGuard(bool enabled);
  ~GradModeGuard();
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool prev_;
};

// Leaf-gradient readiness, for work that overlaps the backward pass (data-parallel gradient sums,
// sonar/distributed.h). While a LeafGradReadyScope is alive on this thread, backward() calls `on_ready(leaf)`
// once per leaf that requires grad and is reached by the graph, right after the last contribution of that
// backward was accumulated into leaf.grad (so leaf.grad is final for this backward; it stays undefined when every
// contribution was). The callback may read or replace leaf.grad. Without a scope, backward counts nothing and
// calls nothing. Scopes nest (the innermost wins); not a per-Var hook and not PyTorch's tensor hooks.
using LeafGradReadyFn = std::function<void(VarImpl& leaf)>;
struct LeafGradReadyScope {
  explicit LeafGradReadyScope(LeafGradReadyFn on_ready);
  ~LeafGradReadyScope();
  LeafGradReadyScope(const LeafGradReadyScope&) = delete;
  LeafGradReadyScope& operator=(const LeafGradReadyScope&) = delete;

 private:
  LeafGradReadyFn fn_;
  const LeafGradReadyFn* prev_;
};

// True while a LeafGradReadyScope is alive on this thread (someone already listens for finished leaves).
bool leaf_grad_ready_active();

// True when an op taking `v` should compute a gradient for it (grad mode on, v defined and requiring grad).
bool needs_grad(const Var& v);

// Wraps a kernel result as a Var. Records a node (inputs + closure) only when grad mode is on and some input
// requires grad; otherwise returns a plain leaf and drops the closure. Undefined inputs are allowed (optional
// arguments such as a missing bias) and get no gradient. `name` appears in error messages.
Var make_result(Tensor value, std::vector<Var> inputs, BackwardFn backward, const char* name = "op");
// Multi-output variant: all outputs share one node; the closure gets one gradient per output.
std::vector<Var> make_results(std::vector<Tensor> values, std::vector<Var> inputs, MultiBackwardFn backward,
                              const char* name = "op");

}  // namespace sonar::ag
