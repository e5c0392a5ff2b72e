// Small helpers shared by the training loops that keep a run folder (sonar/trainer.cpp: `sonar pretrain`;
// sonar/tokenizer_trainer.cpp: `sonar train-tokenizer`): wall-clock timing, absolute paths for run.json, a
// chained content hash (data and tokenizer fingerprints), the default progress sink, reading the trainer
// metadata of a checkpoint, and metrics.jsonl (append a line; trim it back to a checkpoint's step on resume).
// Moved unchanged from trainer.cpp so both loops use one copy. Not here: the loops themselves, checkpoints'
// tensor layout (nn/beats/checkpoint.h), safetensors I/O (tensor/io.h).
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "audio/fbank_cache.h"
#include "nn/beats/checkpoint.h"
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
