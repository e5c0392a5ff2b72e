// The tokenizer estimator of BEATs' tokenizer distillation: a small transformer that maps the tokenizer's
// quantised patch vectors back to the teacher model's last-layer features, so that the codebook is pushed to
// keep what the teacher knows. input_proj (quant_dim -> C), a BEATs TransformerEncoder of `layers` blocks
// (same positional mechanisms as the encoder: conv positional embedding and relative position bias), and
// output_proj (C -> teacher width).
// Not here: the quantizer and its codebook (nn/beats/quantizer.h), the loss (nn/beats/pretrain.h).
#pragma once
#include <memory>

#include "nn/beats/config.h"
#include "nn/beats/encoder.h"
#include "nn/layers.h"

namespace sonar::beats {

struct EstimatorOptions {
  int64_t layers = 3;         // the BEATs paper's estimator has 3 transformer blocks
  int64_t target_dim = -1;    // teacher feature width; -1 = the tokenizer config's encoder_embed_dim
};

class TokenizerEstimator : public nn::Module {
 public:
  // tokenizer_cfg: the tokenizer's configuration; the blocks take its width, heads, FFN width, activation,
  // norms and positional settings, and quant_dim as input width. gen: initialise (else zeros).
  TokenizerEstimator(const BeatsConfig& tokenizer_cfg, const EstimatorOptions& opts, Generator* gen = nullptr);
  // quantized [B, P, quant_dim], padding bool [B, P] or undefined -> [B, P, target_dim].
  ag::Var forward(const ag::Var& quantized, const Tensor& padding);

  const BeatsConfig cfg;  // the estimator's own configuration (encoder_layers = opts.layers)
  const EstimatorOptions opts;
  const int64_t target_dim;
  std::shared_ptr<nn::Linear> input_proj, output_proj;
  std::shared_ptr<TransformerEncoder> encoder;

 protected:
  std::shared_ptr<nn::Module> create_like() const override;
};

}  // namespace sonar::beats
