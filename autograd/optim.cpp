// SGD and AdamW steps (OpenMP loops over each parameter's elements), state save/restore and gradient
// clipping. See optim.h for the semantics. Not the learning-rate schedule (schedule.cpp).
#include "autograd/optim.h"

#include <cmath>
#include <set>

#include "tensor/creation.h"
#include "tensor/elementwise.h"

namespace sonar::ag {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // elements below which a parameter update runs on one thread
constexpr double kClipEps = 1e-6;          // PyTorch's clip_grad_norm_ denominator guard

// Parses "param.<i>.<rest>"; returns false if the key has another form.
bool parse_key(const std::string& key, int64_t& index, std::string& rest) {
  const std::string prefix = "param.";
  if (key.compare(0, prefix.size(), prefix) != 0) return false;
  const size_t dot = key.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return false;
  const std::string num = key.substr(prefix.size(), dot - prefix.size());
  for (char c : num)
    if (c < '0' || c > '9') return false;
  index = std::stoll(num);
  rest = key.substr(dot + 1);
  return true;
}
}  // namespace

// ---- Optimizer ----

Optimizer::Optimizer(std::vector<ParamGroup> groups, float lr, float weight_decay, const char* name)
    : name_(name), groups_(std::move(groups)), lr_(lr), weight_decay_(weight_decay) {
  SONAR_CHECK(lr >= 0.0f && std::isfinite(lr), name_, ": learning rate must be finite and >= 0, got ", lr);
  SONAR_CHECK(weight_decay >= 0.0f, name_, ": weight_decay must be >= 0, got ", weight_decay);
  std::set<const VarImpl*> seen;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& g = groups_[gi];
    SONAR_CHECK(g.lr_scale >= 0.0f, name_, ": group ", gi, " has negative lr_scale ", g.lr_scale);
    const float wd = g.weight_decay.value_or(weight_decay);
    SONAR_CHECK(wd >= 0.0f, name_, ": group ", gi, " has negative weight_decay ", wd);
    for (const Var& p : g.params) {
      SONAR_CHECK(p.defined(), name_, ": group ", gi, " holds an undefined parameter");
      SONAR_CHECK(p.is_leaf() && p.requires_grad(), name_, ": parameter ", flat_.size(), " ",
                  shape_str(p.shape()), " must be a leaf with requires_grad");
      SONAR_CHECK(seen.insert(p.impl().get()).second, name_, ": parameter ", shape_str(p.shape()),
                  " appears twice");
      flat_.push_back({p, g.lr_scale, wd});
    }
  }
  buffers_.resize(flat_.size());
  steps_.assign(flat_.size(), 0);
}

void Optimizer::set_lr(float lr) {
  SONAR_CHECK(lr >= 0.0f && std::isfinite(lr), name_, ": learning rate must be finite and >= 0, got ", lr);
  lr_ = lr;
}

void Optimizer::zero_grad() {
  for (Slot& s : flat_) s.param.zero_grad();
}

std::vector<Var> Optimizer::params() const {
  std::vector<Var> out;
  for (const Slot& s : flat_) out.push_back(s.param);
  return out;
}

Tensor Optimizer::checked_grad(size_t i) const {
  const Var& p = flat_[i].param;
  SONAR_CHECK(p.value().is_contiguous() && p.value().dtype() == DType::Float32, name_, ": parameter ", i, " ",
              shape_str(p.shape()), " must be a contiguous float32 tensor to be updated in place");
  SONAR_CHECK(p.grad().shape() == p.shape(), name_, ": parameter ", i, " ", shape_str(p.shape()),
              " has a gradient of shape ", shape_str(p.grad().shape()));
  return p.grad().contiguous();
}

OptimizerState Optimizer::save_state() const {
  OptimizerState st;
  st.scalars["lr"] = lr_;
  for (size_t i = 0; i < flat_.size(); ++i) {
    if (steps_[i] == 0 && buffers_[i].empty()) continue;
    const std::string pre = "param." + std::to_string(i) + ".";
    st.scalars[pre + "step"] = static_cast<double>(steps_[i]);
    for (const auto& [k, t] : buffers_[i]) st.tensors[pre + k] = t.clone();
  }
  return st;
}

void Optimizer::load_state(const OptimizerState& st) {
  std::vector<std::map<std::string, Tensor>> buffers(flat_.size());
  std::vector<int64_t> steps(flat_.size(), 0);
  const std::vector<std::string> names = buffer_names();
  for (const auto& [key, t] : st.tensors) {
    int64_t i = -1;
    std::string rest;
    SONAR_CHECK(parse_key(key, i, rest), name_, "::load_state: unknown tensor key '", key, "'");
    SONAR_CHECK(i < num_params(), name_, "::load_state: key '", key, "' refers to parameter ", i, " but there are ",
                num_params());
    bool known = false;
    for (const auto& n : names) known = known || n == rest;
    SONAR_CHECK(known, name_, "::load_state: unknown buffer '", rest, "' in key '", key, "'");
    SONAR_CHECK(t.defined() && t.dtype() == DType::Float32 && t.shape() == flat_[i].param.shape(), name_,
                "::load_state: '", key, "' has shape ", t.defined() ? shape_str(t.shape()) : std::string("undefined"),
                ", parameter ", i, " has ", shape_str(flat_[i].param.shape()));
    buffers[i][rest] = t.contiguous().clone();
  }
  double lr = lr_;
  for (const auto& [key, v] : st.scalars) {
    if (key == "lr") {
      lr = v;
      continue;
    }
    int64_t i = -1;
    std::string rest;
    SONAR_CHECK(parse_key(key, i, rest) && rest == "step", name_, "::load_state: unknown scalar key '", key, "'");
    SONAR_CHECK(i < num_params(), name_, "::load_state: key '", key, "' refers to parameter ", i, " but there are ",
                num_params());
    SONAR_CHECK(v >= 0 && v == std::floor(v), name_, "::load_state: '", key, "' = ", v, " is not a step count");
    steps[i] = static_cast<int64_t>(v);
  }
  set_lr(static_cast<float>(lr));
  buffers_ = std::move(buffers);
  steps_ = std::move(steps);
}

// ---- SGD ----

namespace {
std::vector<ParamGroup> one_group(std::vector<Var> params) {
  std::vector<ParamGroup> g(1);
  g[0].params = std::move(params);
  return g;
}
}  // namespace

SGD::SGD(std::vector<Var> params, const SGDOptions& opt) : SGD(one_group(std::move(params)), opt) {}

SGD::SGD(std::vector<ParamGroup> groups, const SGDOptions& opt)
    : Optimizer(std::move(groups), opt.lr, opt.weight_decay, "SGD"), opt_(opt) {
  SONAR_CHECK(opt.momentum >= 0.0f, "SGD: momentum must be >= 0, got ", opt.momentum);
  SONAR_CHECK(!opt.nesterov || (opt.momentum > 0.0f && opt.dampening == 0.0f),
              "SGD: Nesterov needs momentum > 0 and dampening 0 (momentum ", opt.momentum, ", dampening ",
              opt.dampening, ")");
}

// The per-parameter state tensor `name`, created as zeros on first use. A parameter whose shape changed
// since (a grown output layer whose moments were not padded) is an error, not a write past the buffer.
static Tensor& state_buffer(std::map<std::string, Tensor>& buf, const char* name, const Tensor& param, size_t index,
                            const char* opt, bool& created) {
  auto it = buf.find(name);
  created = it == buf.end();
  if (created) return buf.emplace(name, zeros(param.shape())).first->second;
  SONAR_CHECK(it->second.shape() == param.shape(), opt, ": state '", name, "' of parameter ", index, " has shape ",
              shape_str(it->second.shape()), " but the parameter now has shape ", shape_str(param.shape()),
              " (resize the optimiser state when a layer grows)");
  return it->second;
}

void SGD::step() {
  for (size_t i = 0; i < flat_.size(); ++i) {
    Slot& s = flat_[i];
    if (!s.param.grad().defined()) continue;
    const Tensor g = checked_grad(i);
    Tensor& pv = s.param.value();
    const int64_t n = pv.numel();
    float* p = pv.data<float>();
    const float* gp = g.data<float>();
    const float lr = this->lr() * s.lr_scale, wd = s.weight_decay, mu = opt_.momentum, damp = opt_.dampening;
    const bool nesterov = opt_.nesterov;
    if (mu == 0.0f) {
#pragma omp parallel for simd if (n > kParallelMin)
      for (int64_t k = 0; k < n; ++k) p[k] -= lr * (gp[k] + wd * p[k]);
    } else {
      bool first = false;
      float* b = state_buffer(buffers_[i], "momentum_buffer", pv, i, "SGD", first).data<float>();
#pragma omp parallel for simd if (n > kParallelMin)
      for (int64_t k = 0; k < n; ++k) {
        const float d = gp[k] + wd * p[k];
        b[k] = first ? d : mu * b[k] + (1.0f - damp) * d;
        p[k] -= lr * (nesterov ? d + mu * b[k] : b[k]);
      }
    }
    ++steps_[i];
  }
}

// ---- AdamW ----

AdamW::AdamW(std::vector<Var> params, const AdamWOptions& opt) : AdamW(one_group(std::move(params)), opt) {}

AdamW::AdamW(std::vector<ParamGroup> groups, const AdamWOptions& opt)
    : Optimizer(std::move(groups), opt.lr, opt.weight_decay, "AdamW"), opt_(opt) {
  SONAR_CHECK(opt.beta1 >= 0.0f && opt.beta1 < 1.0f && opt.beta2 >= 0.0f && opt.beta2 < 1.0f,
              "AdamW: betas must be in [0, 1), got (", opt.beta1, ", ", opt.beta2, ")");
  SONAR_CHECK(opt.eps >= 0.0f, "AdamW: eps must be >= 0, got ", opt.eps);
}

void AdamW::step() {
  for (size_t i = 0; i < flat_.size(); ++i) {
    Slot& s = flat_[i];
    if (!s.param.grad().defined()) continue;
    const Tensor g = checked_grad(i);
    Tensor& pv = s.param.value();
    auto& buf = buffers_[i];
    bool created = false;
    float* m = state_buffer(buf, "exp_avg", pv, i, "AdamW", created).data<float>();
    float* v = state_buffer(buf, "exp_avg_sq", pv, i, "AdamW", created).data<float>();
    const int64_t t = ++steps_[i];
    const double b1 = opt_.beta1, b2 = opt_.beta2;
    const double bc1 = 1.0 - std::pow(b1, static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(b2, static_cast<double>(t));
    const double lr = static_cast<double>(this->lr()) * s.lr_scale;
    const float decay = static_cast<float>(1.0 - lr * s.weight_decay);
    const float step_size = static_cast<float>(lr / bc1);
    const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
    const float fb1 = opt_.beta1, fb2 = opt_.beta2, eps = opt_.eps;
    const int64_t n = pv.numel();
    float* p = pv.data<float>();
    const float* gp = g.data<float>();
#pragma omp parallel for simd if (n > kParallelMin)
    for (int64_t k = 0; k < n; ++k) {
      const float gk = gp[k];
      p[k] *= decay;
      m[k] = fb1 * m[k] + (1.0f - fb1) * gk;
      v[k] = fb2 * v[k] + (1.0f - fb2) * gk * gk;
      p[k] -= step_size * m[k] / (std::sqrt(v[k]) * inv_sqrt_bc2 + eps);
    }
  }
}

// ---- clipping ----

float clip_grad_norm(const std::vector<Var>& params, float max_norm) {
  SONAR_CHECK(max_norm > 0.0f, "clip_grad_norm: max_norm must be positive, got ", max_norm);
  double sq = 0.0;
  for (const Var& p : params) {
    if (!p.defined() || !p.grad().defined()) continue;
    const Tensor g = p.grad().contiguous();
    const float* gp = g.data<float>();
    const int64_t n = g.numel();
    double s = 0.0;
#pragma omp parallel for reduction(+ : s) if (n > kParallelMin)
    for (int64_t k = 0; k < n; ++k) s += static_cast<double>(gp[k]) * gp[k];
    sq += s;
  }
  const double total = std::sqrt(sq);
  const double coef = static_cast<double>(max_norm) / (total + kClipEps);
  if (coef < 1.0) {
    for (const Var& p : params) {
      if (!p.defined() || !p.grad().defined()) continue;
      Tensor g = p.grad();
      if (g.is_contiguous()) {
        mul_(g, static_cast<float>(coef));
      } else {
        Var handle = p;
        handle.set_grad(sonar::mul(g, static_cast<float>(coef)));
      }
    }
  }
  return static_cast<float>(total);
}

}  // namespace sonar::ag
