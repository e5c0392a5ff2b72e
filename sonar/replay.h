// Task-relevant stratified replay, the first SONAR part: every training batch of new-domain clips gets extra
// clips from a prior pool (the stand-in for the original pre-training data, e.g. AudioSet), drawn so that the
// strata of the prior pool that resemble the new domain are replayed more, and no stratum vanishes.
//
// At the start of a run (fresh or resumed) the frozen start model (Trainer::start_model) embeds every prior
// clip and the new-domain clips: the mean over the real (non-padded, exact padding) patches of one encoder
// layer's output. Embeddings are cached on disk, keyed by the model's fingerprint, the layer and each file's
// content, so a rerun does not embed again. Strata: the prior pool's labels (a multi-label clip belongs to each
// of its labels' strata) or seeded k-means (k-means++ initialisation, cosine) on the prior embeddings.
// Relevance of stratum s: the mean over new clips of softmax_s(cos(e_new, c_s) / temperature), c_s the
// stratum's mean embedding. Share of the replay budget: (1 - floor) * relevance_s + floor / S. Each step draws
// round(ratio * B) prior clips: a stratum by its share, then a clip of it uniformly; draws depend only on
// (seed, step, slot), so a resumed run replays exactly what a straight run would. Their crops (same length as
// the batch) are appended to the batch; the masked-label loss (and every other term) covers them.
//
// The plan is written to the run folder as replay_plan.csv (stratum, size, relevance, share, example files)
// and summarised in one progress line. Ablations: mode "uniform" (prior clips uniformly at random, no strata),
// "none" (no replay: do not construct the extension).
//
// Not here: the other SONAR parts (sonar/distill.h, sonar/codebook.h), the loop (sonar/trainer.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sonar/trainer.h"

namespace sonar::method {

struct ReplayOptions {
  std::string mode = "stratified";       // stratified | uniform | none
  std::string prior;                     // prior pool: MANIFEST | DIR | LIST (audio::read_source)
  std::vector<std::string> prior_splits; // keep only these splits of the prior pool (empty: all)
  std::string strata = "auto";           // "labels", a number K of k-means clusters, or "auto" (labels when the
                                         // pool has them, else 8 clusters)
  double ratio = 0.25;                   // replayed clips per step = round(ratio * batch), ratio in [0, 1]
  double floor = 0.2;                    // share = (1 - floor) * relevance + floor / S, floor in [0, 1]
  double temperature = 0.1;              // softmax temperature of the relevance
  int64_t layer = 0;                     // encoder block whose output is embedded (1-based; 0 = the last)
  std::string cache_dir;                 // embedding cache ("" = <run folder>/embeddings)
  int64_t max_new_clips = 2000;          // new-domain clips embedded for the relevance (a seeded sample; 0 = all)
  uint64_t seed = 0;                     // k-means and draws (the trainer's seed is mixed in)
};

// Throws a one-line error naming the option when it is out of range (ratio, floor, temperature, strata).
void validate(const ReplayOptions& o);

// One stratum of the plan.
struct Stratum {
  std::string name;              // the label, or "cluster-<k>"
  std::vector<int64_t> members;  // indices into the prior pool
  double relevance = 0.0;        // in [0, 1], sums to 1 over strata
  double share = 0.0;            // replay budget share, sums to 1
};

// ---- the pieces, exposed for tests ----

// Relevance of each stratum: mean over rows of new_emb of softmax_s(cos(new, centroid_s) / temperature).
// new_emb [N, D], centroids [S, D] (any norm; cosine is taken). Returns S values summing to 1.
std::vector<double> stratum_relevance(const Tensor& new_emb, const Tensor& centroids, double temperature);
// Replay shares: (1 - floor) * relevance + floor / S.
std::vector<double> replay_shares(const std::vector<double>& relevance, double floor);
// Seeded cosine k-means with k-means++ initialisation on rows of emb [N, D]; returns the cluster of each row.
std::vector<int64_t> kmeans_pp(const Tensor& emb, int64_t k, uint64_t seed, int iters = 20);

class ReplayExtension : public TrainerExtension {
 public:
  explicit ReplayExtension(ReplayOptions o);
  std::string name() const override { return "replay"; }
  nlohmann::json config() const override;
  void attach(Trainer& trainer) override;
  void on_batch(StepBatch& batch) override;
  std::vector<std::pair<std::string, double>> progress() override;  // replay_share: replayed / all clips
  const std::vector<Stratum>& plan() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace sonar::method
