// DataLoader: seeded order, crops, fbank (cached or computed), padded batches, background workers with a
// bounded reorder queue; see loader.h. Not augmentation.
#include "audio/loader.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "audio/decode.h"
#include "tensor/error.h"
#include "tensor/random.h"

namespace sonar::audio {

namespace {

// Stream identifiers so the shuffle and the crops of an epoch draw from unrelated sequences.
constexpr uint64_t kShuffleStream = 0x5348554646ULL;  // "SHUFF"
constexpr uint64_t kCropStream = 0x43524f50ULL;       // "CROP"

int64_t clip_samples(const LoaderOptions& o) {
  return o.clip_seconds > 0 ? static_cast<int64_t>(std::llround(o.clip_seconds * o.sample_rate)) : 0;
}

}  // namespace

LoadedClip load_clip(const std::string& path, const LoaderOptions& o, uint64_t crop_seed, FbankCache* cache) {
  FbankOptions fo = o.fbank;
  fo.num_threads = 1;  // loaders run many clips side by side
  const int64_t shift = fo.window_shift();
  std::optional<FbankCache::Entry> cached;
  std::string key;
  if (cache && o.compute_fbank) {
    key = cache->key_for(path);
    cached = cache->get(key);
  }
  std::vector<float> full;
  int64_t n = 0;
  if (!cached || o.keep_waveforms) {
    Tensor w = load_audio(path, o.sample_rate, o.resample_quality);
    full = w.to_vector<float>();
    n = static_cast<int64_t>(full.size());
  } else {
    n = cached->samples;
  }
  const int64_t min_samples = static_cast<int64_t>(std::ceil(o.min_seconds * o.sample_rate));
  SONAR_CHECK(n >= std::max<int64_t>(min_samples, 1), path, ": too short: ", n, " samples (",
              static_cast<double>(n) / o.sample_rate, " s) at ", o.sample_rate, " Hz, below the minimum of ",
              o.min_seconds, " s");

  // The crop window [start, start + len), start a multiple of the frame shift.
  const int64_t want = clip_samples(o);
  int64_t start = 0, len = n;
  if (o.crop == CropMode::Full) {
    if (want > 0) len = std::min(n, want);
  } else if (n > want) {
    const int64_t kmax = (n - want) / shift;
    int64_t k = 0;
    if (o.crop == CropMode::Random) {
      Generator g(crop_seed);
      k = g.next_int(0, kmax + 1);
    } else if (o.crop == CropMode::Center) {
      k = ((n - want) / 2) / shift;
    }
    start = k * shift;
    len = want;
  }

  LoadedClip c;
  c.length = len;
  if (o.keep_waveforms) c.samples.assign(full.begin() + start, full.begin() + start + len);
  if (o.compute_fbank) {
    const int64_t frames = fbank_num_frames(len, fo);
    if (cache) {
      if (!cached) {
        FbankCache::Entry e;
        e.samples = n;
        e.fbank = Tensor::empty({fbank_num_frames(n, fo), fo.num_mel_bins});
        fbank_into(full.data(), n, e.fbank.data<float>(), fo);
        cache->put(key, e);
        cached = e;
      }
      c.fbank = cached->fbank.narrow(0, start / shift, frames).contiguous();
    } else {
      c.fbank = Tensor::empty({frames, fo.num_mel_bins});
      fbank_into(full.data() + start, len, c.fbank.data<float>(), fo);
    }
  }
  return c;
}

DataLoader::DataLoader(Dataset dataset, LoaderOptions opts) : dataset_(std::move(dataset)), opts_(std::move(opts)) {
  SONAR_CHECK(opts_.batch_size > 0, "DataLoader: batch_size must be positive, got ", opts_.batch_size);
  SONAR_CHECK(opts_.num_workers >= 0, "DataLoader: num_workers must be >= 0, got ", opts_.num_workers);
  SONAR_CHECK(opts_.prefetch_batches >= 1, "DataLoader: prefetch_batches must be >= 1, got ", opts_.prefetch_batches);
  SONAR_CHECK(opts_.sample_rate > 0, "DataLoader: sample_rate must be positive");
  SONAR_CHECK(opts_.crop == CropMode::Full || opts_.clip_seconds > 0,
              "DataLoader: clip_seconds must be positive for random, centre and start crops, got ",
              opts_.clip_seconds);
  SONAR_CHECK(opts_.std > 0, "DataLoader: normalisation std must be positive, got ", opts_.std);
  if (opts_.compute_fbank) {
    opts_.fbank.validate();
    SONAR_CHECK(opts_.fbank.sample_frequency == opts_.sample_rate, "DataLoader: fbank expects ",
                opts_.fbank.sample_frequency, " Hz audio but the loader resamples to ", opts_.sample_rate, " Hz");
  }
  if (!opts_.cache_dir.empty() && opts_.compute_fbank)
    cache_ = std::make_unique<FbankCache>(opts_.cache_dir, opts_.fbank, opts_.sample_rate, opts_.resample_quality);
  start_epoch(0);
}

DataLoader::~DataLoader() { stop_workers(); }

int64_t DataLoader::num_batches() const {
  const int64_t n = dataset_.size(), b = opts_.batch_size;
  return opts_.drop_last ? n / b : (n + b - 1) / b;
}

void DataLoader::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_work_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void DataLoader::start_epoch(int64_t epoch) {
  stop_workers();
  epoch_ = epoch;
  const int64_t n = dataset_.size();
  if (opts_.shuffle) {
    order_ = shuffled_indices(n, random_bits(random_bits(opts_.seed, kShuffleStream), static_cast<uint64_t>(epoch)));
  } else {
    order_.resize(n);
    for (int64_t i = 0; i < n; ++i) order_[i] = i;
  }
  std::lock_guard<std::mutex> lock(mu_);
  done_.clear();
  next_claim_ = next_consume_ = 0;
  stop_ = false;
  for (int i = 0; i < opts_.num_workers; ++i) workers_.emplace_back([this] { worker(); });
}

void DataLoader::report_bad(const std::string& path, const std::string& reason) {
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.clips_skipped++;
  if (!reported_.insert(path).second) return;  // reported when it was first skipped
  stats_.skipped.emplace_back(path, reason);
  if (opts_.on_bad_file)
    opts_.on_bad_file(path, reason);
  else
    std::fprintf(stderr, "skipping %s: %s\n", path.c_str(), reason.c_str());
}

Batch DataLoader::build(int64_t k) {
  const int64_t n = dataset_.size(), B = opts_.batch_size;
  const int64_t begin = k * B, end = std::min(n, begin + B);
  const uint64_t crop_base = random_bits(random_bits(opts_.seed, kCropStream), static_cast<uint64_t>(epoch_));
  std::vector<LoadedClip> clips;
  Batch b;
  b.index = k;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t item = order_[p];
    const std::string& path = dataset_.items[item].path;
    try {
      clips.push_back(load_clip(path, opts_, random_bits(crop_base, static_cast<uint64_t>(p)), cache_.get()));
    } catch (const Error& e) {
      if (opts_.strict) throw;
      std::string reason = e.what();
      if (reason.rfind(path + ": ", 0) == 0) reason = reason.substr(path.size() + 2);  // the path is said once
      report_bad(path, reason);
      continue;
    }
    b.indices.push_back(item);
    b.paths.push_back(path);
    b.lengths.push_back(clips.back().length);
  }
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.clips_loaded += static_cast<int64_t>(clips.size());
  }
  const int64_t m = b.size();
  if (m == 0) return b;
  int64_t S = 0;
  for (int64_t len : b.lengths) S = std::max(S, len);
  if (opts_.crop != CropMode::Full) S = std::max(S, clip_samples(opts_));
  b.padding_mask = Tensor::empty({m, S}, DType::Bool);
  uint8_t* pm = b.padding_mask.bytes();
  for (int64_t i = 0; i < m; ++i)
    for (int64_t s = 0; s < S; ++s) pm[i * S + s] = s >= b.lengths[i] ? 1 : 0;
  if (opts_.keep_waveforms) {
    b.waves = Tensor::empty({m, S});
    float* w = b.waves.data<float>();
    for (int64_t i = 0; i < m; ++i) {
      std::copy(clips[i].samples.begin(), clips[i].samples.end(), w + i * S);
      std::fill(w + i * S + b.lengths[i], w + (i + 1) * S, 0.0f);
    }
  }
  if (opts_.compute_fbank) {
    const int64_t T = fbank_num_frames(S, opts_.fbank), F = opts_.fbank.num_mel_bins;
    b.fbank = Tensor::empty({m, T, F});
    b.frame_mask = Tensor::empty({m, T}, DType::Bool);
    float* fb = b.fbank.data<float>();
    uint8_t* fm = b.frame_mask.bytes();
    for (int64_t i = 0; i < m; ++i) {
      Tensor f = clips[i].fbank;
      if (opts_.normalize) normalize_fbank_(f, opts_.mean, opts_.std);
      const int64_t t = f.size(0);
      std::copy(f.data<float>(), f.data<float>() + t * F, fb + i * T * F);
      std::fill(fb + (i * T + t) * F, fb + (i + 1) * T * F, 0.0f);
      for (int64_t j = 0; j < T; ++j) fm[i * T + j] = j >= t ? 1 : 0;
    }
  }
  const int64_t C = dataset_.num_classes();
  if (C > 0) {
    b.targets = Tensor::empty({m, C});
    float* tg = b.targets.data<float>();
    for (int64_t i = 0; i < m; ++i) {
      Tensor t = dataset_.target(b.indices[i]);
      std::copy(t.data<float>(), t.data<float>() + C, tg + i * C);
    }
  }
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < m; ++i) labels.push_back(dataset_.label_index(b.indices[i]));
  b.labels = from_vector(labels, {m});
  return b;
}

void DataLoader::worker() {
  const int64_t total = num_batches();
  for (;;) {
    int64_t k;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_work_.wait(lock, [&] {
        return stop_ || next_claim_ >= total || next_claim_ < next_consume_ + opts_.prefetch_batches;
      });
      if (stop_ || next_claim_ >= total) return;
      k = next_claim_++;
    }
    Slot slot;
    try {
      slot.batch = build(k);
    } catch (...) {
      slot.error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_[k] = std::move(slot);
    }
    cv_ready_.notify_all();
  }
}

std::optional<Batch> DataLoader::next() {
  const int64_t total = num_batches();
  for (;;) {
    Slot slot;
    if (opts_.num_workers == 0) {
      if (next_consume_ >= total) return std::nullopt;
      slot.batch = build(next_consume_++);
    } else {
      std::unique_lock<std::mutex> lock(mu_);
      if (next_consume_ >= total) return std::nullopt;
      cv_ready_.wait(lock, [&] { return done_.count(next_consume_) > 0; });
      auto it = done_.find(next_consume_);
      slot = std::move(it->second);
      done_.erase(it);
      ++next_consume_;
      lock.unlock();
      cv_work_.notify_all();
    }
    if (slot.error) std::rethrow_exception(slot.error);
    if (slot.batch->size() == 0) continue;  // every file of this batch was skipped
    return std::move(slot.batch);
  }
}

LoaderStats DataLoader::stats() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  LoaderStats s = stats_;
  if (cache_) {
    s.cache_hits = cache_->hits();
    s.cache_misses = cache_->misses();
  }
  return s;
}

}  // namespace sonar::audio
