// BEATs tokenizer: backbone + quantize_layer + NormEMA quantizer (see nn/beats/tokenizer.h).
#include "nn/beats/tokenizer.h"

#include <utility>

namespace sonar::beats {

BeatsTokenizer::BeatsTokenizer(const BeatsConfig& c, Generator* gen) : BeatsBackbone(c, "Tokenizers") {
  // official: NormEMAVectorQuantizer(n_embed=quant_n, embedding_dim=quant_dim, beta=1.0, kmeans_init=True,
  // decay=0.99), registered before quantize_layer.
  quantize = register_module("quantize",
                             std::make_shared<NormEMAVectorQuantizer>(cfg.quant_n, cfg.quant_dim, 1.0f, 0.99f, 1e-5f, true));
  auto l1 = std::make_shared<nn::Linear>(cfg.encoder_embed_dim, cfg.encoder_embed_dim);
  auto l2 = std::make_shared<nn::Linear>(cfg.encoder_embed_dim, cfg.quant_dim);
  quantize_layer = register_module(
      "quantize_layer", std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::UnaryModule>>{
                            l1, std::make_shared<nn::Tanh>(), l2}));
  if (gen) {
    reset_parameters(*gen);
    l1->reset_parameters(*gen);
    l2->reset_parameters(*gen);
  }
}

std::shared_ptr<nn::Module> BeatsTokenizer::create_like() const { return std::make_shared<BeatsTokenizer>(cfg); }

namespace {
// The quantizer half shared by tokenize_fbank and extract_labels: quantize_layer, the codebook, labels [B, P].
TokenizerOutput quantize_features(BeatsTokenizer& tok, Features features) {
  TokenizerOutput out;
  out.features = std::move(features);
  const int64_t B = out.features.x.size(0), P = out.features.x.size(1);
  QuantizerOutput q = tok.quantize->forward(tok.quantize_layer->forward(out.features.x));
  out.quantize_input = q.z;
  out.z_q = q.z_q;
  out.loss = q.loss;
  out.labels = q.indices.reshape({B, P});
  return out;
}
}  // namespace

TokenizerOutput BeatsTokenizer::tokenize_fbank(const ag::Var& fbank, const Tensor& frame_mask,
                                               const FeatureOptions& opts) {
  return quantize_features(*this, forward_fbank(fbank, frame_mask, opts));
}

TokenizerOutput BeatsTokenizer::extract_labels(const Tensor& wave, const Tensor& padding_mask,
                                               const FeatureOptions& opts) {
  return quantize_features(*this, extract_features(wave, padding_mask, opts));
}

}  // namespace sonar::beats
