// Module registry, traversal, mode, freezing, strict state-dict loading and deep copies (see nn/module.h).
#include "nn/module.h"

#include <cstring>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace sonar::nn {

// ---- registration ----

void Module::check_new_name(const std::string& name) const {
  SONAR_CHECK(!name.empty() && name.find('.') == std::string::npos, type_name_, ": invalid name '", name,
              "' (must be non-empty and contain no '.')");
  for (const auto& e : params_) SONAR_CHECK(e.name != name, type_name_, ": '", name, "' registered twice");
  for (const auto& e : buffers_) SONAR_CHECK(e.name != name, type_name_, ": '", name, "' registered twice");
  for (const auto& c : children_) SONAR_CHECK(c.first != name, type_name_, ": '", name, "' registered twice");
}

ag::Var Module::register_parameter(const std::string& name, Tensor value, bool requires_grad) {
  check_new_name(name);
  SONAR_CHECK(value.defined() && value.dtype() == DType::Float32, type_name_, ": parameter '", name,
              "' must be a float32 tensor");
  ag::Var v(std::move(value), requires_grad);
  params_.push_back({name, v, true});
  return v;
}

ag::Var Module::register_buffer(const std::string& name, Tensor value, bool persistent) {
  check_new_name(name);
  SONAR_CHECK(value.defined(), type_name_, ": buffer '", name, "' must be defined");
  ag::Var v(std::move(value), false);
  buffers_.push_back({name, v, persistent});
  return v;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> child) {
  check_new_name(name);
  SONAR_CHECK(child != nullptr, type_name_, ": child '", name, "' is null");
  children_.emplace_back(name, std::move(child));
}

void Module::replace_module(const std::string& name, std::shared_ptr<Module> child) {
  SONAR_CHECK(child != nullptr, type_name_, ": replacement for '", name, "' is null");
  for (auto& c : children_) {
    if (c.first == name) {
      c.second = std::move(child);
      return;
    }
  }
  SONAR_FAIL(type_name_, ": no child '", name, "' to replace");
}

// ---- traversal ----

namespace {
std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}
}  // namespace

std::vector<std::pair<std::string, std::shared_ptr<const Module>>> Module::named_modules(
    const std::string& prefix) const {
  std::vector<std::pair<std::string, std::shared_ptr<const Module>>> out;
  std::unordered_set<const Module*> seen;
  // Iterative depth-first walk in registration order (a stack of (name, module) in reverse order).
  std::vector<std::pair<std::string, const Module*>> stack{{prefix, this}};
  while (!stack.empty()) {
    auto [name, m] = stack.back();
    stack.pop_back();
    if (!seen.insert(m).second) continue;
    std::shared_ptr<const Module> handle;
    if (m == this) {
      // The root may not be owned by a shared_ptr (e.g. on the stack); alias without ownership then.
      handle = std::shared_ptr<const Module>(std::shared_ptr<const Module>(), m);
    } else {
      handle = m->shared_from_this();
    }
    out.emplace_back(name, handle);
    for (auto it = m->children_.rbegin(); it != m->children_.rend(); ++it)
      stack.emplace_back(join(name, it->first), it->second.get());
  }
  return out;
}

std::vector<NamedVar> Module::named_parameters(const std::string& prefix) const {
  std::vector<NamedVar> out;
  std::unordered_set<const void*> seen;
  for (const auto& [name, m] : named_modules(prefix))
    for (const auto& e : m->params_)
      if (seen.insert(e.var.impl().get()).second) out.emplace_back(join(name, e.name), e.var);
  return out;
}

std::vector<ag::Var> Module::parameters() const {
  std::vector<ag::Var> out;
  for (auto& nv : named_parameters()) out.push_back(nv.second);
  return out;
}

std::vector<ag::Var> Module::trainable_parameters() const {
  std::vector<ag::Var> out;
  for (auto& nv : named_parameters())
    if (nv.second.requires_grad()) out.push_back(nv.second);
  return out;
}

std::vector<NamedVar> Module::named_buffers(const std::string& prefix, bool persistent_only) const {
  std::vector<NamedVar> out;
  std::unordered_set<const void*> seen;
  for (const auto& [name, m] : named_modules(prefix))
    for (const auto& e : m->buffers_)
      if ((!persistent_only || e.persistent) && seen.insert(e.var.impl().get()).second)
        out.emplace_back(join(name, e.name), e.var);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& nv : named_parameters()) n += nv.second.numel();
  return n;
}

ag::Var Module::find(const std::string& name) const {
  for (const auto& [n, v] : state_entries(false))
    if (n == name) return v;
  SONAR_FAIL(type_name_, ": no parameter or buffer named '", name, "'");
}

std::vector<NamedVar> Module::state_entries(bool persistent_only) const {
  std::vector<NamedVar> entries;
  std::vector<std::pair<std::string, const Module*>> stack{{"", this}};
  while (!stack.empty()) {
    auto [prefix, m] = stack.back();
    stack.pop_back();
    for (const auto& e : m->params_) entries.emplace_back(join(prefix, e.name), e.var);
    for (const auto& e : m->buffers_)
      if (e.persistent || !persistent_only) entries.emplace_back(join(prefix, e.name), e.var);
    for (auto it = m->children_.rbegin(); it != m->children_.rend(); ++it)
      stack.emplace_back(join(prefix, it->first), it->second.get());
  }
  return entries;
}

// ---- mode and freezing ----

void Module::train(bool on) {
  for (const auto& [name, m] : named_modules()) {
    (void)name;
    Module* mm = const_cast<Module*>(m.get());
    mm->training_ = on;
    mm->on_train(on);
  }
}

void Module::set_requires_grad(bool on) {
  for (auto& nv : named_parameters()) nv.second.set_requires_grad(on);
}

void Module::zero_grad() {
  for (auto& nv : named_parameters()) nv.second.zero_grad();
}

// ---- state dict ----

void Module::collect_state(const std::string& prefix, StateDict& out) const {
  for (const auto& e : params_) out.emplace_back(join(prefix, e.name), e.var.value());
  for (const auto& e : buffers_)
    if (e.persistent) out.emplace_back(join(prefix, e.name), e.var.value());
  for (const auto& [name, child] : children_) child->collect_state(join(prefix, name), out);
}

StateDict Module::state_dict(const std::string& prefix) const {
  StateDict out;
  collect_state(prefix, out);
  return out;
}

namespace {

bool same_values(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  Tensor ca = a.contiguous(), cb = b.to(a.dtype()).contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0;
}

}  // namespace

LoadResult Module::load_state_dict(const StateDict& source, bool strict) {
  std::map<std::string, Tensor> m;
  for (const auto& [k, t] : source) {
    SONAR_CHECK(!m.count(k), "load_state_dict: key '", k, "' given twice");
    m.emplace(k, t);
  }
  return load_state_dict(m, strict);
}

LoadResult Module::load_state_dict(const std::map<std::string, Tensor>& source, bool strict) {
  // Let modules resize themselves first (every module under every name it is reachable by).
  std::vector<std::pair<std::string, Module*>> walk{{"", this}};
  while (!walk.empty()) {
    auto [prefix, m] = walk.back();
    walk.pop_back();
    m->before_load(prefix.empty() ? "" : prefix + ".", source);
    for (auto it = m->children_.rbegin(); it != m->children_.rend(); ++it)
      walk.emplace_back(join(prefix, it->first), it->second.get());
  }
  // Name -> Var for every state entry (shared entries appear under several names).
  const std::vector<NamedVar> entries = state_entries(true);

  LoadResult result;
  std::set<std::string> known;
  for (const auto& [name, var] : entries) known.insert(name);
  for (const auto& [key, t] : source)
    if (!known.count(key)) result.unexpected.push_back(key);

  // Check every shape before copying anything, so a failed load leaves the module untouched.
  for (const auto& [name, var] : entries) {
    auto it = source.find(name);
    if (it == source.end()) continue;
    SONAR_CHECK(it->second.defined(), "load_state_dict: '", name, "' is an undefined tensor");
    SONAR_CHECK(it->second.shape() == var.value().shape(), "load_state_dict: shape mismatch for '", name,
                "': the checkpoint has ", shape_str(it->second.shape()), ", the model expects ",
                shape_str(var.value().shape()));
  }
  // Shared entries given under several names must agree.
  std::unordered_map<const void*, std::string> loaded_from;
  for (const auto& [name, var] : entries) {
    auto it = source.find(name);
    if (it == source.end()) continue;
    auto [pos, fresh] = loaded_from.emplace(var.impl().get(), name);
    if (!fresh) {
      SONAR_CHECK(same_values(source.at(pos->second), it->second), "load_state_dict: '", name, "' and '",
                  pos->second, "' are one shared tensor in the model but hold different values in the checkpoint");
    }
  }
  for (const auto& [name, var] : entries)
    if (!loaded_from.count(var.impl().get())) result.missing.push_back(name);

  if (strict && (!result.missing.empty() || !result.unexpected.empty())) {
    std::string msg = "load_state_dict (strict): ";
    if (!result.missing.empty()) {
      msg += std::to_string(result.missing.size()) + " missing key(s):";
      for (size_t i = 0; i < result.missing.size() && i < 8; ++i) msg += " '" + result.missing[i] + "'";
      if (result.missing.size() > 8) msg += " ...";
    }
    if (!result.unexpected.empty()) {
      if (!result.missing.empty()) msg += "; ";
      msg += std::to_string(result.unexpected.size()) + " unexpected key(s):";
      for (size_t i = 0; i < result.unexpected.size() && i < 8; ++i) msg += " '" + result.unexpected[i] + "'";
      if (result.unexpected.size() > 8) msg += " ...";
    }
    SONAR_FAIL(msg);
  }
  for (const auto& [name, var] : entries) {
    auto it = source.find(name);
    if (it == source.end() || loaded_from.at(var.impl().get()) != name) continue;
    ag::Var v = var;
    v.value().copy_(it->second);
  }
  return result;
}

// ---- copies ----

void Module::copy_state_from(const Module& other) {
  auto mine = named_modules(), theirs = other.named_modules();
  SONAR_CHECK(mine.size() == theirs.size(), "copy_state_from: ", type_name_, " has ", mine.size(),
              " modules, the source ", theirs.size());
  for (size_t i = 0; i < mine.size(); ++i) {
    Module* dst = const_cast<Module*>(mine[i].second.get());
    const Module* src = theirs[i].second.get();
    SONAR_CHECK(mine[i].first == theirs[i].first && dst->type_name_ == src->type_name_,
                "copy_state_from: structure differs at '", mine[i].first, "' (", dst->type_name_, " vs ",
                src->type_name_, ")");
    SONAR_CHECK(dst->params_.size() == src->params_.size() && dst->buffers_.size() == src->buffers_.size(),
                "copy_state_from: '", mine[i].first, "' has different parameters or buffers");
    for (size_t j = 0; j < dst->params_.size(); ++j) {
      ag::Var d = dst->params_[j].var;
      const ag::Var& s = src->params_[j].var;
      d.value() = s.value().clone();
      d.set_requires_grad(s.requires_grad());
    }
    for (size_t j = 0; j < dst->buffers_.size(); ++j) {
      ag::Var d = dst->buffers_[j].var;
      d.value() = src->buffers_[j].var.value().clone();
    }
    dst->training_ = src->training_;
  }
}

std::shared_ptr<Module> Module::clone() const {
  std::shared_ptr<Module> m = create_like();
  SONAR_CHECK(m != nullptr && m->type_name_ == type_name_, "clone: ", type_name_, "::create_like returned ",
              m ? m->type_name_ : std::string("null"));
  m->copy_state_from(*this);
  return m;
}

// ---- random numbers ----

namespace {
thread_local Generator* g_current = nullptr;
}  // namespace

Generator& rng() {
  if (g_current) return *g_current;
  static thread_local Generator fallback(0);
  return fallback;
}

RngScope::RngScope(Generator& gen) : prev_(g_current) { g_current = &gen; }
RngScope::~RngScope() { g_current = prev_; }

}  // namespace sonar::nn
