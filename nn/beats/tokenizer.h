// The BEATs acoustic tokenizer (official Tokenizers.py): the BEATs backbone, then quantize_layer
// (Linear C -> C, Tanh, Linear C -> quant_dim) and the NormEMA codebook quantizer; the label of a patch is
// its nearest code. Names: post_extract_proj, patch_embedding, encoder, layer_norm, quantize.*, quantize_layer.*.
// Like the official code, the padding mask reaches the encoder but every patch gets a label.
// Not here: tokenizer training (the estimator and distillation losses live with the pre-training code).
#pragma once
#include <memory>

#include "nn/beats/beats.h"
#include "nn/beats/quantizer.h"

namespace sonar::beats {

struct TokenizerOutput {
  Tensor labels;           // int64 [B, P]
  ag::Var quantize_input;  // [B, P, quant_dim], L2-normalised (what the codebook is searched with)
  ag::Var z_q;             // straight-through quantised [B, P, quant_dim]
  ag::Var loss;            // the quantizer's commitment loss
  Features features;       // encoder output and padding mask
};

class BeatsTokenizer : public BeatsBackbone {
 public:
  // gen: initialise as the official code does (codebook uninitialised: k-means on the first training
  // batch); null: zeros, to be loaded.
  explicit BeatsTokenizer(const BeatsConfig& cfg, Generator* gen = nullptr);
  TokenizerOutput tokenize_fbank(const ag::Var& fbank, const Tensor& frame_mask = Tensor(),
                                 const FeatureOptions& opts = {});
  // The official extract_labels: waveforms [B, S] (or [S]) with an optional padding mask [B, S].
  TokenizerOutput extract_labels(const Tensor& wave, const Tensor& padding_mask = Tensor(),
                                 const FeatureOptions& opts = {});

  std::shared_ptr<NormEMAVectorQuantizer> quantize;
  std::shared_ptr<nn::Sequential> quantize_layer;

 protected:
  std::shared_ptr<nn::Module> create_like() const override;
};

}  // namespace sonar::beats
