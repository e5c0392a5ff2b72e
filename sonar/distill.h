// Dual-source self-distillation, the second SONAR part: two frozen teachers keep the adapting model close to
// what it knew.
//  - Model level: a frozen copy of the start model (eval mode) encodes exactly the student's visible patches
//    (same input, same masking: no second data pass); at each chosen block l the student's per-patch output
//    h_s is pulled to the teacher's h_t over the real visible patches:
//      cosine: L = mean_rows 0.5 * || h_s/|h_s| - h_t/|h_t| ||^2   (= 1 - cos; exactly 0 when h_s == h_t)
//      mse:    L = mean_rows,dims (std(h_s) - std(h_t))^2, std(.) standardising each row (zero mean, unit
//              variance, no affine)
//    averaged over the chosen blocks, weighted by model_weight.
//  - Tokenizer level: an auxiliary output head of the label predictor (LabelPredictor::add_aux_head) predicts
//    the frozen start tokenizer's labels (StepBatch::start_labels) of the masked patches, cross-entropy with the
//    objective's label smoothing, weighted by tokenizer_weight; the main head follows the adapting tokenizer
//    (sonar/codebook.h). The auxiliary head starts as a copy of the main head (whose targets were the start
//    tokenizer's labels), so the term starts where the start model's predictor was.
//
// Not here: the adapting codebook (sonar/codebook.h), replay (sonar/replay.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sonar/trainer.h"

namespace sonar::method {

struct SelfDistillOptions {
  double model_weight = 1.0;        // weight of the model-level term (0: off)
  std::vector<int64_t> layers;      // blocks distilled, 1-based (empty: the last block)
  std::string loss = "cosine";      // cosine | mse
  double tokenizer_weight = 1.0;    // weight of the tokenizer-level term (0: off)
};

// Throws one line naming the option out of range. Defined in sonar/method_options.cpp with the flags.
void validate(const SelfDistillOptions& o);

// The model-level loss between per-row features, as above: student [N, C] (differentiable), teacher [N, C]
// (constant). Exposed for tests.
ag::Var feature_distill_loss(const ag::Var& student, const Tensor& teacher, const std::string& loss);

class SelfDistillExtension : public TrainerExtension {
 public:
  explicit SelfDistillExtension(SelfDistillOptions o);
  std::string name() const override { return "distill"; }
  bool data_parallel() const override { return true; }
  nlohmann::json config() const override;
  void prepare(Trainer& trainer) override;
  void attach(Trainer& trainer) override;
  ag::Var extra_loss(const StepBatch& batch, const beats::MlpOutput& out) override;
  std::vector<std::pair<std::string, double>> progress() override;

  // The last step's unweighted terms (tests).
  double last_model_loss() const { return last_model_; }
  double last_tokenizer_loss() const { return last_tok_; }

 private:
  SelfDistillOptions o_;
  Trainer* trainer_ = nullptr;
  std::shared_ptr<beats::BeatsModel> teacher_;
  double last_model_ = 0.0, last_tok_ = 0.0;
  double sum_model_ = 0.0, sum_tok_ = 0.0, sum_acc_ = 0.0;
  int64_t n_ = 0;
};

}  // namespace sonar::method
