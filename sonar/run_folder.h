// Small helpers shared by the training loops that keep a run folder (sonar/trainer.cpp: `sonar pretrain`;
// sonar/tokenizer_trainer.cpp: `sonar train-tokenizer`): wall-clock timing, absolute paths for run.json, a
// chained content hash (data and tokenizer fingerprints), the default progress sink, reading the trainer
// metadata of a checkpoint, metrics.jsonl (append a line; trim it back to a checkpoint's step on resume), and
// what both loops' options share: their checks, the training data read and fingerprinted, module-state hashing,
// the data stream's options and the run.json entries. Moved unchanged from trainer.cpp and tokenizer_trainer.cpp so both loops use one copy. Not here: the loops themselves, checkpoints'
// tensor layout (nn/beats/checkpoint.h), safetensors I/O (tensor/io.h).
#pragma once
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "audio/dataset.h"
#include "audio/fbank_cache.h"
#include "nn/beats/checkpoint.h"
#include "sonar/batch_stream.h"
#include "tensor/error.h"
#include "tensor/precision.h"
#include "tensor/tensor.h"

namespace sonar::method {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0);

// The absolute, normalised form of a path ("" stays "").
std::string absolute_path(const std::string& p);

std::string hex_of(const audio::Hash128& h);

// Chained 128-bit hash over several byte ranges.
struct HashChain {
  audio::Hash128 h{0x736f6e6172ULL, 0x68617368ULL};
  void add(const void* data, size_t n) {
    audio::Hash128 x = audio::hash_bytes(data, n, h.lo ^ (h.hi * 0x9e3779b97f4a7c15ULL));
    h = x;
  }
  void add(const std::string& s) { add(s.data(), s.size()); }
};

// Adds every state tensor of `m` (name and bytes, in state_dict order) to `hc`: two equal hashes, the same weights.
void add_module_state(HashChain& hc, const nn::Module& m);

// The clips of `source` (restricted to `splits` when not empty); throws naming the source when none is left.
audio::Dataset read_training_data(const std::string& source, const std::vector<std::string>& splits);
// A fingerprint of the clips' paths, in order.
std::string data_fingerprint(const audio::Dataset& data);

// The checks of the options every run loop takes (PretrainOptions, TokenizerTrainOptions), each a one-line error
// naming the flag.
template <class RunOptions>
void check_run_options(const RunOptions& p) {
  SONAR_CHECK(!p.data.empty(), "no training data given (--data)");
  SONAR_CHECK(!p.out_dir.empty(), "no output folder given (--out)");
  SONAR_CHECK(p.steps > 0, "--steps must be positive, got ", p.steps);
  SONAR_CHECK(p.batch_size > 0, "--batch must be positive, got ", p.batch_size);
  SONAR_CHECK(std::isfinite(p.crop_seconds) && p.crop_seconds > 0 && p.crop_seconds <= 600,
              "--crop-seconds must be in (0, 600], got ", p.crop_seconds);
  SONAR_CHECK(std::isfinite(p.max_clip_seconds) && p.max_clip_seconds >= p.crop_seconds,
              "the clip length cap (", p.max_clip_seconds, " s) must be at least --crop-seconds (", p.crop_seconds,
              ")");
  SONAR_CHECK(std::isfinite(p.adamw.lr) && p.adamw.lr > 0, "--lr must be positive, got ", p.adamw.lr);
  SONAR_CHECK(p.warmup_steps >= -1 && p.warmup_steps <= p.steps, "--warmup must be in [0, --steps = ", p.steps,
              "], got ", p.warmup_steps);
  SONAR_CHECK(p.final_lr >= 0 && p.final_lr <= p.adamw.lr, "the final learning rate must be in [0, --lr], got ",
              p.final_lr);
  SONAR_CHECK(p.adamw.weight_decay >= 0, "--weight-decay must be >= 0, got ", p.adamw.weight_decay);
  SONAR_CHECK(p.log_every > 0, "--log-every must be positive, got ", p.log_every);
  SONAR_CHECK(p.save_every > 0, "--save-every must be positive, got ", p.save_every);
  SONAR_CHECK(p.num_threads >= 0, "--threads must be >= 0, got ", p.num_threads);
  SONAR_CHECK(p.loader_workers >= 0, "--workers must be >= 0, got ", p.loader_workers);
  SONAR_CHECK(p.codes == 0 || p.codes >= 2, "--codes must be at least 2, got ", p.codes);
}

// The data stream's options from a run's options, for a model whose patches are `patch_size` frames (a clip
// shorter than one patch is left out). Single process; a data-parallel run sets the rank fields itself.
template <class RunOptions>
StreamOptions run_stream_options(const RunOptions& p, int64_t patch_size) {
  StreamOptions sto;
  sto.batch_size = p.batch_size;
  sto.crop_seconds = p.crop_seconds;
  sto.max_clip_seconds = p.max_clip_seconds;
  sto.seed = p.seed;
  sto.workers = p.loader_workers;
  sto.prefetch = p.prefetch_batches;
  sto.cache_dir = p.cache_dir;
  sto.min_seconds = ((patch_size - 1) * 160 + 400) / 16000.0;
  return sto;
}

// The run.json entries every run loop records (compared on resume to refuse a run with other options): the data
// (`data_items` clips, `data_fp` their fingerprint), start model, codebook size, crops, schedule, AdamW, seed,
// and the precision when not f32 (so runs started before that option existed still resume).
template <class RunOptions>
void add_run_config(nlohmann::json& cfg, const RunOptions& p, size_t data_items, const std::string& data_fp,
                    int64_t warmup) {
  cfg["data"] = absolute_path(p.data);
  cfg["splits"] = p.splits;
  cfg["data-items"] = data_items;
  cfg["data-fingerprint"] = data_fp;
  cfg["init"] = absolute_path(p.init);
  cfg["preset"] = p.init.empty() ? p.preset : "";
  cfg["codes"] = p.codes;
  cfg["crop-seconds"] = p.crop_seconds;
  cfg["max-clip-seconds"] = p.max_clip_seconds;
  cfg["batch"] = p.batch_size;
  cfg["steps"] = p.steps;
  cfg["lr"] = p.adamw.lr;
  cfg["beta1"] = p.adamw.beta1;
  cfg["beta2"] = p.adamw.beta2;
  cfg["eps"] = p.adamw.eps;
  cfg["weight-decay"] = p.adamw.weight_decay;
  cfg["warmup"] = warmup;
  cfg["final-lr"] = p.final_lr;
  cfg["clip-grad"] = p.max_grad_norm;
  cfg["seed"] = p.seed;
  if (p.precision != Precision::F32) cfg["precision"] = precision_name(p.precision);
}

// A progress line on stdout, flushed.
void default_log(const std::string& line);

// The entries whose names start with `prefix`, with the prefix removed.
std::map<std::string, Tensor> with_prefix_removed(const std::map<std::string, Tensor>& m, const std::string& prefix);
std::map<std::string, std::string> meta_with_prefix_removed(const std::map<std::string, std::string>& m,
                                                            const std::string& prefix);

// A checkpoint's metadata entry (throws naming the file and the key when it is missing) and the same parsed as
// JSON (throws naming the key when it is not valid JSON).
const std::string& meta_at(const beats::CheckpointData& c, const std::string& key);
nlohmann::json meta_json(const beats::CheckpointData& c, const std::string& key);

// A JSON value for an error message: its dump, or "(none)" for null.
std::string json_value_str(const nlohmann::json& j);

// metrics.jsonl: keeps the lines of steps <= `step` (a resumed run rewrites what came after its checkpoint),
// atomically; a missing file stays missing.
void trim_metrics(const std::string& path, int64_t step);
// Appends `line` and a newline; throws naming the file when the write fails.
void append_line(const std::string& path, const std::string& line);
// A JSON number, or null for NaN/Inf (JSON has no such numbers).
nlohmann::json number_or_null(double v);

}  // namespace sonar::method
