// Task-relevant stratified replay, the first SONAR part: every training batch of new-domain clips gets extra
// clips from a prior pool (the stand-in for the original pre-training data, e.g. AudioSet), drawn so that the
// strata of the prior pool that resemble the new domain are replayed more, and no stratum vanishes.
//
// At the start of a run (fresh or resumed; in attach(), before the trainer writes anything) the frozen start
// model (Trainer::start_model) embeds every prior clip and a seeded sample of up to max_new_clips new-domain
// clips (the trainer's data): whole clips up to the trainer's max_clip_seconds, one clip per forward pass (so a
// clip's embedding never depends on the clips batched with it), eval mode, no gradients; the embedding is the
// mean over the clip's real patches (exact padding) of the output of encoder block `layer`. Clips too short for
// one patch, or unreadable, are listed in one line and left out; a pool with no usable clip is an error. A long
// embedding pass logs a progress line (clips done, time left) every kEmbedProgressSeconds and stops (an error)
// when the trainer's stop flag is set.
// Embeddings are cached on disk, one .npy (float32 [C]) per clip:
//   <cache_dir>/<model fingerprint>-L<layer>-<max_clip_seconds in ms>/<file content hash>.npy
// (model fingerprint: a hash of every state tensor's name and bytes; content hash: audio::hash_file), written
// atomically, so a rerun, a resume or another run from the same start model does not embed again. The default
// cache_dir is <run folder>/embeddings; its files are written once the trainer has created the run folder.
//
// Geometry (double precision, deterministic): embeddings are centred by the mean embedding of the prior pool
// (option `center`; mean-pooled transformer features share a large common direction that would otherwise make
// every cosine close to 1) and L2-normalised: u_i. Strata:
//   - labels: one stratum per label of the prior pool (a multi-label clip belongs to each of its labels'
//     strata; clips without a label, when some have one, form the stratum "(unlabelled)"), sorted by name;
//   - K: seeded cosine k-means (kmeans_pp) on the prior u_i, strata "cluster-<k>" (k-means never leaves a
//     cluster empty when there are at least K clips; with fewer clips K becomes the number of clips);
//   - auto: labels when at least kAutoLabelShare (90%) of the usable prior clips have a label, else 8 clusters.
// The centroid c_s of a stratum is the mean of its members' u_i. Relevance of stratum s: the mean over new
// clips n of softmax_s(cos(u_n, c_s) / temperature). Share of the replay budget:
//   share_s = (1 - floor) * relevance_s + floor / S,
// so every stratum keeps at least floor / S of the draws. Mode "uniform" is one stratum "all" holding every
// usable prior clip (relevance 1, share 1; no embeddings are computed: the clips are only read once to check
// them). Mode "none" means no replay: do not construct the extension.
//
// Draws: step t (the steps done before it) with B new clips gets R = round(ratio * B) prior clips; slot j of
// step t draws from Generator(random_bits(random_bits(seed', t), j)) (seed' = random_bits(seed, "DRAW")): a
// uniform number picks the stratum by cumulative share, an integer picks a member uniformly, a 64-bit value
// seeds its crop window (trainer.h crop_windows: same crop length as the batch). Draws depend only on
// (seed, step, slot), so a resumed run replays exactly what a straight run would; the checkpoint stores the
// plan's fingerprint (strata, members, shares, seed) and a resume whose plan differs (e.g. the prior files
// changed) is refused. The crops are appended to the batch (StepBatch::fbank / frame_mask, concatenated along
// B); the masked-label loss and every other term cover them. A background audio::DataLoader reads the drawn
// clips of the coming steps ahead of the training thread (the trainer's loader_workers and prefetch_batches;
// strict: a prior file that vanished mid-run stops the run naming it).
//
// Data parallelism (sonar/distributed.h): every process builds the plan itself (same embeddings, same k-means;
// the plan fingerprints are compared across processes and a difference is an error), and only process 0
// writes cache entries and replay_plan.csv. With N processes holding B/N new clips each, the step's R =
// round(ratio * B) slots are split by rank: process r loads and appends slots [floor(r R / N),
// floor((r + 1) R / N)), drawn as above, so the global batch (new clips of every process, then the appended
// clips by rank) is one process's batch [new..., slot 0..R-1].
//
// Outputs: replay_plan.csv in the run folder (stratum, size, relevance, share, up to 3 example files), written
// atomically at the first step; log lines at start (embedding counts and time, left-out clips, then one
// summary: strata count, top 3 strata by share, replayed clips per step) and at the end (clips replayed, time
// the training thread waited for them). progress(): replay_share = replayed clips / all clips of the steps
// since the last call, over all processes.
//
// Not here: the other SONAR parts (sonar/distill.h, sonar/codebook.h), the loop (sonar/trainer.h).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
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
  bool center = true;                    // centre embeddings by the prior pool's mean before cosines
  int64_t segment_steps = 256;           // replayed clips are loaded by one DataLoader per this many steps (no
                                         // effect on the results)
  uint64_t seed = 0;                     // k-means and draws (the trainer's seed is mixed in)
};

// `auto` strata use the labels when at least this share of the usable prior clips has one.
constexpr double kAutoLabelShare = 0.9;
// `auto` strata without labels: this many k-means clusters.
constexpr int64_t kAutoClusters = 8;
constexpr const char* kReplayPlanFile = "replay_plan.csv";
// Seconds between progress lines while embedding.
constexpr double kEmbedProgressSeconds = 30.0;

// Throws a one-line error naming the option when it is out of range (mode, ratio, floor, temperature, strata,
// layer, max_new_clips). Defined in sonar/method_options.cpp with the flags (light: no training code).
void validate(const ReplayOptions& o);

// One stratum of the plan.
struct Stratum {
  std::string name;              // the label, "cluster-<k>", "(unlabelled)" or (uniform) "all"
  std::vector<int64_t> members;  // indices into the prior pool (as read, after prior_splits), ascending
  double relevance = 0.0;        // in [0, 1], sums to 1 over strata
  double share = 0.0;            // replay budget share, sums to 1
};

// One replayed clip.
struct ReplayDraw {
  int64_t stratum = 0;     // index into the plan
  int64_t item = 0;        // index into the prior pool
  uint64_t crop_seed = 0;  // seed of its crop window (crop_windows)
};

// ---- the pieces, exposed for tests ----

// Relevance of each stratum: mean over rows of new_emb of softmax_s(cos(new, centroid_s) / temperature).
// new_emb [N, D], centroids [S, D] (any norm; cosine is taken, a zero row has cosine 0). Returns S values summing
// to 1 (computed in double).
std::vector<double> stratum_relevance(const Tensor& new_emb, const Tensor& centroids, double temperature);
// Replay shares: (1 - floor) * relevance + floor / S.
std::vector<double> replay_shares(const std::vector<double>& relevance, double floor);
// Seeded cosine k-means with k-means++ initialisation on rows of emb [N, D] (1 <= k <= N); returns the cluster of
// each row. Init: the first centre is a uniformly drawn row, each next one a row drawn with probability
// proportional to its squared distance 2 - 2 cos to the nearest centre so far (uniformly when every distance is
// 0). Lloyd iterations (at most `iters`, until the assignment stops changing): each row goes to the centre of
// highest cosine (ties: lowest index), each centre becomes its members' normalised mean; a cluster left empty
// takes the row farthest (lowest cosine) from its own centre among clusters of two or more rows, so no cluster
// is empty. Double precision, serial: the same (emb, k, seed) gives the same result on any thread count.
std::vector<int64_t> kmeans_pp(const Tensor& emb, int64_t k, uint64_t seed, int iters = 20);

// 32 hex digits hashing every state tensor (name and bytes) of a module: the embedding cache's model key.
std::string module_fingerprint(const nn::Module& m);

struct EmbedOptions {
  int64_t layer = 0;           // block whose output is pooled (1-based; 0 = the last)
  double max_seconds = 60.0;   // clips are read from their start up to this length
  std::string cache_dir;       // embedding cache ("" = none)
  std::string fbank_cache_dir; // fbank cache for the loader ("" = none)
  int workers = 1;             // loader threads (0: load on the calling thread)
  // When set, cache entries are not written but handed over (path, embedding) for writing later.
  std::vector<std::pair<std::string, Tensor>>* deferred_writes = nullptr;
  // Called after each computed clip with (clips computed, clips to compute), on the calling thread.
  std::function<void(int64_t, int64_t)> progress;
  // When set and true, embedding stops with an error (the entries already written stay in the cache).
  const std::atomic<bool>* stop = nullptr;
};

struct ClipEmbeddings {
  Tensor emb;                       // float32 [N, C]: one row per usable clip, in dataset order
  std::vector<int64_t> items;       // the dataset index of each row
  std::vector<std::pair<std::string, std::string>> skipped;  // (path, reason) of clips left out
  int64_t computed = 0, cached = 0; // rows computed by the model / read from the cache
  double compute_seconds = 0.0;     // wall time of the computed rows (loading included)
};

// Embeds every clip of `ds` with `model` (eval mode, no gradients; the mode is restored): the mean over real
// patches of block `layer`'s output, one clip per forward pass, whole clips up to max_seconds. Cached entries are
// read instead of computed; a cache entry that cannot be read is recomputed. Clips too short for one patch or
// unreadable are skipped (listed in `skipped`), never an error.
ClipEmbeddings embed_clips(beats::BeatsBackbone& model, const audio::Dataset& ds, const EmbedOptions& o);

struct ReplayStats {
  int64_t prior_clips = 0, prior_usable = 0, new_embedded = 0;
  int64_t computed = 0, cached = 0;   // embeddings computed / read from the cache (prior and new)
  double embed_seconds = 0.0;         // wall time of the computed ones
  int64_t replayed = 0;               // clips appended so far (this session; by all processes)
  double wait_seconds = 0.0;          // training-thread time spent waiting for replayed clips (this session)
};

class ReplayExtension : public TrainerExtension {
 public:
  explicit ReplayExtension(ReplayOptions o);
  std::string name() const override { return "replay"; }
  bool data_parallel() const override { return true; }
  nlohmann::json config() const override;
  void attach(Trainer& trainer) override;
  void on_batch(StepBatch& batch) override;
  std::vector<std::pair<std::string, double>> progress() override;  // replay_share: replayed / all clips
  void finish(const std::string& out_dir) override;
  void save_state(std::map<std::string, Tensor>& tensors, std::map<std::string, std::string>& meta) const override;
  void load_state(const std::map<std::string, Tensor>& tensors,
                  const std::map<std::string, std::string>& meta) override;

  const std::vector<Stratum>& plan() const;
  // The prior pool as read (after prior_splits); Stratum::members and ReplayDraw::item index it.
  const audio::Dataset& prior_pool() const;
  // The draw of slot `slot` of step `step` (valid after attach).
  ReplayDraw draw(int64_t step, int64_t slot) const;
  // 32 hex digits over the strata, members, shares, mode and seed: what a resume must find unchanged.
  std::string plan_fingerprint() const;
  ReplayStats stats() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace sonar::method
