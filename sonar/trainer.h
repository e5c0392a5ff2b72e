// Continual self-supervised pre-training of a BEATs model by masked label prediction: the training loop that
// `sonar pretrain` runs. With no extension this is DCPT (direct continual pre-training), the baseline the SONAR
// method is compared with: new, unlabelled audio only; the tokenizer's labels as targets; AdamW with warm-up and
// cosine decay; gradient clipping. The SONAR parts (sonar/replay.h, sonar/distill.h, sonar/codebook.h; assembled by
// sonar/method.h) plug in as TrainerExtension objects (extra clips, relabelled targets, extra loss terms,
// after-step hooks, their own checkpoint state); none of their details lives here.
//
// A run lives in one output folder:
//   run.json                 the options and the data it was started with (for people; resumes check the
//                            copy stored in the checkpoint)
//   tokenizer.safetensors    the tokenizer whose labels are the targets (a copy, so the folder is self-contained)
//   checkpoint.safetensors   the latest training checkpoint: the BEATs model (loadable by load_beats and
//                            `sonar probe`), and under "train." the label predictor, AdamW's moments, plus
//                            metadata with the step, schedule, RNG states, data-order position and options
//   model.safetensors        the final model alone, written when the last step is done
//   metrics.jsonl            one JSON object per logged step: every loss term, masked accuracy, learning
//                            rate, gradient norm, and each extension's numbers (codebook health, replay share);
//                            appended as the run goes, cut back to the checkpoint's step on resume
// Checkpoints are written atomically (temporary file + rename) every save_every steps and at the end, so a run
// killed mid-way loses at most the steps since the last one. Started again with the same options and folder,
// the run resumes from the checkpoint and takes exactly the steps it would have taken without the interruption
// (same batches, crops, masks, dropout draws and optimiser state: bit-identical weights on the same machine
// and thread count). A finished run is never overwritten unless `force` is set.
//
// Data: every epoch is a seeded permutation of the clips, cut into batches (the last partial batch dropped);
// the background DataLoader decodes and computes each clip's fbank ahead of the training thread, and the
// trainer crops a random window of crop_seconds from it (a frame-aligned window, so its fbank equals the fbank
// of the cropped audio). The window of a clip depends on (seed, epoch, position in the epoch) only, which is
// what lets a resumed run start in the middle of an epoch without loading the batches before it.
//
// Not here: the tokenizer's own training (nn/beats/pretrain.h TokenizerDistillation), evaluation
// (sonar/probe.h), the command line (apps/cmd_pretrain.cpp).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "audio/dataset.h"
#include "audio/loader.h"
#include "autograd/optim.h"
#include "nn/beats/beats.h"
#include "nn/beats/pretrain.h"
#include "nn/beats/quantizer.h"
#include "nn/beats/tokenizer.h"
#include "tensor/precision.h"

namespace sonar::method {

// ---- model presets ----

// A fresh BEATs configuration by name: "tiny" (2 blocks, 64 wide, patch embedding 32, 4 heads; a 256-code
// tokenizer codebook; for tests and the demo), "small" (4 blocks, 256 wide, 4 heads, patch embedding 128; 512 x 64
// codebook; the benchmark's start model) or "base" (BEATs base: 12 blocks, 768 wide, 12 heads, patch embedding
// 512; 1024 x 256 codebook). All pre-train with dropout 0.1. Throws naming the unknown name.
beats::BeatsConfig preset_config(const std::string& name);
const std::vector<std::string>& preset_names();

// ---- the targets ----

// The tokenizer that labels every patch: a trained BEATs tokenizer (checkpoint) or, for iteration 0, a frozen
// random-projection tokenizer. Labels are computed without gradients, in eval mode, and never change the
// tokenizer (the codebook's usage statistics are not updated either).
class LabelTokenizer {
 public:
  // A tokenizer or random-projection tokenizer checkpoint (.pt or safetensors). Throws naming the file when it
  // holds a model of another kind.
  static LabelTokenizer load(const std::string& path);
  // A fresh random-projection tokenizer (seeded): patch_size x patch_size patches, num_codes codes of width dim.
  static LabelTokenizer random_projection(int64_t patch_size, int64_t num_codes, int64_t dim, uint64_t seed);

  // fbank [B, T, F] normalised, frame_mask bool [B, T] or undefined -> labels int64 [B, P].
  Tensor labels(const Tensor& fbank, const Tensor& frame_mask) const;
  // The L2-normalised vectors the codebook is searched with, float32 [B, P, D] (no gradients, eval mode).
  Tensor features(const Tensor& fbank, const Tensor& frame_mask) const;
  // Labels of features() vectors: the nearest code of the tokenizer's codebook, int64 [B, P].
  Tensor labels_of(const Tensor& features) const;
  // The codebook [K, D] (L2-normalised rows).
  const Tensor& codebook() const;
  int64_t num_codes() const;
  int64_t patch_size() const;
  std::string kind() const;  // "tokenizer" or "random_projection_tokenizer"
  // Writes the tokenizer as this project's safetensors (atomically).
  void save(const std::string& path) const;
  // 32 hex digits hashing the kind and every state tensor: two tokenizers with the same fingerprint give the
  // same labels.
  std::string fingerprint() const;

  std::shared_ptr<beats::BeatsTokenizer> beats;                // set for a trained tokenizer
  std::shared_ptr<beats::RandomProjectionTokenizer> random;    // set for the random projection
};

// ---- options ----

struct PretrainOptions {
  // data: a manifest (.csv/.tsv), a folder or a file list (audio::read_source); labels are ignored.
  std::string data;
  std::vector<std::string> splits;  // keep only items whose split/fold is one of these (empty: all)
  std::string out_dir;              // the run folder (created)

  // model: a checkpoint to continue from (official .pt or project safetensors; a fine-tuned model's head is
  // dropped), or, when empty, a fresh model of `preset`.
  std::string init;
  std::string preset = "tiny";
  // targets: a tokenizer checkpoint, or (empty) a fresh random-projection tokenizer of `codes` codes
  // (0: the model configuration's quant_n) drawn from the seed.
  std::string tokenizer;
  int64_t codes = 0;
  // When `init` is a checkpoint of this trainer made with the same tokenizer (same fingerprint), start from its
  // label predictor instead of a fresh one.
  bool reuse_predictor = true;

  double crop_seconds = 10.0;      // training window per clip (shorter clips are padded)
  double max_clip_seconds = 60.0;  // clips are read up to this length; windows are drawn inside it
  int64_t batch_size = 8;
  int64_t steps = 1000;
  ag::AdamWOptions adamw{5e-4f, 0.9f, 0.98f, 1e-8f, 0.01f};
  int64_t warmup_steps = -1;       // -1: 10% of the steps
  double final_lr = 0.0;           // floor of the cosine decay
  float max_grad_norm = 1.0f;      // <= 0: no clipping
  uint64_t seed = 0;
  beats::MlpOptions mlp;           // masking (75%), label smoothing, predictor depth (num_classes is set here)

  int64_t log_every = 10;
  int64_t save_every = 100;
  int num_threads = 0;             // OpenMP threads for the model (0: leave as is)
  // Matrix products in float32 (default) or bfloat16 with float32 accumulation (tensor/precision.h; master
  // weights, optimiser state and losses stay float32). Part of the run's options (checked on resume).
  Precision precision = Precision::F32;
  int loader_workers = 1;          // background loading threads
  int prefetch_batches = 4;
  std::string cache_dir;           // fbank cache folder ("" = none)
  // Data parallelism: sum the gradients in buckets during the backward pass (sonar/distributed.h,
  // OverlappedGradientSum) rather than after it (allreduce_gradients). Same sums; not part of a run's identity.
  bool overlap_allreduce = true;
  int64_t allreduce_bucket_bytes = 16 << 20;  // gradient bytes per all-reduce call (either way)
  bool force = false;              // start over even if the folder holds a finished or different run

  // Progress lines (default: stdout). Called from the training thread.
  std::function<void(const std::string&)> log;
  // Set from another thread or a signal handler: the loop finishes its step, saves a checkpoint and returns.
  const std::atomic<bool>* stop = nullptr;
  // Tests: return after this many steps of this session WITHOUT saving, as a killed process would (-1: off).
  int64_t halt_after = -1;
  // Stop after this many steps of this session, saving a checkpoint, as the stop flag does (-1: off): a long
  // run done in slices on a machine with a time limit (`--stop-after N`).
  int64_t stop_after = -1;
};

// ---- progress ----

struct Progress {
  int64_t step = 0, total = 0;   // steps done, of total
  double loss = 0.0;             // mean over the steps since the last line
  double accuracy = 0.0;         // masked accuracy, same steps
  double lr = 0.0;               // learning rate of the last step
  double clips_per_second = 0.0; // same steps, wall time
  double elapsed_seconds = 0.0;  // whole run, earlier sessions included
  double eta_seconds = 0.0;      // time left at this session's pace
  double data_wait = 0.0;        // share of this interval spent waiting for the loader
  std::vector<std::pair<std::string, double>> extra;  // extension terms
};
// "step 20/300 | loss 5.2313 | acc 0.041 | lr 2.00e-04 | 52.1 clips/s | elapsed 0:00:12 | left 0:02:55 | wait 1%"
// (extension terms, when any, follow as "| name 0.1234", or "| name 12" for whole numbers such as counts).
std::string format_progress(const Progress& p);
// H:MM:SS (negative or non-finite: "?").
std::string format_duration(double seconds);
// "1 thread", "2 threads": the thread count in start lines.
std::string format_threads(int threads);

// ---- crops (the trainer's data stream and replay share them) ----

struct CropBatch {
  Tensor fbank;       // float32 [B, Tc, F]
  Tensor frame_mask;  // bool [B, Tc], 1 = padded frame
};
// Frame-aligned windows of crop_seconds from each clip of a loaded batch (audio::CropMode::Full): clip i's
// window starts at a frame drawn from Generator(seeds[i]) when the clip is longer than the window (so the
// window's fbank equals the fbank of the cropped audio), else it is the whole clip, zero-padded.
CropBatch crop_windows(const audio::Batch& b, double crop_seconds, const std::vector<uint64_t>& seeds);

// ---- extensions (the SONAR method's hooks) ----

// What one step works on. Order within a step: on_batch (extensions may append clips: replay), then the trainer
// computes start_labels (and token_features) with the run's tokenizer and sets labels = start_labels, then
// relabel (extensions may replace labels: the online codebook), then the forward pass with extra_loss, the
// optimiser step, after_step.
struct StepBatch {
  Tensor fbank;         // float32 [B, T, F], normalised crops
  Tensor frame_mask;    // bool [B, T], 1 = padded frame
  Tensor labels;        // int64 [B, P], the targets of the main prediction head
  Tensor start_labels;  // int64 [B, P], the run's (start) tokenizer's labels of every patch
  // float32 [B, P, D]: the L2-normalised vectors the start tokenizer searches its codebook with (the
  // quantizer input of a trained tokenizer, the normalised projection of the random projection).
  Tensor token_features;
  Tensor patch_padding;     // bool [B, P], 1 = padded patch (exact padding), undefined when no frame is padded
  int64_t new_clips = 0;  // clips from the training data (the first rows); the rest were added by extensions
  int64_t step = 0;       // steps done before this one
  // Data parallelism (sonar/distributed.h): this process holds only its share of the global batch. Terms
  // that are means over the batch must be scaled by their local share of the global count so that the
  // summed gradients are those of one process holding everything. With one process: local == global.
  int64_t global_masked = 0;   // masked patches of the global batch (the MLP loss's denominator)
  int64_t global_visible = 0;  // real visible patches of the global batch
};

class Trainer;

class TrainerExtension {
 public:
  virtual ~TrainerExtension() = default;
  // Short name without dots: prefix of its checkpoint entries ("ext.<name>.") and progress fields.
  virtual std::string name() const = 0;
  // True when the extension is correct under data parallelism (several processes, each with a share of the
  // batch: see StepBatch::global_*); a multi-process run with an extension that is not is refused.
  virtual bool data_parallel() const { return false; }
  // Options that must match when a run is resumed (stored in the checkpoint).
  virtual nlohmann::json config() const { return nlohmann::json::object(); }
  // Once, after the model, the objective (label predictor) and the tokenizer exist, before the predictor's
  // checkpoint state is loaded and before the optimiser is built: may add modules to the objective (their
  // parameters are then trained, saved with the predictor and restored on resume: the predictor's auxiliary
  // head) or switch on what it needs (objective()->layer_results).
  virtual void prepare(Trainer& trainer) {}
  // Once, when the model, predictor, tokenizer and optimiser exist (fresh start or resume, before load_state).
  virtual void attach(Trainer& trainer) {}
  // Before the labels: may edit the batch (e.g. append replayed clips).
  virtual void on_batch(StepBatch& batch) {}
  // After the start tokenizer's labels: may replace batch.labels (e.g. labels of an adapting codebook).
  virtual void relabel(StepBatch& batch) {}
  // Inside the forward pass: an extra, already weighted loss term added to the masked-label loss, or an
  // undefined Var for none.
  virtual ag::Var extra_loss(const StepBatch& batch, const beats::MlpOutput& out) { return {}; }
  // After the optimiser step (e.g. codebook updates).
  virtual void after_step(const StepBatch& batch, const beats::MlpOutput& out) {}
  // Numbers for the progress line and metrics.jsonl, averaged by the extension over the steps since the last
  // call (called once per logged step).
  virtual std::vector<std::pair<std::string, double>> progress() { return {}; }
  // Once, when the last step is done, before the final checkpoint: may write files into the run folder
  // (atomically), e.g. the adapted tokenizer.
  virtual void finish(const std::string& out_dir) {}
  // Checkpoint state: tensors and metadata entries (names without the "ext.<name>." prefix).
  virtual void save_state(std::map<std::string, Tensor>& tensors, std::map<std::string, std::string>& meta) const {}
  virtual void load_state(const std::map<std::string, Tensor>& tensors, const std::map<std::string, std::string>& meta) {}
};

// ---- the run ----

struct StepRecord {
  int64_t step = 0;  // 1-based: the number of steps done after it
  double loss = 0.0, accuracy = 0.0, lr = 0.0, grad_norm = 0.0;
};

struct PretrainResult {
  int64_t start_step = 0;   // steps already done when this session started (0 = fresh)
  int64_t steps_done = 0;   // steps done when it returned
  int64_t total_steps = 0;
  bool resumed = false;
  bool finished = false;    // every step done and the final checkpoint written
  bool stopped = false;     // stopped early by the stop flag (checkpoint written; none when it came before
                            // the first step, in an extension's preparation) or halt_after (not written)
  std::vector<StepRecord> history;  // this session's steps
  std::string checkpoint;   // path of checkpoint.safetensors
};

// File names inside a run folder.
constexpr const char* kCheckpointFile = "checkpoint.safetensors";
constexpr const char* kTokenizerFile = "tokenizer.safetensors";
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kRunFile = "run.json";
constexpr const char* kMetricsFile = "metrics.jsonl";
constexpr const char* kTrainerFormat = "sonar-trainer-1";

class Trainer {
 public:
  // Validates the options (one-line errors naming the option); nothing is read or written yet.
  explicit Trainer(PretrainOptions opts, std::vector<std::shared_ptr<TrainerExtension>> extensions = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Sets up (fresh, resumed or refused) and trains to the end, the stop flag or halt_after.
  PretrainResult run();

  // For extensions (valid from prepare() on; the optimiser from attach() on).
  const PretrainOptions& options() const { return opts_; }
  bool resuming() const;  // the run continues from a checkpoint (known from prepare() on)
  std::shared_ptr<beats::BeatsModel> model() const;
  std::shared_ptr<beats::MaskedLabelPrediction> objective() const;
  const LabelTokenizer& tokenizer() const;
  ag::AdamW& optimizer();
  const audio::Dataset& data() const;
  int64_t steps_done() const;
  // The model the run started from, frozen (eval mode, no gradients), loaded once on first use: --init's
  // checkpoint, or the fresh preset model drawn from the seed. On resume it is the same start model again,
  // not the checkpoint's.
  std::shared_ptr<beats::BeatsModel> start_model();
  // Progress lines (what PretrainOptions::log or stdout gets).
  void log(const std::string& line) const;
  std::string out_dir() const { return opts_.out_dir; }

 private:
  struct State;
  PretrainResult run_impl();
  PretrainOptions opts_;
  std::vector<std::shared_ptr<TrainerExtension>> extensions_;
  std::unique_ptr<State> st_;
};

// Convenience: Trainer(opts, extensions).run().
PretrainResult pretrain(const PretrainOptions& opts, std::vector<std::shared_ptr<TrainerExtension>> extensions = {});

}  // namespace sonar::method
