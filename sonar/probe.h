// Linear-probe evaluation of a frozen BEATs model: clip features (the encoder output of the last or a given
// block, mean-pooled over the clip's unpadded patches), a logistic-regression classifier trained on them with
// AdamW (softmax cross-entropy for single-label tasks, per-class sigmoid for multi-label ones) with early
// stopping on the validation loss, and the test metrics: accuracy and macro-F1 (single-label), mAP
// (multi-label). Splits come from the manifest: train/val/test values (val carved from train by group when
// absent), or numeric folds (each fold the test set once, the mean reported).
//
// The metric functions are exposed on their own so they can be checked against hand-computed values.
// Not here: fine-tuning the encoder, the training loop (sonar/trainer.h), the command line (apps/cmd_probe.cpp).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "audio/dataset.h"
#include "audio/loader.h"
#include "nn/beats/beats.h"

namespace sonar::method {

// ---- metrics ----

// Share of positions where pred == truth (NaN for empty input). Throws on different lengths.
double accuracy(const std::vector<int64_t>& truth, const std::vector<int64_t>& pred);

// Macro-averaged F1 over the classes that occur in `truth` or in `pred`: F1_c = 2 TP / (2 TP + FP + FN). A class
// that never occurs and is never predicted has no F1 and is left out of the mean; a class predicted but absent
// from the truth scores 0 (as scikit-learn's f1_score(average="macro") without a label list). Values must lie in
// [0, num_classes). NaN for empty input.
double macro_f1(const std::vector<int64_t>& truth, const std::vector<int64_t>& pred, int64_t num_classes);
// The per-class F1 that macro_f1 averages: one value per class, NaN for a class that never occurs and is never
// predicted.
std::vector<double> class_f1(const std::vector<int64_t>& truth, const std::vector<int64_t>& pred, int64_t num_classes);

// Average precision of one class: sum over distinct score thresholds t (descending) of
// (recall(t) - recall(previous t)) * precision(t), where an item counts as predicted positive when its score is
// >= t, so tied scores enter together (scikit-learn's average_precision_score). NaN when there is no positive.
double average_precision(const std::vector<double>& scores, const std::vector<uint8_t>& positive);

// Mean of average_precision over the classes (columns) with at least one positive; scores float32 [N, K],
// targets [N, K] (nonzero = positive). NaN when no class has a positive. `classes_used` receives their number.
double mean_average_precision(const Tensor& scores, const Tensor& targets, int64_t* classes_used = nullptr);
// The per-class average precision that mean_average_precision averages: one value per column, NaN for a class
// without a positive.
std::vector<double> class_average_precision(const Tensor& scores, const Tensor& targets);

// ---- features ----

struct ProbeFeatureOptions {
  int64_t layer = 0;         // 0: the encoder output (last block); n in [1, blocks]: the output of block n
  double max_seconds = 10.0; // clips are read from their start up to this length
  int64_t batch_size = 8;
  int workers = 1;
  std::string cache_dir;     // fbank cache ("" = none)
};

// Clips clip_features could not use, and the short ones it padded.
struct FeatureSkips {
  std::vector<int64_t> items;                               // dataset indices of skipped clips, ascending
  std::vector<std::pair<std::string, std::string>> reasons;  // (path, reason), in the order they were found
  int64_t padded = 0;  // clips shorter than one patch (16 frames, 0.175 s), padded to one patch
};

// Mean-pooled features float32 [N, C] of every item of `ds`, in order, computed in eval mode without gradients
// (the model's mode is restored). A clip shorter than one patch (but at least one fbank frame) is padded to one
// patch: its missing frames are zeros of the normalised fbank (the mean level) and count as real, so it
// pools over that one patch instead of having none. A clip that cannot be read or has no full fbank frame is
// skipped: with `skipped` given, it is recorded there (its row is zero) and every other clip is still
// computed; without it, the whole set is read and then one error names how many failed and the first few.
// `progress` (optional) gets the number of clips done after each batch.
Tensor clip_features(beats::BeatsBackbone& model, const audio::Dataset& ds, const ProbeFeatureOptions& opts,
                     const std::function<void(int64_t done, int64_t total)>& progress = {},
                     FeatureSkips* skipped = nullptr);

// The features after `num_layers` blocks (0: all) of a loaded batch, mean-pooled over each clip's unpadded
// patches (sums in double): one row of C floats per clip, in batch order. `real_patches[i]` receives clip i's
// count of unpadded patches; a clip with none gets a row of zeros, which is no mean (the caller refuses or skips
// it). The model runs as it is: the caller sets eval mode and no-grad. Shared by clip_features and replay's
// embed_clips.
std::vector<std::vector<float>> mean_pooled_features(beats::BeatsBackbone& model, const audio::Batch& batch,
                                                     int64_t num_layers, std::vector<int64_t>* real_patches);

// ---- the classifier ----

struct LinearProbeOptions {
  int64_t epochs = 200;      // at most this many passes over the training set
  int64_t patience = 30;     // stop when the validation loss has not improved for this many epochs
  int64_t batch_size = 64;
  float lr = 1e-2f;
  float weight_decay = 1e-4f;
  uint64_t seed = 0;         // minibatch order
};

struct LinearProbe {
  bool multi_label = false;
  Tensor mean, inv_std;  // [C]: the training features' standardisation
  Tensor weight, bias;   // [K, C], [K]: the weights of the best epoch
  int64_t best_epoch = 0, epochs_run = 0;  // 1-based
  double best_val_loss = 0.0;              // NaN without a validation set
  // Logits [N, K] of raw (unstandardised) features [N, C].
  Tensor logits(const Tensor& x) const;
};

// x_*: float32 [N, C]; y_*: int64 [N] class indices (single-label) or float32 [N, K] multi-hot (multi-label).
// The weights start at zero, so the result depends only on the data, the options and the seed. An empty
// validation set means no early stopping (all epochs run, the last kept).
LinearProbe train_linear_probe(const Tensor& x_train, const Tensor& y_train, const Tensor& x_val, const Tensor& y_val,
                               int64_t num_classes, bool multi_label, const LinearProbeOptions& opts);

struct SplitMetrics {
  int64_t n = 0;
  double loss = 0.0;      // mean cross-entropy (single-label) or mean binary cross-entropy (multi-label)
  double accuracy = 0.0;  // single-label (NaN for multi-label)
  double macro_f1 = 0.0;  // single-label (NaN for multi-label)
  double mAP = 0.0;       // multi-label (NaN for single-label)
  // Per class (the task's class order): F1 (single-label) or average precision (multi-label); NaN where the
  // class has no score (see class_f1, class_average_precision). Lets a caller score a subset of the classes.
  std::vector<double> class_scores;
};
SplitMetrics evaluate_probe(const LinearProbe& probe, const Tensor& x, const Tensor& y, int64_t num_classes);

// ---- the whole evaluation ----

struct ProbeOptions {
  std::string checkpoint;     // a BEATs model (or tokenizer) checkpoint, .pt or safetensors
  std::string preset;         // instead: a fresh model of this preset (an untrained baseline)
  uint64_t model_seed = 0;    // its initialisation
  std::string data;           // a labelled manifest (or class folder)
  std::string task = "auto";  // auto (multi-label when some clip has several labels), single, multi
  double val_fraction = 0.2;  // share of the training items held out for validation when there is no val split
  // > 1: ignore the manifest's splits and cross-validate over this many folds of whole groups (a group's clips
  // share a fold; each class's groups are dealt over the folds in a seeded order), each fold the test set
  // once. Uses every clip for testing: a far less noisy score than one small test split.
  int64_t group_folds = 0;
  ProbeFeatureOptions features;
  LinearProbeOptions classifier;
  std::function<void(const std::string&)> log;  // progress lines (default: stdout)
};

struct FoldResult {
  std::string test_split;  // "test" or the fold value
  int64_t train = 0, val = 0, test = 0;
  int64_t best_epoch = 0, epochs_run = 0;
  SplitMetrics val_metrics, test_metrics;
};

struct ProbeReport {
  std::string checkpoint, data;
  bool multi_label = false;
  std::vector<std::string> classes;
  int64_t layer = 0, blocks = 0, feature_dim = 0;
  int64_t group_folds = 0;        // ProbeOptions::group_folds (0: the manifest's splits)
  int64_t dropped = 0;            // clips without a usable label (single-label tasks), left out
  int64_t padded = 0;             // clips shorter than one patch, padded to one (see clip_features)
  std::vector<std::pair<std::string, std::string>> skipped;  // unreadable or empty clips, left out (path, reason)
  std::vector<FoldResult> folds;  // one for train/val/test manifests
  SplitMetrics test, val;         // means over the folds
  double feature_seconds = 0.0;
  nlohmann::json to_json() const;
};

ProbeReport run_probe(const ProbeOptions& opts);

// The fold ("1".."K") of every item of ds for ProbeOptions::group_folds: items of one group (each item alone
// when it has none) share a fold; each class's groups (a group's class: its first item's first label) are
// shuffled with `seed` and dealt round-robin, continuing where the previous class stopped. K >= 2.
std::vector<std::string> probe_group_folds(const audio::Dataset& ds, int64_t K, uint64_t seed);

// ---- every task of a corpus ----

// One row of the tasks.csv that `sonar synth-corpus` and scripts/build-benchmark.sh write beside their
// manifests (columns task, manifest, type, splits): the task's name, its manifest (resolved against the
// tasks.csv folder) and its type as ProbeOptions::task ("multiclass" -> "single", "multilabel" -> "multi").
struct ProbeTask {
  std::string name, manifest, task;
};
// Reads a tasks.csv; throws naming the file and line on a missing column, a row with another number of
// fields, an unknown type, a repeated task name or a manifest that does not exist, before anything is probed.
std::vector<ProbeTask> read_probe_tasks(const std::string& path);

}  // namespace sonar::method
