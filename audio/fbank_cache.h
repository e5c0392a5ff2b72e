// An on-disk cache of whole-clip fbanks, keyed by the audio file's content hash and every setting that
// changes the features (fbank options, target sample rate, resampler quality), so renaming or moving a file
// keeps its entry and editing it or changing a setting misses. Entries are safetensors files
// (DIR/ab/<key>.safetensors: the unnormalised float32 [T, F] fbank and metadata holding the settings and
// the clip's sample count), written to a temporary name and renamed, so concurrent writers and interrupted
// runs never leave a half-written entry; an unreadable or mismatching entry counts as a miss and is
// rewritten. Not the loader's policy (audio/loader.h decides when to use it).
#pragma once
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "audio/fbank.h"
#include "audio/resample.h"
#include "tensor/tensor.h"

namespace sonar::audio {

// 128-bit non-cryptographic hash (two 64-bit lanes) for cache keys.
struct Hash128 {
  uint64_t hi = 0, lo = 0;
  std::string hex() const;  // 32 lowercase hex digits
  bool operator==(const Hash128& o) const { return hi == o.hi && lo == o.lo; }
};
Hash128 hash_bytes(const void* data, size_t n, uint64_t seed = 0);
// Hash of a file's bytes; throws sonar::Error naming the path if it cannot be read.
Hash128 hash_file(const std::string& path);

class FbankCache {
 public:
  struct Entry {
    Tensor fbank;         // float32 [T, F], unnormalised
    int64_t samples = 0;  // samples of the clip at sample_rate
  };

  FbankCache(std::string dir, const FbankOptions& fbank, int sample_rate = 16000,
             ResampleQuality quality = ResampleQuality::High);

  // The key of the file's current contents under this cache's settings.
  std::string key_for(const std::string& audio_path) const;
  std::optional<Entry> get(const std::string& key);
  void put(const std::string& key, const Entry& entry);
  std::string entry_path(const std::string& key) const;

  const std::string& dir() const { return dir_; }
  const std::string& settings() const { return settings_; }
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }
  int64_t writes() const { return writes_; }

 private:
  std::string dir_;
  FbankOptions opts_;
  std::string settings_;  // canonical text of every setting that changes the features
  Hash128 settings_hash_;
  std::atomic<int64_t> hits_{0}, misses_{0}, writes_{0};
};

}  // namespace sonar::audio
