// The training loops' data stream (see sonar/batch_stream.h); moved unchanged from sonar/trainer.cpp.
#include "sonar/batch_stream.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <vector>

#include "audio/fbank.h"
#include "sonar/trainer.h"
#include "tensor/random.h"

namespace sonar::method {

BatchStream::BatchStream(const audio::Dataset& ds, const StreamOptions& o, int64_t epoch, int64_t batch)
    : ds_(ds), o_(o), epoch_(epoch), batch_(batch) {
  const int64_t n = ds_.size();
  SONAR_CHECK(n > 0, "no audio clips to train on");
  eff_batch_ = std::min<int64_t>(o_.batch_size, n);
  per_epoch_ = n / eff_batch_;
  SONAR_CHECK(o_.ranks >= 1 && o_.rank >= 0 && o_.rank < o_.ranks, "data stream: rank ", o_.rank, " of ", o_.ranks);
  SONAR_CHECK(eff_batch_ % o_.ranks == 0, "a batch of ", eff_batch_, " clips cannot be split evenly across ",
              o_.ranks, " processes; choose --batch as a multiple of the process count");
  local_batch_ = eff_batch_ / o_.ranks;
  SONAR_CHECK(batch_ >= 0 && batch_ < per_epoch_ && epoch_ >= 0, "data position (epoch ", epoch_, ", batch ",
              batch_, ") is outside an epoch of ", per_epoch_, " batches");
  audio::FbankOptions fo;
  shift_ = fo.window_shift();
  want_ = static_cast<int64_t>(std::llround(o_.crop_seconds * 16000.0));
  crop_frames_ = audio::fbank_num_frames(want_, fo);
  cur_ = open(epoch_, batch_);
}

TrainBatch BatchStream::next() {
  for (;;) {
    std::optional<audio::Batch> b = cur_.loader->next();
    if (!b) {
      // A whole epoch without a single loadable clip would loop for ever.
      SONAR_CHECK(cur_.first != 0 || cur_.yielded, "no loadable audio in ", ds_.origin, ": all ", ds_.size(),
                  " clips of an epoch were skipped");
      epoch_ = cur_.epoch + 1;
      batch_ = 0;
      cur_ = next_.loader ? std::move(next_) : open(epoch_, 0);
      next_ = Segment();
      continue;
    }
    cur_.yielded = true;
    {
      // Segments hold whole batches of local_batch_ clips, so what is missing from this one was skipped.
      std::lock_guard<std::mutex> lock(skips_->mu);
      skips_->draws += local_batch_ - b->size();
    }
    report_skips();
    const int64_t k = cur_.first + b->index;  // batch index within the epoch
    epoch_ = cur_.epoch;
    batch_ = k + 1;
    if (batch_ >= per_epoch_) {
      epoch_ = cur_.epoch + 1;
      batch_ = 0;
    }
    if (!next_.loader && per_epoch_ - (k + 1) <= o_.prefetch) next_ = open(cur_.epoch + 1, 0);
    return crop(*b, cur_.epoch, cur_.first);
  }
}

BatchStream::Segment BatchStream::open(int64_t epoch, int64_t first) {
  const int64_t n = ds_.size();
  std::vector<int64_t> order = audio::shuffled_indices(n, random_bits(random_bits(o_.seed, kOrderStream),
                                                                      static_cast<uint64_t>(epoch)));
  // This rank's slice of every batch from `first` on (all of it with one process).
  std::vector<int64_t> items;
  items.reserve((per_epoch_ - first) * local_batch_);
  for (int64_t k = first; k < per_epoch_; ++k) {
    const auto begin = order.begin() + k * eff_batch_ + o_.rank * local_batch_;
    items.insert(items.end(), begin, begin + local_batch_);
  }
  audio::LoaderOptions lo;
  lo.batch_size = local_batch_;
  lo.clip_seconds = o_.max_clip_seconds;
  lo.crop = audio::CropMode::Full;
  lo.shuffle = false;
  lo.drop_last = false;
  lo.num_workers = o_.workers;
  lo.prefetch_batches = o_.prefetch;
  lo.keep_waveforms = false;
  lo.cache_dir = o_.cache_dir;
  lo.min_seconds = o_.min_seconds;
  // A segment's loader reports a bad file once; across segments (epochs) the stream reports it once too.
  lo.on_bad_file = [skips = skips_](const std::string& path, const std::string& reason) {
    std::lock_guard<std::mutex> lock(skips->mu);
    if (skips->files.insert(path).second)
      skips->pending.push_back("skipping " + path + ": " + reason + " (not reported again when drawn again)");
  };
  Segment s;
  s.epoch = epoch;
  s.first = first;
  s.loader = std::make_unique<audio::DataLoader>(ds_.subset(items), lo);
  return s;
}

void BatchStream::report_skips() {
  std::vector<std::string> lines;
  {
    std::lock_guard<std::mutex> lock(skips_->mu);
    lines.swap(skips_->pending);
  }
  // The loaders' threads only queue their lines: the log is called from this (the training) thread alone.
  for (const auto& line : lines) {
    if (o_.log)
      o_.log(line);
    else
      std::fprintf(stderr, "%s\n", line.c_str());
  }
}

int64_t BatchStream::skipped_files() const {
  std::lock_guard<std::mutex> lock(skips_->mu);
  return static_cast<int64_t>(skips_->files.size());
}

int64_t BatchStream::skipped_draws() const {
  std::lock_guard<std::mutex> lock(skips_->mu);
  return skips_->draws;
}

TrainBatch BatchStream::crop(const audio::Batch& b, int64_t epoch, int64_t first) const {
  const uint64_t crop_base = random_bits(random_bits(o_.seed, kCropStream), static_cast<uint64_t>(epoch));
  std::vector<uint64_t> seeds(b.size());
  for (int64_t i = 0; i < b.size(); ++i) {
    // Global position in the epoch's order of the clip at index j of this rank's item list.
    const int64_t j = b.indices[i];
    const int64_t position = (first + j / local_batch_) * eff_batch_ + o_.rank * local_batch_ + j % local_batch_;
    seeds[i] = random_bits(crop_base, static_cast<uint64_t>(position));
  }
  CropBatch c = crop_windows(b, o_.crop_seconds, seeds);
  TrainBatch out;
  out.fbank = std::move(c.fbank);
  out.frame_mask = std::move(c.frame_mask);
  out.clips = b.size();
  return out;
}

}  // namespace sonar::method
