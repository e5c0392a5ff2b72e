// Tests of audio/loader and audio/fbank_cache on small WAV/FLAC folders written to a temp dir: batch contents
// (waves, masks, fbank, targets) against the library computed directly, crop modes, determinism across
// worker counts, bad files in lenient and strict mode, the bounded prefetch queue and shutdown, and the
// content-hashed fbank cache (hits, identical numbers, invalidation). Not augmentation (test_augment.cpp).
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "audio/decode.h"
#include "audio/fbank.h"
#include "audio/fbank_cache.h"
#include "audio/loader.h"
#include "audio_test_util.h"

using namespace sonar;
using namespace sonar::audio;
using sonar::audio::test_util::make_sine;
using sonar::audio::test_util::TempDir;
using sonar::audio::test_util::write_bytes;
namespace fs = std::filesystem;

namespace {

constexpr double kExact = 0.0;  // the loader must reproduce the library's numbers bit for bit

// Writes `n` good clips per class (tones, lengths 0.7..2.5 s, mixed rates and channel counts).
void write_good_clips(const TempDir& dir, int per_class) {
  const std::vector<std::pair<std::string, double>> classes = {{"low", 300.0}, {"high", 2500.0}};
  const int rates[] = {16000, 44100, 8000, 22050};
  int k = 0;
  for (const auto& [name, freq] : classes)
    for (int i = 0; i < per_class; ++i, ++k) {
      const int rate = rates[k % 4];
      const double secs = 0.7 + 0.3 * (k % 7);
      auto tone = make_sine(static_cast<int64_t>(secs * rate), freq * (1 + 0.05 * i), 0.4, rate);
      uint32_t lcg = 12345u + k;  // plus a little noise, so no two windows of a clip are equal
      for (float& v : tone) v += 0.05f * ((lcg = lcg * 1664525u + 1013904223u) / 4294967296.0f - 0.5f);
      const std::string ext = k % 3 == 0 ? ".flac" : ".wav";
      fs::create_directories(dir / name);
      if (k % 5 == 1) {  // some stereo
        std::vector<float> st;
        for (float v : tone) st.insert(st.end(), {v, 0.5f * v});
        write_audio(dir / (name + "/clip" + std::to_string(i) + ext), st, 2, rate);
      } else {
        write_audio(dir / (name + "/clip" + std::to_string(i) + ext), tone, 1, rate);
      }
    }
}

// Bad files inside class folders: corrupt, empty, NaN-bearing, too short (under one frame).
std::set<std::string> write_bad_clips(const TempDir& dir) {
  write_bytes(dir / "low/corrupt.wav", "RIFF....WAVEfmt garbage");
  write_bytes(dir / "low/empty.flac", "");
  auto w = make_sine(16000, 440.0, 0.5, 16000);
  w[8000] = NAN;
  write_audio(dir / "high/nan.wav", w, 1, 16000, SampleFormat::Float);
  write_audio(dir / "high/tiny.wav", make_sine(300, 440.0, 0.5, 16000), 1, 16000);
  return {fs::path(dir / "low/corrupt.wav").lexically_normal().string(),
          fs::path(dir / "low/empty.flac").lexically_normal().string(),
          fs::path(dir / "high/nan.wav").lexically_normal().string(),
          fs::path(dir / "high/tiny.wav").lexically_normal().string()};
}

LoaderOptions quiet(LoaderOptions o, std::vector<std::string>* bad = nullptr) {
  static std::mutex m;
  o.on_bad_file = [bad](const std::string& p, const std::string& why) {
    std::lock_guard<std::mutex> lock(m);
    if (bad) bad->push_back(p);
  };
  return o;
}

std::vector<Batch> epoch(DataLoader& dl) {
  std::vector<Batch> out;
  while (auto b = dl.next()) out.push_back(std::move(*b));
  return out;
}

double max_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  const auto x = a.to_vector<float>(), y = b.to_vector<float>();
  double m = 0;
  for (size_t i = 0; i < std::min(x.size(), y.size()); ++i) m = std::max(m, std::abs(double(x[i]) - y[i]));
  return m;
}

// Where `crop` occurs in `full` (exact match), or -1.
int64_t find_crop(const std::vector<float>& full, const float* crop, int64_t len) {
  for (int64_t s = 0; s + len <= static_cast<int64_t>(full.size()); ++s)
    if (std::equal(crop, crop + len, full.begin() + s)) return s;
  return -1;
}

}  // namespace

TEST(Loader, RandomCropBatchesMatchTheLibrary) {
  TempDir dir;
  write_good_clips(dir, 5);
  Dataset ds = read_folder(dir.path());
  ASSERT_EQ(ds.size(), 10);
  LoaderOptions o;
  o.batch_size = 4;
  o.clip_seconds = 1.0;
  o.seed = 11;
  DataLoader dl(ds, quiet(o));
  EXPECT_EQ(dl.num_batches(), 3);
  auto batches = epoch(dl);
  ASSERT_EQ(batches.size(), 3u);
  std::set<int64_t> seen;
  for (const auto& b : batches) {
    const int64_t m = b.size();
    ASSERT_EQ(b.waves.shape(), (Shape{m, 16000}));
    ASSERT_EQ(b.padding_mask.shape(), (Shape{m, 16000}));
    ASSERT_EQ(b.fbank.shape(), (Shape{m, 98, 128}));
    ASSERT_EQ(b.frame_mask.shape(), (Shape{m, 98}));
    ASSERT_EQ(b.targets.shape(), (Shape{m, 2}));
    for (int64_t i = 0; i < m; ++i) {
      seen.insert(b.indices[i]);
      const auto full = load_audio(b.paths[i]).to_vector<float>();
      const int64_t len = b.lengths[i];
      EXPECT_EQ(len, std::min<int64_t>(16000, full.size()));
      const float* crop = b.waves.data<float>() + i * 16000;
      const int64_t start = find_crop(full, crop, len);
      ASSERT_GE(start, 0) << b.paths[i];
      EXPECT_EQ(start % 160, 0) << "crop start " << start << " is not on the frame grid";
      for (int64_t s = 0; s < 16000; ++s) {
        ASSERT_EQ(b.padding_mask.bytes()[i * 16000 + s], s >= len ? 1 : 0);
        if (s >= len) {
          ASSERT_EQ(crop[s], 0.0f);
        }
      }
      Tensor want = normalize_fbank(fbank(from_vector(std::vector<float>(crop, crop + len), {len})));
      const int64_t t = want.size(0);
      EXPECT_LE(max_diff(b.fbank.select(0, i).narrow(0, 0, t).contiguous(), want), kExact);
      for (int64_t f = 0; f < 98; ++f) ASSERT_EQ(b.frame_mask.bytes()[i * 98 + f], f >= t ? 1 : 0);
      const auto tg = b.targets.select(0, i).to_vector<float>();
      EXPECT_EQ(tg, ds.target(b.indices[i]).to_vector<float>());
      EXPECT_EQ(b.labels.to_vector<int64_t>()[i], ds.label_index(b.indices[i]));
    }
  }
  EXPECT_EQ(seen.size(), 10u);  // every clip once per epoch
  EXPECT_EQ(dl.stats().clips_loaded, 10);
}

TEST(Loader, SameSeedSameBatchesWhateverTheWorkers) {
  TempDir dir;
  write_good_clips(dir, 4);
  Dataset ds = read_folder(dir.path());
  std::vector<std::vector<float>> ref;
  std::vector<int64_t> ref_order;
  for (int workers : {0, 1, 3}) {
    LoaderOptions o;
    o.batch_size = 3;
    o.clip_seconds = 0.5;
    o.seed = 5;
    o.num_workers = workers;
    DataLoader dl(ds, quiet(o));
    std::vector<std::vector<float>> got;
    std::vector<int64_t> order;
    for (auto& b : epoch(dl)) {
      got.push_back(b.fbank.to_vector<float>());
      got.push_back(b.waves.to_vector<float>());
      order.insert(order.end(), b.indices.begin(), b.indices.end());
    }
    if (ref.empty()) {
      ref = got, ref_order = order;
    } else {
      EXPECT_EQ(order, ref_order) << workers << " workers";
      EXPECT_TRUE(got == ref) << workers << " workers";
    }
  }
  // Another epoch reshuffles; another seed too.
  LoaderOptions o;
  o.batch_size = 3;
  o.clip_seconds = 0.5;
  o.seed = 5;
  DataLoader dl(ds, quiet(o));
  dl.start_epoch(1);
  std::vector<int64_t> e1;
  for (auto& b : epoch(dl)) e1.insert(e1.end(), b.indices.begin(), b.indices.end());
  EXPECT_NE(e1, ref_order);
  dl.start_epoch(0);
  std::vector<int64_t> e0;
  for (auto& b : epoch(dl)) e0.insert(e0.end(), b.indices.begin(), b.indices.end());
  EXPECT_EQ(e0, ref_order);
}

TEST(Loader, CentreAndFullLengthForEvaluation) {
  TempDir dir;
  fs::create_directories(dir / "a");
  auto long_clip = make_sine(40000, 500.0, 0.3, 16000);
  for (size_t i = 0; i < long_clip.size(); ++i) long_clip[i] *= 1.0f + 1e-5f * i;  // no two windows equal
  write_audio(dir / "a/long.wav", long_clip, 1, 16000, SampleFormat::Float);
  write_audio(dir / "a/short.wav", make_sine(9000, 700.0, 0.3, 16000), 1, 16000);
  Dataset ds = read_folder(dir.path());
  LoaderOptions o;
  o.batch_size = 2;
  o.shuffle = false;
  o.crop = CropMode::Center;
  o.clip_seconds = 1.0;
  DataLoader centre(ds, quiet(o));
  Batch b = *centre.next();
  const auto full = load_audio(dir / "a/long.wav").to_vector<float>();
  ASSERT_EQ(b.paths[0], fs::path(dir / "a/long.wav").lexically_normal().string());
  const int64_t start = ((40000 - 16000) / 2) / 160 * 160;
  EXPECT_EQ(find_crop(full, b.waves.data<float>(), 16000), start);
  EXPECT_EQ(b.lengths, (std::vector<int64_t>{16000, 9000}));

  o.crop = CropMode::Full;
  o.clip_seconds = 0;
  DataLoader whole(ds, quiet(o));
  Batch w = *whole.next();
  ASSERT_EQ(w.waves.shape(), (Shape{2, 40000}));
  EXPECT_EQ(w.lengths, (std::vector<int64_t>{40000, 9000}));
  ASSERT_EQ(w.fbank.shape(), (Shape{2, fbank_num_frames(40000), 128}));
  EXPECT_LE(max_diff(w.fbank.select(0, 0).contiguous(), normalize_fbank(fbank(load_audio(dir / "a/long.wav")))),
            kExact);
  const auto fm = w.frame_mask.to_vector<uint8_t>();
  const int64_t T = w.fbank.size(1);
  for (int64_t f = 0; f < T; ++f) EXPECT_EQ(fm[T + f], f >= fbank_num_frames(9000) ? 1 : 0);
  EXPECT_FALSE(whole.next().has_value());

  o.normalize = false;
  o.keep_waveforms = false;
  DataLoader raw(ds, quiet(o));
  Batch r = *raw.next();
  EXPECT_FALSE(r.waves.defined());
  EXPECT_LE(max_diff(r.fbank.select(0, 1).narrow(0, 0, fbank_num_frames(9000)).contiguous(),
                     fbank(load_audio(dir / "a/short.wav"))),
            kExact);
}

TEST(Loader, LenientModeReportsAndSkipsBadFiles) {
  TempDir dir;
  write_good_clips(dir, 3);
  const std::set<std::string> bad = write_bad_clips(dir);
  write_bytes(dir / "m.csv", "path,label\nlow/clip0.wav,low\nlow/missing.wav,low\nfolder.wav,low\n");
  fs::create_directories(dir / "folder.wav");  // unreadable as audio (we run as root, so no chmod test)
  Dataset ds = read_folder(dir.path());
  Dataset missing = read_manifest(dir / "m.csv");
  ds.items.push_back(missing.items[1]);  // a path that does not exist
  ds.items.push_back(missing.items[2]);  // a folder
  ASSERT_EQ(ds.size(), 6 + 4 + 2);
  std::vector<std::string> reported;
  LoaderOptions o;
  o.batch_size = 4;
  o.clip_seconds = 1.0;
  DataLoader dl(ds, quiet(o, &reported));
  int64_t clips = 0;
  for (auto& b : epoch(dl)) {
    clips += b.size();
    for (const auto& p : b.paths) EXPECT_EQ(bad.count(p), 0u) << p << " was not skipped";
  }
  EXPECT_EQ(clips, 6);
  LoaderStats s = dl.stats();
  EXPECT_EQ(s.clips_skipped, 6);
  EXPECT_EQ(s.clips_loaded, 6);
  std::set<std::string> rep(reported.begin(), reported.end());
  std::set<std::string> want = bad;
  want.insert(missing.items[1].path);
  want.insert(missing.items[2].path);
  EXPECT_EQ(rep, want);
  EXPECT_EQ(reported.size(), want.size());
  for (const auto& [path, why] : s.skipped) {
    EXPECT_FALSE(why.empty());
    std::printf("skipped %s: %s\n", path.c_str(), why.c_str());
  }

  // A second epoch skips the same files again and counts them, but reports each only once (a long run
  // would otherwise repeat the same lines every epoch).
  dl.start_epoch(1);
  int64_t again = 0;
  for (auto& b : epoch(dl)) again += b.size();
  EXPECT_EQ(again, 6);
  s = dl.stats();
  EXPECT_EQ(s.clips_skipped, 12);
  EXPECT_EQ(s.skipped.size(), want.size());
  EXPECT_EQ(reported.size(), want.size());
}

TEST(Loader, StrictModeStopsWithThePath) {
  TempDir dir;
  fs::create_directories(dir / "a");
  write_audio(dir / "a/good.wav", make_sine(16000, 440.0, 0.3, 16000), 1, 16000);
  write_bytes(dir / "a/zbad.wav", "not audio at all");
  Dataset ds = read_folder(dir.path());
  for (int workers : {0, 2}) {
    LoaderOptions o;
    o.batch_size = 1;
    o.shuffle = false;
    o.strict = true;
    o.num_workers = workers;
    DataLoader dl(ds, quiet(o));
    ASSERT_TRUE(dl.next().has_value());
    try {
      dl.next();
      ADD_FAILURE() << "strict mode accepted a corrupt file";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(dir / "a/zbad.wav"), std::string::npos) << e.what();
    }
  }
}

TEST(Loader, PrefetchIsBoundedAndShutdownIsClean) {
  TempDir dir;
  fs::create_directories(dir / "a");
  for (int i = 0; i < 24; ++i)
    write_audio(dir / ("a/c" + std::to_string(i) + ".wav"), make_sine(8000, 440.0 + i, 0.3, 16000), 1, 16000);
  Dataset ds = read_folder(dir.path());
  LoaderOptions o;
  o.batch_size = 2;
  o.clip_seconds = 0.5;
  o.num_workers = 2;
  o.prefetch_batches = 2;
  {
    DataLoader dl(ds, quiet(o));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_LE(dl.stats().clips_loaded, o.prefetch_batches * o.batch_size) << "workers ran past the queue bound";
    ASSERT_TRUE(dl.next().has_value());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_LE(dl.stats().clips_loaded, (o.prefetch_batches + 1) * o.batch_size);
  }  // destroyed mid-epoch: must not hang or crash
  DataLoader dl(ds, quiet(o));
  EXPECT_EQ(epoch(dl).size(), 12u);
  EXPECT_FALSE(dl.next().has_value());
}

TEST(Loader, OptionsAreChecked) {
  Dataset ds;
  LoaderOptions o;
  o.batch_size = 0;
  EXPECT_THROW(DataLoader(ds, o), Error);
  o = LoaderOptions{};
  o.clip_seconds = 0;
  EXPECT_THROW(DataLoader(ds, o), Error);
  o = LoaderOptions{};
  o.sample_rate = 22050;
  EXPECT_THROW(DataLoader(ds, o), Error);
  o = LoaderOptions{};
  DataLoader empty(ds, o);
  EXPECT_FALSE(empty.next().has_value());
}

TEST(FbankCache, HitsGiveIdenticalNumbersAndSettingsInvalidate) {
  TempDir dir;
  write_good_clips(dir, 3);
  Dataset ds = read_folder(dir.path());
  LoaderOptions o;
  o.batch_size = 3;
  o.clip_seconds = 0.8;
  o.seed = 2;
  o.keep_waveforms = false;
  std::vector<float> uncached;
  {
    DataLoader dl(ds, quiet(o));
    for (auto& b : epoch(dl)) {
      auto v = b.fbank.to_vector<float>();
      uncached.insert(uncached.end(), v.begin(), v.end());
    }
  }
  o.cache_dir = dir / "cache";
  for (int run = 0; run < 2; ++run) {
    DataLoader dl(ds, quiet(o));
    std::vector<float> got;
    for (auto& b : epoch(dl)) {
      auto v = b.fbank.to_vector<float>();
      got.insert(got.end(), v.begin(), v.end());
    }
    EXPECT_TRUE(got == uncached) << "run " << run;
    const LoaderStats s = dl.stats();
    EXPECT_EQ(s.cache_hits, run == 0 ? 0 : 6) << "run " << run;
    EXPECT_EQ(s.cache_misses, run == 0 ? 6 : 0) << "run " << run;
  }
  // Entries are keyed by content: a renamed copy hits, an edited file misses.
  FbankCache cache(dir / "cache", o.fbank);
  fs::copy_file(dir / "low/clip0.flac", dir / "renamed.flac");
  EXPECT_EQ(cache.key_for(dir / "low/clip0.flac"), cache.key_for(dir / "renamed.flac"));
  EXPECT_TRUE(cache.get(cache.key_for(dir / "renamed.flac")).has_value());
  write_audio(dir / "renamed.flac", make_sine(16000, 123.0, 0.3, 16000), 1, 16000);
  EXPECT_FALSE(cache.get(cache.key_for(dir / "renamed.flac")).has_value());
  // Another fbank setting uses other entries.
  FbankOptions other;
  other.num_mel_bins = 80;
  FbankCache cache80(dir / "cache", other);
  EXPECT_NE(cache80.key_for(dir / "low/clip0.flac"), cache.key_for(dir / "low/clip0.flac"));
  // A damaged entry is a miss, then gets rewritten.
  const std::string entry = cache.entry_path(cache.key_for(dir / "low/clip0.flac"));
  ASSERT_TRUE(fs::exists(entry));
  write_bytes(entry, "damaged");
  EXPECT_FALSE(cache.get(cache.key_for(dir / "low/clip0.flac")).has_value());
  {
    DataLoader dl(ds, quiet(o));
    epoch(dl);
    EXPECT_EQ(dl.stats().cache_misses, 1);
  }
  EXPECT_TRUE(cache.get(cache.key_for(dir / "low/clip0.flac")).has_value());
  // No temporaries are left in the cache folder.
  for (auto& e : fs::recursive_directory_iterator(dir / "cache"))
    if (e.is_regular_file()) {
      EXPECT_EQ(e.path().extension(), ".safetensors") << e.path();
    }
}

TEST(FbankCache, HashIsStableAndSensitive) {
  TempDir dir;
  std::string a(100000, 'a');
  write_bytes(dir / "a.bin", a);
  EXPECT_EQ(hash_file(dir / "a.bin"), hash_bytes(a.data(), a.size()));
  std::string b = a;
  b[54321] = 'b';
  EXPECT_FALSE(hash_bytes(b.data(), b.size()) == hash_bytes(a.data(), a.size()));
  EXPECT_FALSE(hash_bytes(a.data(), 15) == hash_bytes(a.data(), 16));  // length matters
  EXPECT_EQ(hash_bytes("", 0).hex().size(), 32u);
  EXPECT_THROW(hash_file(dir / "none"), Error);
}
