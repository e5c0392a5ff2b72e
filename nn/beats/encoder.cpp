// The BEATs transformer encoder (see nn/beats/encoder.h). Every official quirk is marked "official:".
#include "nn/beats/encoder.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "nn/beats/attention_op.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/precision.h"
#include "tensor/profile.h"

namespace sonar::beats {

// ---- relative positions ----

Tensor relative_position_buckets_by_offset(int64_t T, int64_t S, int64_t num_buckets, int64_t max_distance) {
  SONAR_CHECK(num_buckets >= 4 && max_distance > 0, "relative_position_buckets: invalid num_buckets ", num_buckets,
              " / max_distance ", max_distance);
  SONAR_CHECK(T > 0 && S > 0, "relative_position_buckets: query and key lengths must be positive, got ", T, " and ",
              S);
  Tensor out = Tensor::empty({T + S - 1}, DType::Int64);
  int64_t* by_rel = out.data<int64_t>();
  // official: bidirectional, so half of the buckets per direction; inside each half, exact buckets below
  // max_exact, then log-spaced ones. The arithmetic is float32, as torch computes it on a float tensor.
  const int64_t half = num_buckets / 2;
  const int64_t max_exact = half / 2;
  const float log_range = static_cast<float>(std::log(static_cast<double>(max_distance) / max_exact));
  const float span = static_cast<float>(half - max_exact);
  // The bucket depends only on rel = s - t: computed once per distinct rel.
  for (int64_t rel = -(T - 1); rel <= S - 1; ++rel) {
    int64_t bucket = rel > 0 ? half : 0;
    const int64_t n = rel < 0 ? -rel : rel;
    if (n < max_exact) {
      bucket += n;
    } else {
      const float ratio = static_cast<float>(n) / static_cast<float>(max_exact);
      const float scaled = std::log(ratio) / log_range * span;
      int64_t large = max_exact + static_cast<int64_t>(scaled);
      bucket += std::min(large, half - 1);
    }
    by_rel[rel + T - 1] = bucket;
  }
  return out;
}

Tensor relative_position_buckets(int64_t T, int64_t S, int64_t num_buckets, int64_t max_distance) {
  if (T == 0 || S == 0) return Tensor::empty({T, S}, DType::Int64);
  const Tensor by_offset = relative_position_buckets_by_offset(T, S, num_buckets, max_distance);
  const int64_t* by_rel = by_offset.data<int64_t>();
  Tensor out = Tensor::empty({T, S}, DType::Int64);
  int64_t* o = out.data<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t* src = by_rel + (T - 1 - t);  // rel = s - t for s = 0..S-1
    std::copy(src, src + S, o + t * S);
  }
  return out;
}

ag::Var grad_multiply(const ag::Var& x, float scale) {
  return ag::make_result(x.value(), {x}, [scale](const Tensor& g) { return std::vector<Tensor>{mul(g, scale)}; },
                         "grad_multiply");
}

ag::Var SamePad::forward(const ag::Var& x) {
  if (kernel_size % 2 != 0) return x;
  return ag::narrow(x, 2, 0, x.size(2) - 1);  // official: drops the last output frame for an even kernel
}

// ---- MultiheadAttention ----

MultiheadAttention::MultiheadAttention(const BeatsConfig& c) : nn::Module("MultiheadAttention"), cfg(c) {
  const int64_t C = cfg.encoder_embed_dim, H = cfg.encoder_attention_heads;
  // Registration order follows the official module, so state_dict() lists keys as torch does.
  if (cfg.gru_rel_pos) grep_a = register_parameter("grep_a", ones({1, H, 1, 1}));
  if (cfg.relative_position_embedding)
    relative_attention_bias =
        register_module("relative_attention_bias", std::make_shared<nn::Embedding>(cfg.num_buckets, H));
  k_proj = register_module("k_proj", std::make_shared<nn::Linear>(C, C));
  v_proj = register_module("v_proj", std::make_shared<nn::Linear>(C, C));
  q_proj = register_module("q_proj", std::make_shared<nn::Linear>(C, C));
  out_proj = register_module("out_proj", std::make_shared<nn::Linear>(C, C));
  if (cfg.gru_rel_pos) grep_linear = register_module("grep_linear", std::make_shared<nn::Linear>(cfg.head_dim(), 8));
}

void MultiheadAttention::share_relative_bias(std::shared_ptr<nn::Embedding> table) {
  // official: layers 1.. delete their own table and point at layer 0's (state_dict lists it under each).
  SONAR_CHECK(relative_attention_bias != nullptr && table != nullptr,
              "MultiheadAttention: sharing a relative position table needs relative_position_embedding");
  replace_module("relative_attention_bias", table);
  relative_attention_bias = std::move(table);
}

std::shared_ptr<nn::Module> MultiheadAttention::create_like() const {
  return std::make_shared<MultiheadAttention>(cfg);
}

ag::Var MultiheadAttention::compute_bias(int64_t query_len, int64_t key_len) const {
  SONAR_CHECK(relative_attention_bias != nullptr, "MultiheadAttention: no relative_attention_bias table");
  Tensor buckets = relative_position_buckets_by_offset(query_len, key_len, cfg.num_buckets, cfg.max_distance);
  ag::Var values = relative_attention_bias->forward(buckets);  // [T + S - 1, H]
  return ag::contiguous(ag::permute(values, {1, 0}));          // [H, T + S - 1]
}

ag::Var MultiheadAttention::gate(const ag::Var& q) const {
  // official: query_layer = q (before scaling) viewed per head; grep_linear -> 8 values viewed [2, 4] and
  // summed to 2, sigmoid, split into a and b; gate = a * (b * grep_a - 1) + 2.
  const int64_t B = q.size(0), T = q.size(1), H = cfg.encoder_attention_heads, D = cfg.head_dim();
  ag::Var qh = ag::reshape(q, {B, T, H, D});
  ag::Var g = ag::sigmoid(ag::sum(ag::reshape(grep_linear->forward(qh), {B, T, H, 2, 4}), {-1}));  // [B, T, H, 2]
  ag::Var a = ag::select(g, -1, 0), b = ag::select(g, -1, 1);                                      // [B, T, H]
  ag::Var gate_bth = ag::add(ag::mul(a, ag::sub(ag::mul(b, ag::reshape(grep_a, {H})), 1.0f)), 2.0f);
  return ag::contiguous(ag::permute(gate_bth, {0, 2, 1}));  // [B, H, T]
}

ag::Var MultiheadAttention::forward(const ag::Var& x, const ag::Var& position_bias, const Tensor& key_padding_mask) {
  const int64_t C = cfg.encoder_embed_dim;
  SONAR_CHECK(x.dim() == 3 && x.size(2) == C, "MultiheadAttention: input must be [B, T, ", C, "], got ",
              shape_str(x.shape()));
  // Profiler parts (tensor/profile.h): projections (q, k, v and out), the gate, the fused kernel.
  ag::Var q, k, v;
  {
    profile::Scope timed("projections");
    Bf16WeightCache x_once({x.value()});  // bf16: x converted once for its three products (no-op in float32)
    q = q_proj->forward(x);
    k = k_proj->forward(x);
    v = v_proj->forward(x);
  }
  ag::Var g;
  if (cfg.gru_rel_pos && position_bias.defined()) {
    profile::Scope timed("gate");
    g = gate(q);
  }
  AttentionParams p;
  p.num_heads = cfg.encoder_attention_heads;
  // official: q *= head_dim ** -0.5; q *= 1 / 32; scores - rowmax; * 32 (before the bias and the mask).
  p.scale = static_cast<float>(std::pow(static_cast<double>(cfg.head_dim()), -0.5));
  p.alpha = 32.0f;
  if (is_training() && cfg.attention_dropout > 0.0) {
    p.dropout_p = static_cast<float>(cfg.attention_dropout);
    p.dropout_seed = nn::rng().next_u64();
    p.dropout_offset = 0;
  }
  ag::Var out;
  {
    profile::Scope timed("kernel");
    out = attention(q, k, v, position_bias, g, key_padding_mask, p);
  }
  profile::Scope timed("projections");
  return out_proj->forward(out);
}

// ---- GLU ----

GLULinear::GLULinear(int64_t i, int64_t o) : nn::UnaryModule("GLU_Linear"), in(i), out(o) {
  linear = register_module("linear", std::make_shared<nn::Linear>(i, 2 * o));
}

ag::Var GLULinear::forward(const ag::Var& x) {
  ag::Var y = linear->forward(x);
  ag::Var a = ag::narrow(y, -1, 0, out), b = ag::narrow(y, -1, out, out);
  return ag::mul(a, ag::mul(b, ag::sigmoid(b)));  // official fc1 for "glu" uses swish
}

std::shared_ptr<nn::Module> GLULinear::create_like() const { return std::make_shared<GLULinear>(in, out); }

// ---- EncoderLayer ----

EncoderLayer::EncoderLayer(const BeatsConfig& c) : nn::Module("EncoderLayer"), cfg(c) {
  const int64_t C = cfg.encoder_embed_dim, F = cfg.encoder_ffn_embed_dim;
  self_attn = register_module("self_attn", std::make_shared<MultiheadAttention>(cfg));
  dropout1 = register_module("dropout1", std::make_shared<nn::Dropout>(static_cast<float>(cfg.dropout)));
  dropout2 = register_module("dropout2", std::make_shared<nn::Dropout>(static_cast<float>(cfg.activation_dropout)));
  dropout3 = register_module("dropout3", std::make_shared<nn::Dropout>(static_cast<float>(cfg.dropout)));
  self_attn_layer_norm = register_module("self_attn_layer_norm", std::make_shared<nn::LayerNorm>(C));
  if (cfg.activation_fn == "glu") {
    fc1 = register_module("fc1", std::make_shared<GLULinear>(C, F));
  } else {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(C, F));
  }
  fc2 = register_module("fc2", std::make_shared<nn::Linear>(F, C));
  final_layer_norm = register_module("final_layer_norm", std::make_shared<nn::LayerNorm>(C));
}

std::shared_ptr<nn::Module> EncoderLayer::create_like() const {
  return std::make_shared<EncoderLayer>(cfg);
}

ag::Var EncoderLayer::activation(const ag::Var& x) const {
  const std::string& a = cfg.activation_fn;
  if (a == "gelu") return ag::gelu(x);
  if (a == "relu") return ag::relu(x);
  if (a == "tanh") return ag::tanh(x);
  if (a == "linear" || a == "glu") return x;  // glu's gating happened inside fc1
  if (a == "gelu_accurate" || a == "gelu_fast") {
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    const float c = static_cast<float>(std::sqrt(2.0 / M_PI));
    ag::Var inner = ag::mul(ag::add(x, ag::mul(ag::pow(x, 3.0f), 0.044715f)), c);
    return ag::mul(ag::mul(x, 0.5f), ag::add(ag::tanh(inner), 1.0f));
  }
  SONAR_FAIL("EncoderLayer: unsupported activation '", a, "'");
}

ag::Var EncoderLayer::mlp(const ag::Var& x_in) {
  profile::Scope timed("mlp");
  ag::Var x;
  {
    profile::Scope t1("fc1");
    x = fc1->forward(x_in);
  }
  {
    profile::Scope t2("activation");
    x = dropout2->forward(activation(x));
  }
  profile::Scope t3("fc2");
  return dropout3->forward(fc2->forward(x));
}

ag::Var EncoderLayer::attend(const ag::Var& x, const ag::Var& position_bias, const Tensor& key_padding_mask) {
  profile::Scope timed("attention");
  return dropout1->forward(self_attn->forward(x, position_bias, key_padding_mask));
}

ag::Var EncoderLayer::forward(const ag::Var& x_in, const ag::Var& position_bias, const Tensor& key_padding_mask) {
  // Profiler parts: attention, mlp, norms (both layer norms); the residual sums count as the block's own time.
  auto norm = [](const std::shared_ptr<nn::LayerNorm>& ln, const ag::Var& v) {
    profile::Scope timed("norms");
    return ln->forward(v);
  };
  ag::Var x = x_in;
  if (cfg.layer_norm_first) {
    ag::Var residual = x;
    x = norm(self_attn_layer_norm, x);
    x = ag::add(residual, attend(x, position_bias, key_padding_mask));
    residual = x;
    x = norm(final_layer_norm, x);
    return ag::add(residual, mlp(x));
  }
  // official post-LN: x = LN(residual * alpha + f(x)), alpha = (2 * layers)^(1/4) with deep norm, else 1.
  const float alpha = static_cast<float>(cfg.deep_norm_alpha());
  auto scaled = [alpha](const ag::Var& r) { return alpha == 1.0f ? r : ag::mul(r, alpha); };
  ag::Var residual = x;
  x = ag::add(scaled(residual), attend(x, position_bias, key_padding_mask));
  x = norm(self_attn_layer_norm, x);
  residual = x;
  x = ag::add(scaled(residual), mlp(x));
  return norm(final_layer_norm, x);
}

// ---- TransformerEncoder ----

TransformerEncoder::TransformerEncoder(const BeatsConfig& c) : nn::Module("TransformerEncoder"), cfg(c) {
  cfg.validate();
  const int64_t C = cfg.encoder_embed_dim;
  nn::Conv1dOptions o;
  o.in_channels = o.out_channels = C;
  o.kernel_size = cfg.conv_pos;
  o.padding = cfg.conv_pos / 2;
  o.groups = cfg.conv_pos_groups;
  o.bias = true;
  o.weight_norm_dim = 2;  // official: weight_norm(pos_conv, name="weight", dim=2)
  pos_conv = register_module("pos_conv", std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::UnaryModule>>{
                                             std::make_shared<nn::Conv1d>(o), std::make_shared<SamePad>(cfg.conv_pos),
                                             std::make_shared<nn::GELU>()}));
  layers = register_module("layers", std::make_shared<nn::ModuleList>());
  for (int64_t i = 0; i < cfg.encoder_layers; ++i) layers->push_back(std::make_shared<EncoderLayer>(cfg));
  if (cfg.relative_position_embedding) {
    auto table = layer(0)->self_attn->relative_attention_bias;
    for (int64_t i = 1; i < cfg.encoder_layers; ++i) layer(i)->self_attn->share_relative_bias(table);
  }
  layer_norm = register_module("layer_norm", std::make_shared<nn::LayerNorm>(C));
}

std::shared_ptr<nn::Module> TransformerEncoder::create_like() const {
  return std::make_shared<TransformerEncoder>(cfg);
}

ag::Var TransformerEncoder::embed_positions(const ag::Var& x_in, const Tensor& padding_mask) {
  ag::Var x = x_in;
  {
    profile::Scope timed("pos_conv");
    // official: x[padding_mask] = 0 before the positional convolution.
    if (padding_mask.defined()) x = ag::masked_fill(x, padding_mask.unsqueeze(-1), 0.0f);
    ag::Var conv = pos_conv->forward(ag::transpose(x, 1, 2));  // [B, C, T]
    x = ag::add(x, ag::transpose(conv, 1, 2));
  }
  profile::Scope timed("input_norm");
  if (!cfg.layer_norm_first) x = layer_norm->forward(x);
  if (is_training() && cfg.dropout > 0.0) x = ag::dropout(x, static_cast<float>(cfg.dropout), nn::rng(), true);
  return x;
}

EncoderOutput TransformerEncoder::forward(const ag::Var& x_in, const Tensor& padding_mask, const EncoderOptions& opts) {
  const int64_t C = cfg.encoder_embed_dim;
  SONAR_CHECK(x_in.dim() == 3 && x_in.size(2) == C, "TransformerEncoder: input must be [B, T, ", C, "], got ",
              shape_str(x_in.shape()));
  const int64_t B = x_in.size(0), T = x_in.size(1);
  if (padding_mask.defined())
    SONAR_CHECK(padding_mask.shape() == (Shape{B, T}), "TransformerEncoder: padding mask must be ",
                shape_str({B, T}), ", got ", shape_str(padding_mask.shape()));
  const int64_t L = cfg.encoder_layers;
  SONAR_CHECK(opts.num_layers >= 0 && opts.num_layers <= L, "TransformerEncoder: num_layers ", opts.num_layers,
              " outside 0..", L);
  const int64_t run = opts.num_layers == 0 ? L : opts.num_layers;
  profile::Scope timed("encoder");  // profiler parts inside: pos_conv, input_norm, relative_bias, layers.N

  EncoderOutput out;
  ag::Var x = embed_positions(x_in, padding_mask);
  if (opts.layer_results) out.layer_results.push_back(x);
  // official: layer 0 computes the bias and hands it to every later layer; computed once here.
  ag::Var bias;
  if (cfg.relative_position_embedding) {
    profile::Scope timed_bias("relative_bias");
    bias = layer(0)->self_attn->compute_bias(T, T);
  }
  const float decay = static_cast<float>(cfg.layer_wise_gradient_decay_ratio);
  for (int64_t i = 0; i < run; ++i) {
    if (decay != 1.0f) x = grad_multiply(x, decay);
    // official layer drop: a block is skipped in training with probability encoder_layerdrop.
    const bool skip = is_training() && cfg.encoder_layerdrop > 0.0 && nn::rng().next_uniform() <= cfg.encoder_layerdrop;
    if (!skip) {
      profile::Scope timed_layer("layers", i);
      x = layer(i)->forward(x, bias, padding_mask);
    }
    if (opts.layer_results) out.layer_results.push_back(x);
  }
  if (cfg.layer_norm_first && opts.num_layers == 0) {
    profile::Scope timed_norm("final_norm");
    x = layer_norm->forward(x);
  }
  out.x = x;
  return out;
}

}  // namespace sonar::beats
