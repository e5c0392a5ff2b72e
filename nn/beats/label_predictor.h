// The label predictor of BEATs' masked label prediction: a small transformer that gets the encoder's outputs
// at the visible patches plus a learnt mask token at every masked patch, in the clip's original patch order,
// and predicts the tokenizer's label of each masked patch through a linear output layer that can grow (the
// SONAR online codebook adds codes, and so output rows, during training).
//
// Positional information: the predictor's transformer is a BEATs TransformerEncoder of its own (nn/beats/
// encoder.h), so it carries BEATs' two positional mechanisms over the full, restored sequence: the
// convolutional positional embedding (x + GELU(conv(x)) with its own weights) and, when the configuration has
// it, the gated relative position bias in every block. There is no absolute position table, so clips of any
// length work.
//
// Also here: the BEiT/BEATs-style initialisation of a fresh TransformerEncoder (init_bert_params, deep-norm
// gains, weight-normalised positional convolution), and resizing an optimiser's state after a layer grew.
// Not here: masking (nn/beats/pretrain_mask.h), the loss (nn/beats/pretrain.h), the tokenizer.
#pragma once
#include <memory>

#include "autograd/optim.h"
#include "nn/beats/config.h"
#include "nn/beats/encoder.h"
#include "nn/beats/pretrain_mask.h"
#include "nn/layers.h"

namespace sonar::beats {

// Initialises a freshly built encoder as the official BEATs code does: every Linear N(0, 0.02) with zero bias,
// the relative position table N(0, 0.02), then with deep_norm xavier-normal q/k projections (gain 1) and
// v/out/fc1/fc2 (gain (8 * layers)^(-1/4)); the positional convolution N(0, sqrt(4 (1 - dropout) / (K C)))
// with zero bias, split into weight_g / weight_v as weight normalisation does. Layer norms are left at 1 / 0.
void init_transformer_encoder(TransformerEncoder& enc, Generator& gen);

// y = x W^T + b with W [out, in] whose number of output rows can grow (parameter names weight, bias).
// A grown layer keeps every existing row; clone() and load_state_dict() follow the current size.
class GrowableLinear : public nn::UnaryModule {
 public:
  GrowableLinear(int64_t in_features, int64_t out_features, Generator* gen = nullptr);
  ag::Var forward(const ag::Var& x) override;
  // Weights truncated-normal(0, 0.02) in [-0.04, 0.04], bias zero (BEiT's head initialisation).
  void reset_parameters(Generator& gen);
  // Appends rows: `rows` float32 [n, in] (and bias zero), or, with an undefined tensor, n rows drawn as in
  // reset_parameters. The weight and bias Vars keep their identity (their values are replaced), so
  // optimisers keep pointing at them; call grow_optimizer_state() for their moments.
  void add_rows(int64_t n, const Tensor& rows, Generator* gen = nullptr);
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return weight.size(0); }

  ag::Var weight, bias;

 protected:
  std::shared_ptr<nn::Module> create_like() const override;
  void before_load(const std::string& prefix, const std::map<std::string, Tensor>& source) override;

 private:
  int64_t in_;
};

// After parameters grew along dim 0 (GrowableLinear::add_rows), pads every per-parameter buffer the
// optimiser keeps for them ("exp_avg", "exp_avg_sq", "momentum_buffer") with zero rows, so that the next step
// works and treats the new rows as fresh. Call it before the next step (an optimiser whose buffers no longer
// match its parameters must not step). Throws when a buffer is larger than its parameter or differs beyond
// dim 0.
void grow_optimizer_state(ag::Optimizer& opt);

struct LabelPredictorOptions {
  int64_t layers = 3;          // transformer blocks (the BEATs paper's label predictor has 3)
  int64_t num_classes = 1024;  // tokenizer codebook size
};

class LabelPredictor : public nn::Module {
 public:
  // The blocks share the encoder's configuration (width, heads, FFN width, activation, deep norm, positional
  // settings, dropouts) with encoder_layers = opts.layers. gen: initialise (else zeros, to be loaded).
  LabelPredictor(const BeatsConfig& encoder_cfg, const LabelPredictorOptions& opts, Generator* gen = nullptr);

  // The predictor's input sequence [B, P, C]: row b, patch p holds visible[b, j] when p is the j-th visible
  // patch of clip b, else the mask token (padded patches too; the encoder zeroes and masks those).
  // visible [B, V, C] is the encoder output over masking.visible_index.
  ag::Var assemble(const ag::Var& visible, const PatchMasking& masking) const;
  // The transformer over the assembled sequence: hidden states [B, P, C].
  ag::Var hidden(const ag::Var& visible, const PatchMasking& masking);
  // Rows of the hidden states at the masked patches [N, C] (masking.masked_flat order).
  static ag::Var masked_rows(const ag::Var& hidden, const PatchMasking& masking);
  // Output layer: [..., C] -> [..., num_classes].
  ag::Var logits(const ag::Var& rows) { return head->forward(rows); }
  int64_t num_classes() const { return head->out_features(); }
  // Grows the output layer by n classes (see GrowableLinear::add_rows).
  void add_classes(int64_t n, const Tensor& rows = Tensor(), Generator* gen = nullptr) { head->add_rows(n, rows, gen); }

  // A second output layer over the same hidden states (child "aux_head", num_classes outputs, zeros until set),
  // e.g. SONAR's tokenizer-level self-distillation: the main head follows an adapting tokenizer while this one
  // keeps predicting the frozen start tokenizer's labels. Throws when there is one already.
  void add_aux_head(int64_t num_classes);
  ag::Var aux_logits(const ag::Var& rows);  // throws when there is no auxiliary head

  const BeatsConfig cfg;  // the predictor's own configuration (encoder_layers = opts.layers)
  const LabelPredictorOptions opts;
  ag::Var mask_emb;  // [C], the learnt mask token
  std::shared_ptr<TransformerEncoder> encoder;
  std::shared_ptr<GrowableLinear> head;
  std::shared_ptr<GrowableLinear> aux_head;  // null unless add_aux_head was called

 protected:
  std::shared_ptr<nn::Module> create_like() const override;
};

}  // namespace sonar::beats
