// BEATs' two pre-training objectives as reusable modules, and one optimiser step around any loss.
//
// MaskedLabelPrediction (the SSL model's objective): the clip's patches are embedded, 75% of each clip's real
// patches are masked (nn/beats/pretrain_mask.h), only the visible patch embeddings go through projection and
// encoder (gathered right after the patch embedding and its layer norm, so the encoder's convolutional
// positional embedding and relative position bias see the shorter, visible-only sequence in original
// order), and a LabelPredictor (nn/beats/label_predictor.h) puts the encoder outputs back at their patches
// with a learnt mask token everywhere else and predicts the tokenizer's label of every masked patch.
// Loss: cross-entropy with label smoothing 0.1 over the masked patches of the batch (padded patches are never
// targets); the masked accuracy is reported.
//
// TokenizerDistillation (the tokenizer's objective): the tokenizer (nn/beats/tokenizer.h: BEATs encoder,
// quantize_layer, NormEMA codebook) quantises every patch; a TokenizerEstimator (nn/beats/estimator.h) maps the
// straight-through quantised vectors to the teacher's last-layer features; loss = mean over real patches of
// (1 - cos(estimate, teacher)) + commitment_weight * mean over real patches of |z - sg(code)|^2 / D. The
// codebook itself is not trained by gradients: the quantizer's EMA updates it during the forward pass.
//
// TrainStep: zero gradients, forward + loss, backward, clip the global gradient norm, set the scheduled
// learning rate, AdamW step (ClippedAdamW: the clipping is folded into the update).
//
// Not here: the data pipeline, the SONAR extensions (self-distillation, codebook growth; sonar/), checkpoints.
#pragma once
#include <functional>
#include <memory>
#include <optional>

#include "autograd/optim.h"
#include "autograd/schedule.h"
#include "nn/beats/beats.h"
#include "nn/beats/estimator.h"
#include "nn/beats/label_predictor.h"
#include "nn/beats/pretrain_mask.h"
#include "nn/beats/tokenizer.h"

namespace sonar::beats {

constexpr float kLabelSmoothing = 0.1f;  // BEATs' cross-entropy label smoothing

// ---- masked label prediction ----

struct MlpOptions {
  MaskingOptions masking;  // 75% of each clip's real patches masked
  float label_smoothing = kLabelSmoothing;
  // How frame padding becomes patch padding. Exact (a padded clip's patches past its last full time patch
  // are padding) is the default for training; Official reproduces BEATs' quirky downsampling.
  PaddingMode padding = PaddingMode::Exact;
  LabelPredictorOptions predictor;  // 3 blocks, 1024 classes
  // Keep the encoder's per-block outputs over the visible patches (VisibleEncoding::layer_results), for
  // objectives that read intermediate layers (SONAR's model-level self-distillation).
  bool layer_results = false;
};

// The encoder's side of the objective: which patches were visible and what the encoder made of them.
struct VisibleEncoding {
  PatchMasking masking;
  ag::Var encoded;      // [B, V, C] encoder output over the visible patches
  Tensor patch_padding;  // bool [B, P] (1 = padded), undefined without a frame mask
  int64_t time_patches = 0, freq_patches = 0;
  // With MlpOptions::layer_results: [0] = the input of the first block, [i] = the output of block i, each
  // [B, V, C] over the visible patches (the last equals `encoded`).
  std::vector<ag::Var> layer_results;
};

// The visible half of the objective for a given masking: gather the visible patch embeddings, project, encode.
// Used by encode_visible after drawing the masking, and by a teacher that must see exactly the student's
// visible patches. fbank [B, T, F]; patch_padding bool [B, P] or undefined; masking from make_patch_masking.
// Returns encoded [B, V, C] (and the per-block outputs when layer_results is set).
VisibleEncoding encode_with_masking(BeatsBackbone& model, const ag::Var& fbank, const Tensor& patch_padding,
                                    const PatchMasking& masking, bool layer_results);

struct MlpOutput {
  ag::Var loss;                  // scalar: smoothed cross-entropy averaged over the N masked patches
  double masked_accuracy = 0.0;  // share of masked patches whose arg-max class is the label
  int64_t num_masked = 0;        // N
  VisibleEncoding visible;
  ag::Var predicted;  // [N, C] predictor hidden states at the masked patches (masking.masked_flat order)
  ag::Var logits;     // [N, K]
  Tensor targets;     // int64 [N]
};

class MaskedLabelPrediction : public nn::Module {
 public:
  // model: the BEATs model being pre-trained (registered as child "model"); the label predictor (child
  // "predictor") is built from model->cfg. gen: initialise the predictor (else zeros, to be loaded).
  MaskedLabelPrediction(std::shared_ptr<BeatsBackbone> model, const MlpOptions& opts, Generator* gen = nullptr);

  // fbank [B, T, F] normalised; frame_mask bool/uint8 [B, T] (1 = padded frame) or undefined; labels int64
  // [B, P] from the tokenizer (only masked real patches are read; each must lie in [0, K)). `gen` draws the
  // masking; dropout draws from nn::rng(). Throws when no patch of the batch is masked.
  MlpOutput forward(const ag::Var& fbank, const Tensor& frame_mask, const Tensor& labels, Generator& gen);
  // The same with a masking drawn by the caller (make_patch_masking over these clips' patch padding, or the
  // rows of a larger batch's masking: select_masking_rows). patch_padding bool [B, P] or undefined.
  MlpOutput forward_masked(const ag::Var& fbank, const Tensor& patch_padding, const Tensor& labels,
                           const PatchMasking& masking);
  // The patch padding (exact or official, per opts.padding) of a batch's frame mask; undefined without one.
  Tensor patch_padding(const ag::Var& fbank, const Tensor& frame_mask) const;
  // The masking of a batch with this patch padding, drawn from gen (what forward draws).
  PatchMasking draw_masking(const ag::Var& fbank, const Tensor& patch_padding, Generator& gen) const;
  // The encoder half alone (masking, gather, projection, encoder), for objectives that reuse it.
  VisibleEncoding encode_visible(const ag::Var& fbank, const Tensor& frame_mask, Generator& gen);

  const MlpOptions opts;
  std::shared_ptr<BeatsBackbone> model;
  std::shared_ptr<LabelPredictor> predictor;
  // Keep the encoder's per-block outputs (VisibleEncoding::layer_results); starts as opts.layer_results.
  bool layer_results = false;

 protected:
  std::shared_ptr<nn::Module> create_like() const override;
};

// ---- tokenizer distillation ----

struct DistillOptions {
  EstimatorOptions estimator;      // 3 blocks; target_dim = the teacher's width
  float commitment_weight = 1.0f;  // weight of the commitment term
  PaddingMode padding = PaddingMode::Exact;
};

struct DistillOutput {
  ag::Var loss;              // cosine_loss + commitment_weight * commitment
  ag::Var cosine_loss;       // mean over real patches of 1 - cos(estimate, teacher)
  ag::Var commitment;        // mean over real patches and dims of (z - sg(code))^2
  Tensor labels;             // int64 [B, P]: the tokenizer's labels of this batch, -1 at padded patches
  ag::Var estimate;          // [B, P, teacher width]
  Tensor patch_padding;      // bool [B, P] or undefined
  int64_t real_patches = 0;  // patches that entered the losses
  int64_t codes_used = 0;    // distinct labels among the real patches
};

class TokenizerDistillation : public nn::Module {
 public:
  // tokenizer: registered as child "tokenizer"; the estimator (child "estimator") maps quant_dim to
  // teacher_dim (opts.estimator.target_dim, or the tokenizer width when unset).
  TokenizerDistillation(std::shared_ptr<BeatsTokenizer> tokenizer, const DistillOptions& opts, Generator* gen = nullptr);

  // teacher: float32 [B, P, teacher_dim], the teacher's last-layer features of the same clips (see
  // teacher_features). In training mode the quantizer's EMA updates the codebook as a side effect, from the
  // real patches only (padded patches are never quantised: no label, no usage, no codebook update).
  DistillOutput forward(const ag::Var& fbank, const Tensor& frame_mask, const Tensor& teacher);

  // The teacher's last-layer features for the same input, without gradients, in eval mode (the teacher's
  // mode is restored afterwards).
  static Tensor teacher_features(BeatsBackbone& teacher, const Tensor& fbank, const Tensor& frame_mask,
                                 PaddingMode padding);

  const DistillOptions opts;
  std::shared_ptr<BeatsTokenizer> tokenizer;
  std::shared_ptr<TokenizerEstimator> estimator;

 protected:
  std::shared_ptr<nn::Module> create_like() const override;
};

// ---- one optimiser step ----

// Parameter groups for AdamW: weight decay on matrices and convolution kernels; none on biases, norms and
// other vectors, the mask token, weight-norm gains and the relative-position gates (grep_a).
std::vector<ag::ParamGroup> decay_param_groups(const nn::Module& m);

// AdamW with global-norm gradient clipping folded into the update: grad_norm() measures every gradient in
// one vectorised pass (double accumulation) and step_scaled(c) runs AdamW on c * g without writing the scaled
// gradients back, so clipping costs no extra pass over memory. The state (exp_avg, exp_avg_sq, step counts)
// and every update are those of ag::clip_grad_norm followed by ag::AdamW::step; the difference is that the
// gradients are left unscaled. Throws (before touching anything) when a moment buffer does not match its
// parameter, e.g. after a layer grew without grow_optimizer_state().
class ClippedAdamW : public ag::AdamW {
 public:
  using ag::AdamW::AdamW;
  double grad_norm() const;  // L2 norm of every defined gradient together
  // The same norm, taking each parameter's sum of squares from `known` (indexed like the optimiser's
  // parameters) where it is not NaN. Bit-identical to grad_norm() when `known` holds what it would compute.
  double grad_norm(const std::vector<double>& known) const;
  // A LeafGradReadyScope callback (autograd/var.h) that writes each parameter's gradient sum of squares into
  // sums[i] as the backward finishes it, while the gradient is still in cache; sums is resized to the number
  // of parameters and filled with NaN (not measured) first.
  ag::LeafGradReadyFn square_sums_hook(std::vector<double>& sums) const;
  void step_scaled(float grad_scale);
  void step() override { step_scaled(1.0f); }
};

struct TrainStepOptions {
  ag::AdamWOptions adamw;  // lr is used when no schedule is given
  float max_grad_norm = 1.0f;  // <= 0: no clipping (the norm is still measured)
  std::optional<ag::LrScheduleOptions> schedule;
};

struct StepStats {
  double loss = 0.0;
  double grad_norm = 0.0;  // before clipping
  double lr = 0.0;
  int64_t step = 0;  // optimiser steps taken before this one
};

class TrainStep {
 public:
  // The optimiser covers m's trainable parameters, grouped by decay_param_groups.
  TrainStep(const nn::Module& m, const TrainStepOptions& opts);
  // zero_grad, loss = forward_loss(), backward, after_backward (e.g. summing gradients across data-parallel
  // processes), clip, lr, AdamW step. Throws (before touching any parameter) when the loss or the gradient
  // norm is not finite. Gradients are left unclipped (the update is clipped).
  StepStats run(const std::function<ag::Var()>& forward_loss, const std::function<void()>& after_backward = {});
  ClippedAdamW& optimizer() { return *opt_; }
  int64_t steps_done() const { return step_; }
  const TrainStepOptions& options() const { return opts_; }

 private:
  TrainStepOptions opts_;
  std::unique_ptr<ClippedAdamW> opt_;
  std::optional<ag::LrSchedule> schedule_;
  std::vector<ag::Var> params_;  // the optimiser's parameters (their values feed the bf16 weight cache)
  int64_t step_ = 0;
};

}  // namespace sonar::beats
