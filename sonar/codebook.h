// The online clustered codebook, the third SONAR part: the tokenizer adapts to the new domain without losing
// its encoder. The adapting tokenizer is a copy of the run's start tokenizer whose encoder and quantize_layer
// stay frozen, so the vectors it quantises are exactly the start tokenizer's (StepBatch::token_features);
// only its codebook moves. What it is, per step (x_n: the real, i.e. non-padded, patch features of the whole
// batch, new and replayed clips; w_k: the L2-normalised codes; a_n: x_n's nearest code before the step):
//  - Labels (relabel hook): StepBatch::labels = the nearest code of every patch in the ADAPTING codebook
//    (nn/beats/quantizer.h nearest_codes, i.e. the largest cosine). Padded patches get a label too (never a
//    target) but never enter any statistic below.
//  - EMA (after_step), BEATs' NormEMA quantizer rule: c_k = #{n: a_n = k}, u_k <- d u_k + (1 - d) c_k (usage,
//    assignments per step), and for each code with c_k > 0: w_k <- normalise(d w_k + (1 - d) normalise(mean_{a_n
//    = k} x_n)); codes with no assignment keep their vector exactly. d = decay (0.99). The usage starts from the
//    tokenizer's own usage statistic (quantize.cluster_size; if it is all zero, the k-means bin counts
//    embedding.cluster_size), rescaled at the first step to sum to that step's count of features.
//  - Dead codes (from step warmup_steps on): u_k / sum(u) < dead_usage / K. Each is re-initialised on an anchor
//    drawn from the batch's real features with probability proportional to D(x_n) = min_k |x_n - w_k|^2 (the
//    squared distance to the codebook after the EMA, dead codes included), k-means++ style: after each draw
//    D(x_n) <- min(D(x_n), |x_n - anchor|^2), so two dead codes never take the same anchor (online clustering,
//    as CVQ-VAE's anchors).
//    Dead codes are taken in index order; when every feature sits on a code (sum D = 0) the rest wait.
//  - Expansion (same steps, after re-initialisation): a feature is novel when its best cosine to the codebook
//    is below novelty_cos. When the novel share of the real features exceeds novelty_share, up to
//    max_new_per_step new codes are appended from the novel features, farthest (lowest best cosine) first,
//    skipping a feature whose cosine to a code added in this step is >= novelty_cos, until max_codes.
//  - A re-initialised or added code starts as the anchor (w = embed_avg = x) with the mean usage sum(u) / K, so
//    it has as long as an average code to collect features before it can be declared dead again.
//  - The label predictor's main head (trainer.objective()->predictor->head) has one row per code. For an added
//    code a row is appended and AdamW's moments grow with zero rows (as beats::grow_optimizer_state does); for
//    a re-initialised code its row is overwritten and that row's AdamW moments are zeroed (both in one
//    save_state / load_state round trip of the optimiser per event step). The row is, with
//    new_rows = nearest (default), a copy (weight and bias) of the row of the code its anchor feature was
//    assigned to in this step (the nearest old meaning is the best first guess), with new_rows = fresh a new
//    draw (BEiT head init: truncated normal std 0.02, bias 0).
// All draws come from generators seeded by (seed, step), so a resumed run makes the same choices.
// Data parallelism (sonar/distributed.h): every process holds the whole codebook and only its share of the
// batch. The EMA's counts and feature sums are summed across processes (double all-reduce), and on steps where
// a code is dead or the global novel share exceeds novelty_share the real features and their labels are
// gathered in one process's global order (new clips by rank, then added clips by rank), so every process draws
// the same anchors and new codes and changes the same predictor rows and moments (checked with an all-gather of
// the decisions).
//
// Health, on the progress line and in metrics.jsonl: codebook_size, perplexity (exp of the entropy of the usage
// share u / sum(u)), dead (codes under the threshold now), reinit and added (codes re-initialised and added since
// the last line), and novel_share: the share of the real features whose best cosine to the codebook (after the
// EMA, before re-initialisation) is below novelty_cos, averaged over the steps since the last line on which the
// codebook could still grow (absent when there were none: during the warm-up, or at max_codes). Growth needs it
// above novelty_share on a step. The adapted tokenizer (start tokenizer with the adapted codebook: weight, embed_avg, usage)
// is written to the run folder as tokenizer_adapted.safetensors at the end, so a second continual stage can
// start from it (--tokenizer RUN/tokenizer_adapted.safetensors).
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

// Throws one line naming the option out of range. Defined in sonar/method_options.cpp with the flags.
void validate(const CodebookOptions& o);

class OnlineCodebookExtension : public TrainerExtension {
 public:
  explicit OnlineCodebookExtension(CodebookOptions o);
  std::string name() const override { return "codebook"; }
  // Data-parallel: the EMA statistics are summed across processes and the draws see the global batch's
  // features (gathered on steps that can re-initialise or grow), so every process keeps the same codebook.
  bool data_parallel() const override { return true; }
  nlohmann::json config() const override;
  void attach(Trainer& trainer) override;  // throws when the run's tokenizer has no trained codebook
  void relabel(StepBatch& batch) override;
  void after_step(const StepBatch& batch, const beats::MlpOutput& out) override;
  std::vector<std::pair<std::string, double>> progress() override;
  void save_state(std::map<std::string, Tensor>& tensors, std::map<std::string, std::string>& meta) const override;
  void load_state(const std::map<std::string, Tensor>& tensors, const std::map<std::string, std::string>& meta) override;
  void finish(const std::string& out_dir) override;

  // For tests.
  const Tensor& codebook() const;   // [K, D]
  const Tensor& usage() const;      // [K] EMA of assignments per step
  const Tensor& embed_avg() const;  // [K, D]
  int64_t max_codes() const;        // the cap in force (known after attach)
  int64_t reinit_total() const;     // codes re-initialised since the run started
  int64_t added_total() const;      // codes added since the run started

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace sonar::method
