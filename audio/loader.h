// Batches for training and evaluation: a DataLoader walks a Dataset in a seeded order, decodes each file to
// 16 kHz mono, crops it (random crops of a fixed duration for training, centre or full-length for
// evaluation), computes its fbank (or takes it from the on-disk cache), and assembles padded batches with
// sample- and frame-level padding masks and label targets. Loading runs on background threads that fill a
// bounded prefetch queue; batches come out in order and are identical whatever the number of workers.
//
// Bad data (missing, corrupt, empty, unreadable, NaN-bearing or too short files): in lenient mode the file
// is reported by path (the on_bad_file callback; by default one line on stderr), counted and left out of its
// batch, so that batch is smaller; in strict mode the first one stops the run: next() throws sonar::Error
// naming the path. Any other exception in a worker also reaches the consumer through next(). Destroying the
// loader stops and joins the workers, even mid-epoch.
//
// Crops start at multiples of the fbank frame shift (160 samples), so the fbank of a crop is exactly the
// corresponding frames of the whole clip's fbank: cached and uncached runs give the same numbers.
//
// Not augmentation (audio/augment.h) and not models: the loader hands out tensors.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "audio/dataset.h"
#include "audio/fbank.h"
#include "audio/fbank_cache.h"
#include "audio/resample.h"
#include "tensor/tensor.h"

namespace sonar::audio {

enum class CropMode {
  Random,  // training: a random window of clip_seconds (shorter clips are padded)
  Center,  // evaluation: the middle clip_seconds
  Start,   // the first clip_seconds
  Full,    // whole clips; the batch is padded to its longest clip (clip_seconds > 0 caps the length)
};

struct LoaderOptions {
  int64_t batch_size = 8;
  double clip_seconds = 10.0;  // window length for Random/Center/Start; a cap for Full (<= 0: none)
  CropMode crop = CropMode::Random;
  bool shuffle = true;
  uint64_t seed = 0;           // shuffling and random crops
  bool drop_last = false;      // drop the final partial batch of an epoch
  int num_workers = 2;         // background threads; 0 = load inside next() on the caller's thread
  int prefetch_batches = 4;    // batches loaded ahead of the consumer (the queue bound)
  bool strict = false;         // stop at the first bad file instead of skipping it
  double min_seconds = 0.025;  // shorter clips are bad data (default: one fbank frame)
  int sample_rate = 16000;
  ResampleQuality resample_quality = ResampleQuality::High;
  bool compute_fbank = true;
  FbankOptions fbank;          // num_threads is ignored: each worker computes its clips serially
  bool normalize = true;       // (fbank - mean) / (2 * std)
  double mean = kBeatsFbankMean;
  double std = kBeatsFbankStd;
  bool keep_waveforms = true;  // fill Batch::waves (with a cache hit this is the only reason to decode)
  std::string cache_dir;       // "" = no fbank cache
  // Called once per skipped file in lenient mode, the first time it is skipped (a file drawn again in a
  // later epoch is skipped again, counted, but not reported again), possibly from a worker thread (calls
  // are serialised). Unset: a line "skipping PATH: REASON" on stderr.
  std::function<void(const std::string& path, const std::string& reason)> on_bad_file;
};

struct Batch {
  Tensor waves;          // float32 [B, S], zero padded (undefined if !keep_waveforms)
  Tensor padding_mask;   // bool [B, S], 1 = padding sample
  Tensor fbank;          // float32 [B, T, F], normalised if asked; padded frames are 0 (undefined if !compute_fbank)
  Tensor frame_mask;     // bool [B, T], 1 = padding frame
  Tensor targets;        // float32 [B, C] multi-hot over dataset.classes (undefined when C == 0)
  Tensor labels;         // int64 [B]: the single class index, -1 when an item has none or several
  std::vector<int64_t> lengths;  // real samples per clip (after cropping)
  std::vector<int64_t> indices;  // dataset item indices
  std::vector<std::string> paths;
  int64_t index = 0;             // batch number within the epoch
  int64_t size() const { return static_cast<int64_t>(indices.size()); }
};

struct LoaderStats {
  int64_t clips_loaded = 0;
  int64_t clips_skipped = 0;     // every skip, a file drawn in several epochs counted each time
  int64_t cache_hits = 0;
  int64_t cache_misses = 0;
  std::vector<std::pair<std::string, std::string>> skipped;  // (path, reason), each file once, in order found
};

// One clip, loaded and cropped as the loader would (also used by tools such as fbank-stats).
struct LoadedClip {
  std::vector<float> samples;  // the crop at sample_rate (empty if not kept)
  int64_t length = 0;          // samples in the crop
  Tensor fbank;                // float32 [T, F], unnormalised (undefined if !compute_fbank)
};
// crop_seed drives CropMode::Random. Throws sonar::Error naming the path for bad data.
LoadedClip load_clip(const std::string& path, const LoaderOptions& opts, uint64_t crop_seed = 0,
                     FbankCache* cache = nullptr);

class DataLoader {
 public:
  DataLoader(Dataset dataset, LoaderOptions opts);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // Batches per epoch before any file is skipped.
  int64_t num_batches() const;
  // Restarts at the beginning of `epoch` (its own shuffle and crops). The constructor starts epoch 0.
  void start_epoch(int64_t epoch);
  int64_t epoch() const { return epoch_; }
  // The next batch of the epoch, nullopt at its end. Rethrows a worker's exception (strict-mode bad data).
  std::optional<Batch> next();
  LoaderStats stats() const;
  const Dataset& dataset() const { return dataset_; }
  const LoaderOptions& options() const { return opts_; }

 private:
  struct Slot {
    std::optional<Batch> batch;
    std::exception_ptr error;
  };
  Batch build(int64_t k);
  void worker();
  void stop_workers();
  void report_bad(const std::string& path, const std::string& reason);

  Dataset dataset_;
  LoaderOptions opts_;
  std::unique_ptr<FbankCache> cache_;
  std::vector<int64_t> order_;
  int64_t epoch_ = 0;

  mutable std::mutex mu_;
  std::condition_variable cv_work_, cv_ready_;
  std::map<int64_t, Slot> done_;
  int64_t next_claim_ = 0, next_consume_ = 0;
  bool stop_ = false;
  std::vector<std::thread> workers_;

  mutable std::mutex stats_mu_;
  LoaderStats stats_;
  std::set<std::string> reported_;  // files already in stats_.skipped (under stats_mu_)
};

}  // namespace sonar::audio
