// The online clustered codebook, the third SONAR part: the tokenizer adapts to the new domain without losing
// its encoder. The adapting tokenizer is a copy of the run's start tokenizer whose encoder and quantize_layer
// stay frozen, so the vectors it quantises are exactly the start tokenizer's (StepBatch::token_features);
// only its codebook moves:
//  - EMA: after every step, each code's vector follows the normalised mean of the real-patch features assigned
//    to it (decay 0.99, renormalised, as BEATs' NormEMA quantizer), and its usage (assignments per step) is
//    tracked by EMA (new and replayed clips alike).
//  - Dead codes (usage share below dead_usage / K) are re-initialised from the current batch's features, drawn
//    with probability proportional to their squared distance to the codebook (online clustering, as CVQ-VAE).
//  - Expansion: when more than novelty_share of a batch's features are farther than novelty_cos (cosine) from
//    every code, up to max_new_per_step new codes are added from those features (farthest first), until
//    max_codes. The label predictor's output layer and its AdamW moments grow with the codebook.
// The main prediction head's targets (StepBatch::labels) are the adapting codebook's labels (relabel hook).
// A re-initialised or added code's predictor row is, by default, a copy of the row of the code its anchor
// feature was assigned to before (its moments zeroed): the nearest old meaning is the best first guess.
//
// Health, on the progress line and in metrics.jsonl: codebook size, perplexity of usage, dead codes, codes
// re-initialised and added (since the last line). The adapted tokenizer is written to the run folder as
// tokenizer_adapted.safetensors at the end, so a second continual stage can start from it.
//
// Not here: the frozen start tokenizer's labels (the trainer), tokenizer-level distillation (sonar/distill.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "sonar/trainer.h"

namespace sonar::method {

constexpr const char* kAdaptedTokenizerFile = "tokenizer_adapted.safetensors";

struct CodebookOptions {
  std::string mode = "online";     // online | frozen (frozen: do not construct the extension)
  float decay = 0.99f;             // EMA decay of code vectors and usage
  double dead_usage = 0.03;        // a code is dead when its usage share < dead_usage / K
  double novelty_cos = 0.5;        // a feature is novel when its best cosine to the codebook is below this
  double novelty_share = 0.05;     // grow when more than this share of a batch's features is novel
  int64_t max_new_per_step = 4;    // codes added at most per step
  int64_t max_codes = 0;           // cap of the codebook size (0: 1.5 x the start size)
  int64_t warmup_steps = 20;       // no re-initialisation or growth before this many steps (usage settles)
  std::string new_rows = "nearest";  // predictor rows of new/re-initialised codes: nearest | fresh
  uint64_t seed = 0;
};

void validate(const CodebookOptions& o);

class OnlineCodebookExtension : public TrainerExtension {
 public:
  explicit OnlineCodebookExtension(CodebookOptions o);
  std::string name() const override { return "codebook"; }
  nlohmann::json config() const override;
  void attach(Trainer& trainer) override;  // throws when the run's tokenizer has no trained codebook
  void relabel(StepBatch& batch) override;
  void after_step(const StepBatch& batch, const beats::MlpOutput& out) override;
  std::vector<std::pair<std::string, double>> progress() override;
  void save_state(std::map<std::string, Tensor>& tensors, std::map<std::string, std::string>& meta) const override;
  void load_state(const std::map<std::string, Tensor>& tensors, const std::map<std::string, std::string>& meta) override;
  void finish(const std::string& out_dir) override;

  // For tests.
  const Tensor& codebook() const;  // [K, D]
  const Tensor& usage() const;     // [K] EMA of assignments per step

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace sonar::method
