// The training loops' data stream: endless batches of fixed-length crops from a data set, in a seeded order
// that a checkpoint can store as a position (epoch, batch) and resume from exactly. Shared by the continual
// pre-training loop (sonar/trainer.cpp) and the tokenizer's training loop (sonar/tokenizer_trainer.cpp); moved
// here unchanged from trainer.cpp. Not here: decoding and fbank computation (audio/loader.h), the crop
// windows themselves (crop_windows in sonar/trainer.h), anything about models.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "audio/dataset.h"
#include "audio/loader.h"
#include "tensor/tensor.h"

namespace sonar::method {

// Stream identifiers of the run seed used by the data stream (each use of the seed draws its own sequence).
constexpr uint64_t kOrderStream = 0x4f524452ULL;  // "ORDR": epoch permutations
constexpr uint64_t kCropStream = 0x43524f50ULL;   // "CROP": crop windows

struct TrainBatch {
  Tensor fbank;       // [B, Tc, F]
  Tensor frame_mask;  // bool [B, Tc]
  int64_t clips = 0;
};

struct StreamOptions {
  int64_t batch_size = 8;
  double crop_seconds = 10.0;
  double max_clip_seconds = 60.0;
  uint64_t seed = 0;
  int workers = 1;
  int prefetch = 4;
  std::string cache_dir;
  double min_seconds = 0.175;
  // Data parallelism: this process loads only its slice [rank * B / ranks, (rank + 1) * B / ranks) of every
  // global batch of B clips (B must be a multiple of ranks); crops are those of the clips' global positions,
  // so the slices of all ranks together are exactly the batch a single process would load.
  int rank = 0, ranks = 1;
  // Where "skipping PATH: REASON" goes, once per file however many epochs draw it (unset: stderr); called
  // from the thread that calls next(), never from a loader thread.
  std::function<void(const std::string&)> log;
};

// Endless batches: epoch e is a seeded permutation of the clips cut into batches; the position (epoch, batch)
// of the next batch is what a checkpoint stores. One DataLoader per epoch segment (shuffle off, whole clips up
// to max_clip_seconds), the next one started before the current one runs dry so the workers keep prefetching.
class BatchStream {
 public:
  BatchStream(const audio::Dataset& ds, const StreamOptions& o, int64_t epoch, int64_t batch);

  int64_t batches_per_epoch() const { return per_epoch_; }
  int64_t batch_size() const { return eff_batch_; }        // global clips per batch
  int64_t local_batch_size() const { return local_batch_; }  // this rank's share
  int64_t crop_frames() const { return crop_frames_; }
  // Position of the next batch.
  int64_t epoch() const { return epoch_; }
  int64_t batch() const { return batch_; }
  // Clips that could not be used (unreadable, too short): distinct files (reported once each, when first
  // loaded, possibly by the next epoch's prefetching loader), and how many times they were missing from the
  // batches next() returned (once per epoch that draws them).
  int64_t skipped_files() const;
  int64_t skipped_draws() const;
  // Logs the report lines the loaders queued since the last call (next() calls it after every batch).
  void report_skips();

  TrainBatch next();

 private:
  struct Segment {
    std::unique_ptr<audio::DataLoader> loader;
    int64_t epoch = 0, first = 0;
    bool yielded = false;
  };

  Segment open(int64_t epoch, int64_t first);

  // The crop window of each clip, seeded by (seed, epoch, position in the epoch): see crop_windows.
  TrainBatch crop(const audio::Batch& b, int64_t epoch, int64_t first) const;

  const audio::Dataset& ds_;
  StreamOptions o_;
  int64_t epoch_, batch_;
  int64_t eff_batch_ = 1, per_epoch_ = 1, local_batch_ = 1;
  int64_t shift_ = 160, want_ = 0, crop_frames_ = 0;
  Segment cur_, next_;
  // Skips seen by every segment's loader (each epoch has its own loader, and two may run at once).
  struct Skips {
    std::mutex mu;
    std::set<std::string> files;
    int64_t draws = 0;
    std::vector<std::string> pending;  // report lines queued by the loaders' threads, logged by next()
  };
  std::shared_ptr<Skips> skips_ = std::make_shared<Skips>();
};

}  // namespace sonar::method
