// Var bookkeeping, grad mode and the backward engine (iterative reverse topological order, Kahn's algorithm
// over consumer counts, freeing each node once it has run; optional leaf-gradient-ready callbacks). Not the ops themselves (autograd/ops.cpp).
#include "autograd/var.h"

#include <optional>
#include <unordered_map>
#include <utility>

#include "tensor/elementwise.h"
#include "tensor/profile.h"

namespace sonar::ag {

namespace {
thread_local bool g_grad_enabled = true;
thread_local const LeafGradReadyFn* g_leaf_ready = nullptr;  // innermost LeafGradReadyScope's callback

const std::shared_ptr<Node> kNoNode;

void check_grad_tensor(const Tensor& g, const Shape& expected, const std::string& op, const char* what) {
  SONAR_CHECK(g.dtype() == DType::Float32, "backward of ", op, ": ", what, " has dtype ", dtype_name(g.dtype()),
              ", expected float32");
  SONAR_CHECK(g.shape() == expected, "backward of ", op, ": ", what, " has shape ", shape_str(g.shape()),
              ", expected ", shape_str(expected));
}

// grad += g for a gradient slot the engine owns; the first contribution is stored without copying and
// marked as borrowed (it may alias a tensor some closure also returned elsewhere).
struct GradSlot {
  Tensor grad;
  bool owned = false;
  void add(const Tensor& g) {
    if (!g.defined()) return;
    if (!grad.defined()) {
      grad = g;
      owned = false;
    } else if (owned && grad.is_contiguous() && grad.shape() == g.shape()) {
      add_(grad, g);
    } else {
      grad = sonar::add(grad, g);
      owned = true;
    }
  }
};

// True when g is the only handle on its storage and covers all of it, densely: then it can become a
// variable's gradient as it is, with nobody else seeing the optimiser's in-place edits.
bool sole_owner(const Tensor& g) {
  return g.is_contiguous() && g.offset() == 0 && g.storage().use_count() == 1 && g.nbytes() == g.storage()->nbytes();
}

// v.grad += g. The first contribution becomes v.grad without a copy when the engine holds the only handle on
// it (the usual case: a gradient a backward kernel has just made); otherwise v.grad is an own contiguous copy,
// since the optimiser edits it in place. Taking it over saves a read and a write of every gradient per step
// (90 M parameters for BEATs-base: 0.7 GB of memory traffic).
void accumulate_into(VarImpl& v, Tensor g) {
  if (!g.defined()) return;
  if (!v.grad.defined()) {
    v.grad = sole_owner(g) ? std::move(g) : g.clone();
  } else {
    add_(v.grad, g);
  }
}

void run_backward(const std::shared_ptr<VarImpl>& root, const Tensor& grad_output) {
  const LeafGradReadyFn* leaf_ready = g_leaf_ready;
  if (!root->node) {  // a leaf: its gradient is grad_output itself
    accumulate_into(*root, grad_output);
    if (leaf_ready) (*leaf_ready)(*root);
    return;
  }
  GradModeGuard no_grad(false);

  // 1. Count, for every node reachable from the root, how many edges consume its outputs (and, when someone
  // listens for finished leaf gradients, how many edges feed each leaf).
  std::unordered_map<Node*, int> pending;
  std::unordered_map<VarImpl*, int> leaf_pending;
  {
    std::vector<Node*> stack{root->node.get()};
    pending[root->node.get()] = 0;
    while (!stack.empty()) {
      Node* n = stack.back();
      stack.pop_back();
      SONAR_CHECK(!n->released, "backward: the graph through op '", n->name,
                  "' was already freed by a previous backward()");
      for (const Edge& e : n->inputs) {
        if (leaf_ready && e.leaf) ++leaf_pending[e.leaf.get()];
        if (!e.node) continue;
        auto [it, inserted] = pending.try_emplace(e.node.get(), 0);
        ++it->second;
        if (inserted) stack.push_back(e.node.get());
      }
    }
  }

  // 2. Run nodes whose consumers have all contributed (reverse topological order).
  std::unordered_map<Node*, std::vector<GradSlot>> slots;
  auto slots_of = [&](Node* n) -> std::vector<GradSlot>& {
    auto& s = slots[n];
    if (s.empty()) s.resize(n->output_shapes.size());
    return s;
  };
  slots_of(root->node.get())[root->output_nr].add(grad_output);
  std::vector<std::shared_ptr<Node>> ready{root->node};
  while (!ready.empty()) {
    std::shared_ptr<Node> node = std::move(ready.back());
    ready.pop_back();
    // Profiling: this node's backward (and the hand-off of its gradients) counts in the part that recorded it.
    profile::BackwardScope timed(node->profile_part);
    std::optional<profile::Scope> timed_op;  // `sonar profile --ops`: a child of the part per op
    if (profile::enabled() && profile::backward_by_op()) timed_op.emplace(node->name.c_str());
    std::vector<GradSlot> in = std::move(slots_of(node.get()));
    slots.erase(node.get());

    bool any = false;
    std::vector<Tensor> grad_outs(in.size());
    for (size_t k = 0; k < in.size(); ++k) {
      grad_outs[k] = std::move(in[k].grad);
      if (grad_outs[k].defined()) {
        any = true;
        if (k < node->retained.size())
          if (auto keep = node->retained[k].lock()) accumulate_into(*keep, grad_outs[k]);
      }
    }
    std::vector<Tensor> grads;
    if (any) {
      for (size_t k = 0; k < grad_outs.size(); ++k)
        if (!grad_outs[k].defined()) grad_outs[k] = Tensor::empty(node->output_shapes[k]), grad_outs[k].zero_();
      grads = node->backward(grad_outs);
      SONAR_CHECK(grads.size() == node->inputs.size(), "backward of ", node->name, ": closure returned ",
                  grads.size(), " gradients for ", node->inputs.size(), " inputs");
    }
    // Free this node: its closure (and the tensors it saved) and its edges.
    std::vector<Edge> edges = std::move(node->inputs);
    node->inputs.clear();
    node->backward = nullptr;
    node->released = true;
    grad_outs.clear();

    for (size_t i = 0; i < edges.size(); ++i) {
      const Edge& e = edges[i];
      if (!e.active()) continue;
      // Moved out, so that a gradient this loop hands on is not also held by `grads`.
      Tensor g = any ? std::move(grads[i]) : Tensor();
      if (g.defined())
        check_grad_tensor(g, node->input_shapes[i], node->name, ("gradient of input " + std::to_string(i)).c_str());
      if (e.leaf) {
        accumulate_into(*e.leaf, std::move(g));
        if (leaf_ready && --leaf_pending[e.leaf.get()] == 0) (*leaf_ready)(*e.leaf);
      } else {
        slots_of(e.node.get())[e.output_nr].add(g);
        if (--pending[e.node.get()] == 0) ready.push_back(e.node);
      }
    }
  }
}
}  // namespace

// ---- grad mode ----

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = prev_; }
GradModeGuard::GradModeGuard(bool enabled) : prev_(g_grad_enabled) { g_grad_enabled = enabled; }
GradModeGuard::~GradModeGuard() { g_grad_enabled = prev_; }

LeafGradReadyScope::LeafGradReadyScope(LeafGradReadyFn on_ready) : fn_(std::move(on_ready)), prev_(g_leaf_ready) {
  g_leaf_ready = fn_ ? &fn_ : nullptr;
}
LeafGradReadyScope::~LeafGradReadyScope() { g_leaf_ready = prev_; }
bool leaf_grad_ready_active() { return g_leaf_ready != nullptr; }

bool needs_grad(const Var& v) { return g_grad_enabled && v.defined() && v.requires_grad(); }

// ---- Var ----

Var::Var(Tensor value, bool requires_grad) : impl_(std::make_shared<VarImpl>()) {
  SONAR_CHECK(value.defined(), "Var: cannot wrap an undefined Tensor");
  impl_->value = std::move(value);
  set_requires_grad(requires_grad);
}

const Tensor& Var::value() const {
  SONAR_CHECK(impl_, "Var::value: the Var is undefined");
  return impl_->value;
}
Tensor& Var::value() {
  SONAR_CHECK(impl_, "Var::value: the Var is undefined");
  return impl_->value;
}

const Tensor& Var::grad() const {
  SONAR_CHECK(impl_, "Var::grad: the Var is undefined");
  return impl_->grad;
}

void Var::set_grad(Tensor g) {
  SONAR_CHECK(impl_, "Var::set_grad: the Var is undefined");
  if (g.defined()) check_grad_tensor(g, impl_->value.shape(), "Var::set_grad", "the new gradient");
  impl_->grad = std::move(g);
}

void Var::zero_grad() {
  SONAR_CHECK(impl_, "Var::zero_grad: the Var is undefined");
  impl_->grad = Tensor();
}

bool Var::requires_grad() const { return impl_ && impl_->requires_grad; }

void Var::set_requires_grad(bool r) {
  SONAR_CHECK(impl_, "Var::set_requires_grad: the Var is undefined");
  SONAR_CHECK(!impl_->node, "Var::set_requires_grad: only leaves can change requires_grad (this Var was made by '",
              impl_->node->name, "'); use detach()");
  SONAR_CHECK(!r || impl_->value.dtype() == DType::Float32, "Var::set_requires_grad: only float32 values can require "
              "grad, this one is ", dtype_name(impl_->value.dtype()), " ", shape_str(impl_->value.shape()));
  impl_->requires_grad = r;
}

bool Var::is_leaf() const { return !impl_ || !impl_->node; }

void Var::retain_grad() {
  SONAR_CHECK(impl_, "Var::retain_grad: the Var is undefined");
  if (!impl_->node) return;  // leaves keep their gradient anyway
  auto& r = impl_->node->retained;
  if (r.size() < impl_->node->output_shapes.size()) r.resize(impl_->node->output_shapes.size());
  r[impl_->output_nr] = impl_;
}

Var Var::detach() const {
  SONAR_CHECK(impl_, "Var::detach: the Var is undefined");
  return Var(impl_->value, false);
}

void Var::backward() {
  SONAR_CHECK(impl_, "Var::backward: the Var is undefined");
  SONAR_CHECK(impl_->value.numel() == 1, "Var::backward: grad_output must be given for a non-scalar output of shape ",
              shape_str(impl_->value.shape()));
  Tensor g = Tensor::empty(impl_->value.shape());
  g.fill_(1.0);
  backward(g);
}

void Var::backward(const Tensor& grad_output) {
  SONAR_CHECK(impl_, "Var::backward: the Var is undefined");
  SONAR_CHECK(impl_->requires_grad, "Var::backward: this Var (", shape_str(impl_->value.shape()),
              ") does not require grad and has no history");
  SONAR_CHECK(grad_output.defined(), "Var::backward: grad_output is undefined");
  check_grad_tensor(grad_output, impl_->value.shape(), impl_->node ? impl_->node->name : std::string("leaf"),
                    "grad_output");
  run_backward(impl_, grad_output);
}

const std::shared_ptr<Node>& Var::grad_fn() const { return impl_ ? impl_->node : kNoNode; }

// ---- recording ----

std::vector<Var> make_results(std::vector<Tensor> values, std::vector<Var> inputs, MultiBackwardFn backward,
                              const char* name) {
  bool record = false;
  if (g_grad_enabled)
    for (const Var& v : inputs) record = record || v.requires_grad();
  std::vector<Var> outs;
  outs.reserve(values.size());
  for (Tensor& t : values) outs.emplace_back(std::move(t));
  if (!record) return outs;
  for (const Var& o : outs)
    SONAR_CHECK(o.value().dtype() == DType::Float32, name, ": a differentiable result must be float32, got ",
                dtype_name(o.value().dtype()));

  auto node = std::make_shared<Node>();
  node->name = name;
  node->inputs.resize(inputs.size());
  node->input_shapes.resize(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Var& v = inputs[i];
    if (!v.requires_grad()) continue;
    node->input_shapes[i] = v.shape();
    if (v.impl()->node) {
      node->inputs[i].node = v.impl()->node;
      node->inputs[i].output_nr = v.impl()->output_nr;
    } else {
      node->inputs[i].leaf = v.impl();
    }
  }
  for (const Var& o : outs) node->output_shapes.push_back(o.shape());
  node->backward = std::move(backward);
  node->profile_part = profile::current_part();
  for (size_t k = 0; k < outs.size(); ++k) {
    outs[k].impl_->node = node;
    outs[k].impl_->output_nr = static_cast<int>(k);
    outs[k].impl_->requires_grad = true;
  }
  return outs;
}

Var make_result(Tensor value, std::vector<Var> inputs, BackwardFn backward, const char* name) {
  std::vector<Tensor> values;
  values.push_back(std::move(value));
  MultiBackwardFn multi;
  if (backward) multi = [fn = std::move(backward)](const std::vector<Tensor>& g) { return fn(g[0]); };
  return std::move(make_results(std::move(values), std::move(inputs), std::move(multi), name)[0]);
}

}  // namespace sonar::ag
