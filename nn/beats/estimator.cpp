// Tokenizer estimator (see nn/beats/estimator.h).
#include "nn/beats/estimator.h"

#include "nn/beats/label_predictor.h"
#include "nn/init.h"

namespace sonar::beats {

namespace {
BeatsConfig estimator_config(const BeatsConfig& c, const EstimatorOptions& o) {
  SONAR_CHECK(o.layers > 0, "TokenizerEstimator: layers = ", o.layers, " must be positive");
  SONAR_CHECK(c.quant_dim > 0, "TokenizerEstimator: quant_dim = ", c.quant_dim, " must be positive");
  BeatsConfig e = c;
  e.encoder_layers = o.layers;
  e.encoder_layerdrop = 0.0;
  e.layer_wise_gradient_decay_ratio = 1.0;
  return e;
}
}  // namespace

TokenizerEstimator::TokenizerEstimator(const BeatsConfig& tcfg, const EstimatorOptions& o, Generator* gen)
    : nn::Module("TokenizerEstimator"),
      cfg(estimator_config(tcfg, o)),
      opts(o),
      target_dim(o.target_dim > 0 ? o.target_dim : tcfg.encoder_embed_dim) {
  const int64_t C = cfg.encoder_embed_dim;
  input_proj = register_module("input_proj", std::make_shared<nn::Linear>(cfg.quant_dim, C));
  encoder = register_module("encoder", std::make_shared<TransformerEncoder>(cfg));
  output_proj = register_module("output_proj", std::make_shared<nn::Linear>(C, target_dim));
  if (gen) {
    input_proj->reset_parameters(*gen);
    init_transformer_encoder(*encoder, *gen);
    output_proj->reset_parameters(*gen);
  }
}

std::shared_ptr<nn::Module> TokenizerEstimator::create_like() const {
  EstimatorOptions o = opts;
  o.target_dim = target_dim;
  return std::make_shared<TokenizerEstimator>(cfg, o);
}

ag::Var TokenizerEstimator::forward(const ag::Var& q, const Tensor& padding) {
  SONAR_CHECK(q.dim() == 3 && q.size(2) == cfg.quant_dim, "TokenizerEstimator: input must be [B, P, ", cfg.quant_dim,
              "], got ", shape_str(q.shape()));
  ag::Var x = input_proj->forward(q);
  x = encoder->forward(x, padding).x;
  return output_proj->forward(x);
}

}  // namespace sonar::beats
