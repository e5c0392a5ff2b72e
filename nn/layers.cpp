// Layer implementations (see nn/layers.h): parameter registration with PyTorch's names, default
// initialisation and forward passes composed from autograd ops.
#include "nn/layers.h"

#include <cmath>

#include "nn/init.h"
#include "tensor/creation.h"
#include "tensor/reduce.h"

namespace sonar::nn {

namespace {
// PyTorch's default for Linear and Conv: kaiming_uniform(a = sqrt(5)) weight, U(+-1/sqrt(fan_in)) bias.
void default_reset(ag::Var& weight, ag::Var& bias, Generator& gen) {
  init::kaiming_uniform_(weight.value(), std::sqrt(5.0), init::FanMode::FanIn, "leaky_relu", gen);
  if (bias.defined()) {
    const double fan_in = static_cast<double>(init::compute_fans(weight.shape()).fan_in);
    const double bound = fan_in > 0 ? 1.0 / std::sqrt(fan_in) : 0.0;
    init::uniform_(bias.value(), -bound, bound, gen);
  }
}
}  // namespace

// ---- Linear ----

Linear::Linear(int64_t in, int64_t out, bool has_bias, Generator* gen)
    : UnaryModule("Linear"), in_features(in), out_features(out) {
  SONAR_CHECK(in > 0 && out > 0, "Linear: features must be positive, got in ", in, ", out ", out);
  weight = register_parameter("weight", zeros({out, in}));
  if (has_bias) bias = register_parameter("bias", zeros({out}));
  if (gen) reset_parameters(*gen);
}

void Linear::reset_parameters(Generator& gen) { default_reset(weight, bias, gen); }

ag::Var Linear::forward(const ag::Var& x) {
  SONAR_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "Linear(", in_features, " -> ", out_features,
              "): input ", shape_str(x.shape()), " does not end in ", in_features);
  return ag::linear(x, weight, bias);
}

std::shared_ptr<Module> Linear::create_like() const {
  return std::make_shared<Linear>(in_features, out_features, bias.defined());
}

// ---- Conv1d ----

Conv1d::Conv1d(const Conv1dOptions& o, Generator* gen) : UnaryModule("Conv1d"), options(o) {
  SONAR_CHECK(o.in_channels > 0 && o.out_channels > 0 && o.kernel_size > 0 && o.groups > 0 &&
                  o.in_channels % o.groups == 0 && o.out_channels % o.groups == 0,
              "Conv1d: invalid channels/kernel/groups (in ", o.in_channels, ", out ", o.out_channels, ", kernel ",
              o.kernel_size, ", groups ", o.groups, ")");
  SONAR_CHECK(o.weight_norm_dim >= -1 && o.weight_norm_dim <= 2, "Conv1d: weight_norm_dim must be -1 (off) or 0..2, got ",
              o.weight_norm_dim);
  const Shape wshape{o.out_channels, o.in_channels / o.groups, o.kernel_size};
  if (o.weight_norm_dim < 0) {
    weight = register_parameter("weight", zeros(wshape));
    if (o.bias) bias = register_parameter("bias", zeros({o.out_channels}));
  } else {
    // torch.nn.utils.weight_norm removes `weight` and appends weight_g, weight_v after the bias.
    if (o.bias) bias = register_parameter("bias", zeros({o.out_channels}));
    Shape gshape(3, 1);
    gshape[o.weight_norm_dim] = wshape[o.weight_norm_dim];
    weight_g = register_parameter("weight_g", ones(gshape));
    weight_v = register_parameter("weight_v", zeros(wshape));
  }
  if (gen) reset_parameters(*gen);
}

void Conv1d::reset_parameters(Generator& gen) {
  if (options.weight_norm_dim < 0) {
    default_reset(weight, bias, gen);
    return;
  }
  // Initialise a plain weight, then split it as weight_norm does: v = w, g = ||w|| over the other dims.
  default_reset(weight_v, bias, gen);
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < 3; ++d)
    if (d != options.weight_norm_dim) dims.push_back(d);
  weight_g.value().copy_(norm(weight_v.value(), 2.0, dims, true));
}

ag::Var Conv1d::effective_weight() const {
  if (options.weight_norm_dim < 0) return weight;
  return ag::weight_norm(weight_v, weight_g, options.weight_norm_dim);
}

ag::Var Conv1d::forward(const ag::Var& x) {
  SONAR_CHECK(x.dim() == 3 && x.size(1) == options.in_channels, "Conv1d: input must be [B, ",
              options.in_channels, ", L], got ", shape_str(x.shape()));
  Conv1dParams p;
  p.stride = options.stride;
  p.padding = options.padding;
  p.groups = options.groups;
  return ag::conv1d(x, effective_weight(), bias, p);
}

std::shared_ptr<Module> Conv1d::create_like() const { return std::make_shared<Conv1d>(options); }

// ---- Conv2d ----

Conv2d::Conv2d(const Conv2dOptions& o, Generator* gen) : UnaryModule("Conv2d"), options(o) {
  SONAR_CHECK(o.in_channels > 0 && o.out_channels > 0 && o.kernel_size[0] > 0 && o.kernel_size[1] > 0 &&
                  o.groups > 0 && o.in_channels % o.groups == 0 && o.out_channels % o.groups == 0,
              "Conv2d: invalid channels/kernel/groups (in ", o.in_channels, ", out ", o.out_channels, ", groups ",
              o.groups, ")");
  weight = register_parameter("weight",
                              zeros({o.out_channels, o.in_channels / o.groups, o.kernel_size[0], o.kernel_size[1]}));
  if (o.bias) bias = register_parameter("bias", zeros({o.out_channels}));
  if (gen) reset_parameters(*gen);
}

void Conv2d::reset_parameters(Generator& gen) { default_reset(weight, bias, gen); }

ag::Var Conv2d::forward(const ag::Var& x) {
  SONAR_CHECK(x.dim() == 4 && x.size(1) == options.in_channels, "Conv2d: input must be [B, ",
              options.in_channels, ", H, W], got ", shape_str(x.shape()));
  Conv2dParams p;
  p.stride = options.stride;
  p.padding = options.padding;
  p.groups = options.groups;
  return ag::conv2d(x, weight, bias, p);
}

std::shared_ptr<Module> Conv2d::create_like() const { return std::make_shared<Conv2d>(options); }

// ---- LayerNorm ----

LayerNorm::LayerNorm(int64_t d, float e, bool affine) : UnaryModule("LayerNorm"), dim(d), eps(e) {
  SONAR_CHECK(d > 0, "LayerNorm: dim must be positive, got ", d);
  if (affine) {
    weight = register_parameter("weight", ones({d}));
    bias = register_parameter("bias", zeros({d}));
  }
}

ag::Var LayerNorm::forward(const ag::Var& x) {
  SONAR_CHECK(x.dim() >= 1 && x.size(-1) == dim, "LayerNorm(", dim, "): input ", shape_str(x.shape()),
              " does not end in ", dim);
  return ag::layer_norm(x, weight, bias, eps);
}

std::shared_ptr<Module> LayerNorm::create_like() const {
  return std::make_shared<LayerNorm>(dim, eps, weight.defined());
}

// ---- Embedding ----

Embedding::Embedding(int64_t num, int64_t d, Generator* gen)
    : Module("Embedding"), num_embeddings(num), embedding_dim(d) {
  SONAR_CHECK(num > 0 && d > 0, "Embedding: sizes must be positive, got ", num, " x ", d);
  weight = register_parameter("weight", zeros({num, d}));
  if (gen) init::normal_(weight.value(), 0.0, 1.0, *gen);
}

ag::Var Embedding::forward(const Tensor& indices) const { return ag::embedding(weight, indices); }

std::shared_ptr<Module> Embedding::create_like() const {
  return std::make_shared<Embedding>(num_embeddings, embedding_dim);
}

// ---- Dropout ----

Dropout::Dropout(float prob) : UnaryModule("Dropout"), p(prob) {
  SONAR_CHECK(prob >= 0.0f && prob < 1.0f, "Dropout: probability ", prob, " outside [0, 1)");
}

ag::Var Dropout::forward(const ag::Var& x) {
  if (!is_training() || p == 0.0f) return x;
  return ag::dropout(x, p, rng(), true);
}

std::shared_ptr<Module> Dropout::create_like() const { return std::make_shared<Dropout>(p); }

// ---- containers ----

void ModuleList::push_back(std::shared_ptr<Module> m) {
  register_module(std::to_string(children().size()), std::move(m));
}

const std::shared_ptr<Module>& ModuleList::operator[](size_t i) const {
  SONAR_CHECK(i < children().size(), "ModuleList: index ", i, " out of range (size ", children().size(), ")");
  return children()[i].second;
}

std::shared_ptr<Module> ModuleList::create_like() const {
  auto out = std::make_shared<ModuleList>();
  for (const auto& c : children()) out->push_back(c.second->clone());
  return out;
}

Sequential::Sequential(std::vector<std::shared_ptr<UnaryModule>> layers) : UnaryModule("Sequential") {
  for (auto& l : layers) push_back(std::move(l));
}

void Sequential::push_back(std::shared_ptr<UnaryModule> m) {
  SONAR_CHECK(m != nullptr, "Sequential: null layer");
  register_module(std::to_string(layers_.size()), m);
  layers_.push_back(std::move(m));
}

const std::shared_ptr<UnaryModule>& Sequential::operator[](size_t i) const {
  SONAR_CHECK(i < layers_.size(), "Sequential: index ", i, " out of range (size ", layers_.size(), ")");
  return layers_[i];
}

ag::Var Sequential::forward(const ag::Var& x) {
  ag::Var y = x;
  for (auto& l : layers_) y = l->forward(y);
  return y;
}

std::shared_ptr<Module> Sequential::create_like() const {
  auto out = std::make_shared<Sequential>();
  for (const auto& l : layers_) {
    auto c = std::dynamic_pointer_cast<UnaryModule>(l->clone());
    SONAR_CHECK(c != nullptr, "Sequential: clone of ", l->type_name(), " is not a unary module");
    out->push_back(c);
  }
  return out;
}

}  // namespace sonar::nn
