// Label predictor, growable output layer and encoder initialisation (see nn/beats/label_predictor.h).
#include "nn/beats/label_predictor.h"

#include <cmath>

#include "autograd/ops.h"
#include "nn/init.h"
#include "tensor/creation.h"
#include "tensor/index.h"
#include "tensor/profile.h"
#include "tensor/reduce.h"

namespace sonar::beats {

// ---- initialisation ----

namespace {
constexpr double kBertInitStd = 0.02;  // init_bert_params: N(0, 0.02) for linear layers and embeddings

void init_linear(nn::Linear& l, Generator& gen) {
  nn::init::normal_(l.weight.value(), 0.0, kBertInitStd, gen);
  if (l.bias.defined()) nn::init::zeros_(l.bias.value());
}
}  // namespace

void init_transformer_encoder(TransformerEncoder& enc, Generator& gen) {
  const BeatsConfig& cfg = enc.cfg;
  const int64_t L = cfg.encoder_layers;
  const double beta = cfg.deep_norm ? std::pow(8.0 * static_cast<double>(L), -0.25) : 1.0;
  for (int64_t i = 0; i < L; ++i) {
    auto layer = enc.layer(i);
    auto& a = *layer->self_attn;
    for (auto* l : {a.k_proj.get(), a.v_proj.get(), a.q_proj.get(), a.out_proj.get(), a.grep_linear.get()})
      if (l) init_linear(*l, gen);
    if (a.grep_a.defined()) nn::init::ones_(a.grep_a.value());
    if (i == 0 && a.relative_attention_bias) nn::init::normal_(a.relative_attention_bias->weight.value(), 0.0, kBertInitStd, gen);
    nn::Linear* fc1 = dynamic_cast<nn::Linear*>(layer->fc1.get());
    if (!fc1) fc1 = static_cast<GLULinear*>(layer->fc1.get())->linear.get();
    init_linear(*fc1, gen);
    init_linear(*layer->fc2, gen);
    if (cfg.deep_norm) {
      nn::init::xavier_normal_(a.k_proj->weight.value(), 1.0, gen);
      nn::init::xavier_normal_(a.v_proj->weight.value(), beta, gen);
      nn::init::xavier_normal_(a.q_proj->weight.value(), 1.0, gen);
      nn::init::xavier_normal_(a.out_proj->weight.value(), beta, gen);
      nn::init::xavier_normal_(fc1->weight.value(), beta, gen);
      nn::init::xavier_normal_(layer->fc2->weight.value(), beta, gen);
    }
  }
  auto conv = std::dynamic_pointer_cast<nn::Conv1d>((*enc.pos_conv)[0]);
  SONAR_CHECK(conv != nullptr, "init_transformer_encoder: pos_conv.0 is not a Conv1d");
  const double std_pos = std::sqrt(4.0 * (1.0 - cfg.dropout) / (static_cast<double>(cfg.conv_pos) * cfg.encoder_embed_dim));
  if (conv->bias.defined()) nn::init::zeros_(conv->bias.value());
  if (conv->options.weight_norm_dim >= 0) {
    nn::init::normal_(conv->weight_v.value(), 0.0, std_pos, gen);
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < 3; ++d)
      if (d != conv->options.weight_norm_dim) dims.push_back(d);
    conv->weight_g.value().copy_(norm(conv->weight_v.value(), 2.0, dims, true));
  } else {
    nn::init::normal_(conv->weight.value(), 0.0, std_pos, gen);
  }
}

// ---- GrowableLinear ----

namespace {
constexpr double kHeadInitStd = 0.02;
void head_rows_init(Tensor& w, Generator& gen) {
  nn::init::trunc_normal_(w, 0.0, kHeadInitStd, -2.0 * kHeadInitStd, 2.0 * kHeadInitStd, gen);
}
}  // namespace

GrowableLinear::GrowableLinear(int64_t in, int64_t out, Generator* gen) : nn::UnaryModule("GrowableLinear"), in_(in) {
  SONAR_CHECK(in > 0 && out > 0, "GrowableLinear: features must be positive, got in ", in, ", out ", out);
  weight = register_parameter("weight", zeros({out, in}));
  bias = register_parameter("bias", zeros({out}));
  if (gen) reset_parameters(*gen);
}

void GrowableLinear::reset_parameters(Generator& gen) {
  head_rows_init(weight.value(), gen);
  nn::init::zeros_(bias.value());
}

ag::Var GrowableLinear::forward(const ag::Var& x) {
  SONAR_CHECK(x.dim() >= 1 && x.size(-1) == in_, "GrowableLinear(", in_, " -> ", out_features(), "): input ",
              shape_str(x.shape()), " does not end in ", in_);
  return ag::linear(x, weight, bias);
}

void GrowableLinear::add_rows(int64_t n, const Tensor& rows, Generator* gen) {
  SONAR_CHECK(n > 0, "GrowableLinear::add_rows: n = ", n, " must be positive");
  Tensor fresh;
  if (rows.defined()) {
    SONAR_CHECK(rows.dtype() == DType::Float32 && rows.shape() == (Shape{n, in_}),
                "GrowableLinear::add_rows: rows must be float32 ", shape_str({n, in_}), ", got ", rows.str());
    fresh = rows.contiguous();
  } else {
    SONAR_CHECK(gen != nullptr, "GrowableLinear::add_rows: give either the rows or a generator");
    fresh = zeros({n, in_});
    head_rows_init(fresh, *gen);
  }
  weight.value() = cat({weight.value(), fresh}, 0);
  bias.value() = cat({bias.value(), zeros({n})}, 0);
  if (weight.grad().defined()) weight.set_grad(cat({weight.grad(), zeros({n, in_})}, 0));
  if (bias.grad().defined()) bias.set_grad(cat({bias.grad(), zeros({n})}, 0));
}

void GrowableLinear::before_load(const std::string& prefix, const std::map<std::string, Tensor>& source) {
  auto it = source.find(prefix + "weight");
  if (it == source.end() || !it->second.defined() || it->second.dim() != 2 || it->second.size(1) != in_) return;
  const int64_t out = it->second.size(0);
  if (out == out_features() || out <= 0) return;
  weight.value() = zeros({out, in_});
  bias.value() = zeros({out});
  weight.zero_grad();
  bias.zero_grad();
}

std::shared_ptr<nn::Module> GrowableLinear::create_like() const {
  return std::make_shared<GrowableLinear>(in_, out_features());
}

void grow_optimizer_state(ag::Optimizer& opt) {
  const std::vector<ag::Var> params = opt.params();
  ag::OptimizerState st = opt.save_state();
  for (auto& [key, t] : st.tensors) {
    // Keys are "param.<index>.<buffer>".
    if (key.rfind("param.", 0) != 0 || !t.defined()) continue;
    const size_t dot = key.find('.', 6);
    if (dot == std::string::npos) continue;
    const int64_t index = std::stoll(key.substr(6, dot - 6));
    SONAR_CHECK(index >= 0 && index < static_cast<int64_t>(params.size()), "grow_optimizer_state: buffer '", key,
                "' names no parameter");
    const Shape& want = params[index].shape();
    if (t.shape() == want) continue;
    SONAR_CHECK(t.dim() == static_cast<int64_t>(want.size()) && t.dim() >= 1 && t.size(0) < want[0],
                "grow_optimizer_state: buffer '", key, "' ", shape_str(t.shape()), " cannot grow to ", shape_str(want));
    for (int64_t d = 1; d < t.dim(); ++d)
      SONAR_CHECK(t.size(d) == want[d], "grow_optimizer_state: buffer '", key, "' ", shape_str(t.shape()),
                  " differs from its parameter ", shape_str(want), " beyond dim 0");
    Shape extra = t.shape();
    extra[0] = want[0] - t.size(0);
    t = cat({t, zeros(extra, t.dtype())}, 0);
  }
  opt.load_state(st);
}

// ---- LabelPredictor ----

namespace {
BeatsConfig predictor_config(const BeatsConfig& c, const LabelPredictorOptions& o) {
  SONAR_CHECK(o.layers > 0, "LabelPredictor: layers = ", o.layers, " must be positive");
  SONAR_CHECK(o.num_classes > 0, "LabelPredictor: num_classes = ", o.num_classes, " must be positive");
  BeatsConfig p = c;
  p.encoder_layers = o.layers;
  p.encoder_layerdrop = 0.0;
  p.layer_wise_gradient_decay_ratio = 1.0;
  return p;
}
}  // namespace

LabelPredictor::LabelPredictor(const BeatsConfig& encoder_cfg, const LabelPredictorOptions& o, Generator* gen)
    : nn::Module("LabelPredictor"), cfg(predictor_config(encoder_cfg, o)), opts(o) {
  const int64_t C = cfg.encoder_embed_dim;
  mask_emb = register_parameter("mask_emb", zeros({C}));
  encoder = register_module("encoder", std::make_shared<TransformerEncoder>(cfg));
  head = register_module("head", std::make_shared<GrowableLinear>(C, o.num_classes));
  if (gen) {
    nn::init::trunc_normal_(mask_emb.value(), 0.0, kBertInitStd, -2.0 * kBertInitStd, 2.0 * kBertInitStd, *gen);
    init_transformer_encoder(*encoder, *gen);
    head->reset_parameters(*gen);
  }
}

std::shared_ptr<nn::Module> LabelPredictor::create_like() const {
  auto p = std::make_shared<LabelPredictor>(cfg, opts);
  if (aux_head) p->add_aux_head(aux_head->out_features());
  return p;
}

void LabelPredictor::add_aux_head(int64_t num_classes) {
  SONAR_CHECK(aux_head == nullptr, "LabelPredictor: there is an auxiliary head already");
  SONAR_CHECK(num_classes > 0, "LabelPredictor: auxiliary head needs at least one class, got ", num_classes);
  aux_head = register_module("aux_head", std::make_shared<GrowableLinear>(cfg.encoder_embed_dim, num_classes));
}

ag::Var LabelPredictor::aux_logits(const ag::Var& rows) {
  SONAR_CHECK(aux_head != nullptr, "LabelPredictor: no auxiliary head (add_aux_head)");
  return aux_head->forward(rows);
}

ag::Var LabelPredictor::assemble(const ag::Var& visible, const PatchMasking& m) const {
  const int64_t B = m.batch, P = m.patches, V = m.visible, C = cfg.encoder_embed_dim;
  SONAR_CHECK(visible.shape() == (Shape{B, V, C}), "LabelPredictor: visible features must be ",
              shape_str({B, V, C}), ", got ", shape_str(visible.shape()));
  // One table holding every visible row and, last, the mask token; each patch picks its row.
  Tensor src = full({B * P}, static_cast<double>(B * V), DType::Int64);
  int64_t* s = src.data<int64_t>();
  const int64_t* vi = m.visible_index.data<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < m.num_visible[b]; ++j) s[b * P + vi[b * V + j]] = b * V + j;
  ag::Var table = ag::cat({ag::reshape(visible, {B * V, C}), ag::reshape(mask_emb, {1, C})}, 0);
  return ag::reshape(ag::index_select(table, 0, src), {B, P, C});
}

ag::Var LabelPredictor::hidden(const ag::Var& visible, const PatchMasking& m) {
  profile::Scope timed("label_predictor");  // tensor/profile.h
  ag::Var x = assemble(visible, m);
  return encoder->forward(x, m.any_padding ? m.padding : Tensor()).x;
}

ag::Var LabelPredictor::masked_rows(const ag::Var& h, const PatchMasking& m) {
  SONAR_CHECK(h.dim() == 3 && h.size(0) == m.batch && h.size(1) == m.patches,
              "LabelPredictor::masked_rows: hidden states must be [", m.batch, ", ", m.patches, ", C], got ",
              shape_str(h.shape()));
  return ag::index_select(ag::reshape(h, {m.batch * m.patches, h.size(2)}), 0, m.masked_flat);
}

}  // namespace sonar::beats
