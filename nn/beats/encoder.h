// The BEATs transformer encoder exactly as the official backbone.py computes it, with its parameter names:
//   TransformerEncoder  pos_conv.0 (Conv1d, weight-normalised over dim 2, padding conv_pos/2, groups),
//                       layers.N (EncoderLayer), layer_norm
//   EncoderLayer        self_attn, self_attn_layer_norm, fc1, fc2, final_layer_norm (post-LN deep-norm
//                       blocks, or pre-LN blocks with layer_norm_first)
//   MultiheadAttention  k_proj, v_proj, q_proj, out_proj, relative_attention_bias (layer 0's table, shared
//                       by every layer), grep_linear and grep_a (the gated relative position bias)
// Shapes: x [B, T, C] with T patches and C = encoder_embed_dim; H heads of D = C / H.
// Not here: the patch embedding and heads (nn/beats/beats.h), the attention kernel (tensor/attention.h).
#pragma once
#include <memory>
#include <vector>

#include "nn/beats/config.h"
#include "nn/layers.h"

namespace sonar::beats {

// Bucket of each relative position (key - query) for a [T, S] attention, int64 [T, S]: half the buckets
// for each direction, exact below num_buckets/4, logarithmic up to max_distance, computed in float32 as the
// official _relative_positions_bucket does.
Tensor relative_position_buckets(int64_t query_len, int64_t key_len, int64_t num_buckets, int64_t max_distance);
// The same buckets once per offset, int64 [T + S - 1]: element j is the bucket of key - query = j - (T - 1)
// (row t of the [T, S] table is elements T - 1 - t .. T - 2 - t + S).
Tensor relative_position_buckets_by_offset(int64_t query_len, int64_t key_len, int64_t num_buckets,
                                           int64_t max_distance);

// Identity forward, gradient multiplied by `scale` (fairseq's GradMultiply).
ag::Var grad_multiply(const ag::Var& x, float scale);

// Drops the last time step when the kernel size is even (fairseq's SamePad): x [B, C, L] -> [B, C, L - 1].
class SamePad : public nn::UnaryModule {
 public:
  explicit SamePad(int64_t kernel_size) : nn::UnaryModule("SamePad"), kernel_size(kernel_size) {}
  ag::Var forward(const ag::Var& x) override;
  const int64_t kernel_size;

 protected:
  std::shared_ptr<nn::Module> create_like() const override { return std::make_shared<SamePad>(kernel_size); }
};

class MultiheadAttention : public nn::Module {
 public:
  // Every layer builds its own relative_attention_bias table (as official); the encoder then replaces the
  // tables of layers 1.. by layer 0's.
  explicit MultiheadAttention(const BeatsConfig& cfg);
  // x [B, T, C]; position_bias [H, T, T], relative [H, 2T - 1] (tensor/attention.h) or undefined;
  // key_padding_mask [B, T] or undefined.
  ag::Var forward(const ag::Var& x, const ag::Var& position_bias, const Tensor& key_padding_mask);
  // The bias from the relative_attention_bias table (gradient flows into the table) in the attention
  // kernel's relative form [H, T + S - 1]: bias[h, t, s] = result[h, s - t + T - 1]. The official code
  // builds the [H, T, S] expansion of these values; the kernel reads the same values without it.
  ag::Var compute_bias(int64_t query_len, int64_t key_len) const;
  // The per-query gate [B, H, T] that scales the relative position bias (gru_rel_pos).
  ag::Var gate(const ag::Var& q) const;

  const BeatsConfig cfg;
  std::shared_ptr<nn::Linear> k_proj, v_proj, q_proj, out_proj, grep_linear;
  std::shared_ptr<nn::Embedding> relative_attention_bias;  // null unless relative positions are on
  ag::Var grep_a;                                          // [1, H, 1, 1] with gru_rel_pos

  // Used by the encoder to share layer 0's table.
  void share_relative_bias(std::shared_ptr<nn::Embedding> table);

 protected:
  std::shared_ptr<nn::Module> create_like() const override;
};

// fc1 of activation_fn = "glu": a linear layer to twice the width, the first half gated by swish of the
// second (parameters fc1.linear.*).
class GLULinear : public nn::UnaryModule {
 public:
  GLULinear(int64_t in, int64_t out);
  ag::Var forward(const ag::Var& x) override;
  const int64_t in, out;
  std::shared_ptr<nn::Linear> linear;

 protected:
  std::shared_ptr<nn::Module> create_like() const override;
};

class EncoderLayer : public nn::Module {
 public:
  explicit EncoderLayer(const BeatsConfig& cfg);
  ag::Var forward(const ag::Var& x, const ag::Var& position_bias, const Tensor& key_padding_mask);

  const BeatsConfig cfg;
  std::shared_ptr<MultiheadAttention> self_attn;
  std::shared_ptr<nn::LayerNorm> self_attn_layer_norm, final_layer_norm;
  std::shared_ptr<nn::UnaryModule> fc1;  // Linear, or GLULinear for "glu"
  std::shared_ptr<nn::Linear> fc2;
  std::shared_ptr<nn::Dropout> dropout1, dropout2, dropout3;

 protected:
  std::shared_ptr<nn::Module> create_like() const override;

 private:
  ag::Var activation(const ag::Var& x) const;
  ag::Var attend(const ag::Var& x, const ag::Var& position_bias, const Tensor& key_padding_mask);  // + dropout1
  ag::Var mlp(const ag::Var& x);  // fc1, activation, dropout2, fc2, dropout3
};

struct EncoderOptions {
  // Fill EncoderOutput::layer_results: [0] = the input of the first block (after the positional
  // convolution), [i] = the output of block i.
  bool layer_results = false;
  // Stop after this many blocks (1..layers) and return that block's output, without the final pre-LN
  // layer norm (the official tgt_layer); 0 = run every block.
  int64_t num_layers = 0;
};

struct EncoderOutput {
  ag::Var x;                          // [B, T, C]
  std::vector<ag::Var> layer_results;  // when requested
};

class TransformerEncoder : public nn::Module {
 public:
  explicit TransformerEncoder(const BeatsConfig& cfg);
  // x [B, T, C]; padding_mask bool [B, T] (1 = padding) or undefined: padded positions are zeroed before the
  // positional convolution and masked as keys in every attention.
  EncoderOutput forward(const ag::Var& x, const Tensor& padding_mask, const EncoderOptions& opts = {});
  // x + GELU(conv(x)) (and the post-LN layer norm when !layer_norm_first): the input of the first block.
  ag::Var embed_positions(const ag::Var& x, const Tensor& padding_mask);

  const BeatsConfig cfg;
  // pos_conv = Sequential(Conv1d (weight-normalised), SamePad, GELU), as official (names pos_conv.0.*).
  std::shared_ptr<nn::Sequential> pos_conv;
  std::shared_ptr<nn::ModuleList> layers;
  std::shared_ptr<nn::LayerNorm> layer_norm;
  std::shared_ptr<EncoderLayer> layer(size_t i) const { return layers->at<EncoderLayer>(i); }

 protected:
  std::shared_ptr<nn::Module> create_like() const override;
};

}  // namespace sonar::beats
