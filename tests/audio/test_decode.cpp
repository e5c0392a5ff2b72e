// Tests of audio/decode and audio/resample: band-limited resampling against analytic sines, every container
// and sample encoding libsndfile offers here (written to a temp dir with write_audio), mix-down, .npy
// waveforms, fbank agreement between a 44.1 kHz and a 16 kHz file of the same tone, and bad files (each
// must throw an error naming the path). Not fbank parity (test_fbank.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <filesystem>
#include <fstream>

#include "audio/decode.h"
#include "audio/fbank.h"
#include "audio/resample.h"
#include "audio_test_util.h"
#include "tensor/io.h"

using namespace sonar;
using namespace sonar::audio;
using sonar::audio::test_util::make_sine;
using sonar::audio::test_util::TempDir;

namespace {

// libsoxr HQ is specified at 20-bit precision; float input gives well above this.
constexpr double kResampleSnrDb = 120.0;
// 16-bit PCM quantisation caps the SNR of a full-scale-ish sine near 98 dB; resampling after it.
constexpr double kPcm16SnrDb = 85.0;
// Lossy codecs (Vorbis, Opus, MP3) at their default settings on a pure tone.
constexpr double kLossyLevelDb = 1.0;
// Edge samples ignored when comparing with analytic signals (resampler filter transients).
constexpr int64_t kEdge = 2000;
// Mean |difference| of fbanks of a 44.1 kHz and a 16 kHz file of the same tone, over bins within 60 dB of
// the frame's loudest bin (log units; 1e-3 is 0.1%). Bins far below are the resampler's noise floor.
constexpr double kCrossRateFbankMeanTol = 1e-3;
constexpr double kCrossRateFbankMaxTol = 1e-2;
constexpr double kDynamicRangeLog = 13.8;  // 60 dB of power in natural-log units

// SNR in dB of `got` against `want` over [kEdge, n - kEdge).
double snr_db(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  const size_t n = std::min(got.size(), want.size());
  double sig = 0, err = 0;
  for (size_t i = kEdge; i + kEdge < n; ++i) {
    sig += static_cast<double>(want[i]) * want[i];
    const double d = static_cast<double>(got[i]) - want[i];
    err += d * d;
  }
  return 10 * std::log10(sig / std::max(err, 1e-300));
}

double rms(const std::vector<float>& w) {
  double s = 0;
  size_t cnt = 0;
  for (size_t i = kEdge; i + kEdge < w.size(); ++i) s += static_cast<double>(w[i]) * w[i], ++cnt;
  return std::sqrt(s / cnt);
}

// The frequency (Hz, 10 Hz grid) with the most energy in [50, 7950] Hz: a plain single-bin DFT scan.
double dominant_frequency(const std::vector<float>& w, double sr) {
  double best_f = 0, best_p = -1;
  const size_t n = std::min<size_t>(w.size() - 2 * kEdge, 8000);
  for (int f = 50; f < 7950; f += 10) {
    std::complex<double> acc = 0;
    for (size_t i = 0; i < n; ++i) acc += static_cast<double>(w[kEdge + i]) * std::polar(1.0, -2 * M_PI * f * i / sr);
    if (std::norm(acc) > best_p) best_p = std::norm(acc), best_f = f;
  }
  return best_f;
}

std::vector<float> interleave(const std::vector<float>& l, const std::vector<float>& r) {
  std::vector<float> out;
  for (size_t i = 0; i < l.size(); ++i) out.push_back(l[i]), out.push_back(r[i]);
  return out;
}

void expect_error_naming(const std::function<void()>& f, const std::string& path, const std::string& what = "") {
  try {
    f();
    ADD_FAILURE() << "no error for " << path;
  } catch (const Error& e) {
    const std::string msg = e.what();
    std::printf("expected error: %s\n", msg.c_str());
    EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
    if (!what.empty()) {
      EXPECT_NE(msg.find(what), std::string::npos) << msg;
    }
  }
}

}  // namespace

TEST(Resample, SineKeepsFrequencyAndHighSnr) {
  for (double in_rate : {44100.0, 48000.0, 22050.0, 8000.0, 32000.0}) {
    const int64_t n = static_cast<int64_t>(in_rate * 1.5);
    const auto in = make_sine(n, 1000.0, 0.8, in_rate);
    const auto out = resample(in.data(), n, in_rate, 16000.0);
    ASSERT_EQ(static_cast<int64_t>(out.size()), resampled_length(n, in_rate, 16000.0)) << in_rate;
    const auto want = make_sine(static_cast<int64_t>(out.size()), 1000.0, 0.8, 16000.0);
    const double snr = snr_db(out, want);
    std::printf("%.0f Hz -> 16 kHz: SNR %.1f dB against the analytic sine\n", in_rate, snr);
    EXPECT_GE(snr, kResampleSnrDb) << in_rate;
    EXPECT_EQ(dominant_frequency(out, 16000.0), 1000.0);
  }
}

TEST(Resample, RemovesContentAboveTheNewNyquist) {
  // 11 kHz cannot exist at 16 kHz: a band-limited resampler removes it (linear interpolation would alias
  // it to 5 kHz at a high level).
  const auto in = make_sine(44100, 11000.0, 0.8, 44100.0);
  const auto out = resample(in.data(), 44100, 44100.0, 16000.0);
  EXPECT_LT(rms(out), 0.8 / std::sqrt(2.0) * 1e-3);  // at least 60 dB down
}

TEST(Resample, LengthsAndIdentity) {
  EXPECT_EQ(resampled_length(44100, 44100, 16000), 16000);
  EXPECT_EQ(resampled_length(1000, 44100, 16000), 363);  // round(362.8)
  EXPECT_EQ(resampled_length(0, 44100, 16000), 0);
  const auto in = make_sine(100, 440.0, 0.5, 16000.0);
  EXPECT_EQ(resample(in.data(), 100, 16000, 16000), in);
  EXPECT_THROW(resampled_length(10, 0, 16000), Error);
  Tensor t = resample(from_vector(make_sine(4410, 440.0, 0.5, 44100.0), {4410}), 44100, 16000);
  EXPECT_EQ(t.shape(), (Shape{1600}));
}

TEST(Decode, LosslessFormatsAtAnyRateAndChannelCount) {
  TempDir dir;
  struct Case {
    std::string name;
    SampleFormat fmt;
    double min_snr;
  };
  const std::vector<Case> cases = {
      {"a.wav", SampleFormat::PCM16, kPcm16SnrDb},   {"b.wav", SampleFormat::PCM24, kResampleSnrDb},
      {"c.wav", SampleFormat::PCM32, kResampleSnrDb}, {"d.wav", SampleFormat::Float, kResampleSnrDb},
      {"e.wav", SampleFormat::Double, kResampleSnrDb}, {"f.flac", SampleFormat::PCM16, kPcm16SnrDb},
      {"g.flac", SampleFormat::PCM24, kResampleSnrDb}, {"h.aiff", SampleFormat::PCM16, kPcm16SnrDb},
      {"i.wav", SampleFormat::PCMU8, 40.0},  // 8-bit
  };
  const double rate = 44100;
  const int64_t n = 66150;  // 1.5 s
  const auto l = make_sine(n, 1000.0, 0.7, rate), r = make_sine(n, 1000.0, 0.7, rate);
  for (const auto& c : cases) {
    const std::string path = dir / c.name;
    write_audio(path, interleave(l, r), 2, static_cast<int>(rate), c.fmt);
    const AudioInfo info = probe_audio(path);
    EXPECT_EQ(info.frames, n) << c.name;
    EXPECT_EQ(info.sample_rate, 44100) << c.name;
    EXPECT_EQ(info.channels, 2) << c.name;
    Tensor w = load_audio(path);
    ASSERT_EQ(w.shape(), (Shape{resampled_length(n, rate, 16000)})) << c.name;
    const auto got = w.to_vector<float>();
    const double snr = snr_db(got, make_sine(w.size(0), 1000.0, 0.7, 16000.0));
    std::printf("%s (%s): SNR %.1f dB\n", c.name.c_str(), info.format.c_str(), snr);
    EXPECT_GE(snr, c.min_snr) << c.name;
  }
}

TEST(Decode, LossyFormatsKeepTheTone) {
  TempDir dir;
  const double rate = 48000;
  const int64_t n = 96000;
  const auto tone = make_sine(n, 1500.0, 0.5, rate);
  for (std::string name : {"tone.ogg", "tone.opus", "tone.mp3"}) {
    const std::string path = dir / name;
    write_audio(path, tone, 1, static_cast<int>(rate));
    Tensor w = load_audio(path);
    const auto got = w.to_vector<float>();
    // Encoders may add a few ms of priming delay; the length stays within 0.1 s.
    EXPECT_NEAR(static_cast<double>(got.size()), 32000.0, 1600.0) << name;
    EXPECT_EQ(dominant_frequency(got, 16000.0), 1500.0) << name;
    const double level = 20 * std::log10(rms(got) / (0.5 / std::sqrt(2.0)));
    std::printf("%s (%s): level %.2f dB\n", name.c_str(), probe_audio(path).format.c_str(), level);
    EXPECT_LE(std::abs(level), kLossyLevelDb) << name;
  }
}

TEST(Decode, MixesChannelsDownByTheMean) {
  TempDir dir;
  const auto l = make_sine(8000, 300.0, 0.5, 16000.0), r = make_sine(8000, 2000.0, 0.25, 16000.0);
  std::vector<float> three;  // 3 channels: l, r, silence
  for (size_t i = 0; i < l.size(); ++i) three.insert(three.end(), {l[i], r[i], 0.0f});
  write_audio(dir / "three.wav", three, 3, 16000, SampleFormat::Float);
  const auto got = load_audio(dir / "three.wav").to_vector<float>();
  ASSERT_EQ(got.size(), l.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], (static_cast<double>(l[i]) + r[i]) / 3.0, 1e-7) << i;
  DecodedAudio raw = decode_audio(dir / "three.wav");
  EXPECT_EQ(raw.channels, 3);
  EXPECT_EQ(raw.frames, 8000);
  EXPECT_EQ(raw.samples[3 * 100 + 1], r[100]);
}

TEST(Decode, FbankOf441kFileAgreesWithThe16kFile) {
  TempDir dir;
  // A tone with two partials, 2 s, written at both rates as float WAV.
  auto tone = [](int64_t n, double sr) {
    auto a = make_sine(n, 440.0, 0.5, sr), b = make_sine(n, 3100.0, 0.2, sr);
    for (int64_t i = 0; i < n; ++i) a[i] += b[i];
    return a;
  };
  write_audio(dir / "hi.wav", tone(88200, 44100), 1, 44100, SampleFormat::Float);
  write_audio(dir / "lo.wav", tone(32000, 16000), 1, 16000, SampleFormat::Float);
  Tensor a = fbank(load_audio(dir / "hi.wav")), b = fbank(load_audio(dir / "lo.wav"));
  ASSERT_EQ(a.shape(), b.shape());
  const int64_t T = a.size(0), F = a.size(1);
  double sum = 0, worst = 0;
  int64_t count = 0;
  for (int64_t t = 2; t < T - 2; ++t) {  // skip the resampler's edge transients
    double peak = -1e30;
    for (int64_t f = 0; f < F; ++f) peak = std::max(peak, b.at({t, f}));
    for (int64_t f = 0; f < F; ++f) {
      if (b.at({t, f}) < peak - kDynamicRangeLog) continue;
      const double d = std::abs(a.at({t, f}) - b.at({t, f}));
      sum += d, worst = std::max(worst, d), ++count;
    }
  }
  std::printf("44.1 kHz vs 16 kHz fbank: mean |diff| %.2g, max %.2g over %lld bins\n", sum / count, worst,
              static_cast<long long>(count));
  EXPECT_GT(count, 1000);
  EXPECT_LE(sum / count, kCrossRateFbankMeanTol);
  EXPECT_LE(worst, kCrossRateFbankMaxTol);
}

TEST(Decode, NpyWaveforms) {
  TempDir dir;
  const auto w = make_sine(1600, 440.0, 0.5, 16000.0);
  save_npy(dir / "one.npy", from_vector(w, {1600}));
  save_npy(dir / "row.npy", from_vector(w, {1, 1600}));
  std::vector<float> two(w);
  two.insert(two.end(), w.begin(), w.end());
  save_npy(dir / "two.npy", from_vector(two, {2, 1600}));
  EXPECT_EQ(load_audio(dir / "one.npy").to_vector<float>(), w);
  EXPECT_EQ(load_audio(dir / "row.npy").to_vector<float>(), w);
  EXPECT_EQ(load_wave_npy(dir / "two.npy").shape(), (Shape{2, 1600}));
  expect_error_naming([&] { load_audio(dir / "two.npy"); }, dir / "two.npy", "2 clips");
  EXPECT_EQ(probe_audio(dir / "one.npy").frames, 1600);
  // Resampling a 16 kHz .npy to another rate works too.
  EXPECT_EQ(load_audio(dir / "one.npy", 8000).numel(), 800);

  save_npy(dir / "ints.npy", from_vector(std::vector<int64_t>{1, 2, 3}, {3}));
  expect_error_naming([&] { load_audio(dir / "ints.npy"); }, dir / "ints.npy", "float32");
  auto bad = w;
  bad[77] = NAN;
  save_npy(dir / "nan.npy", from_vector(bad, {1600}));
  expect_error_naming([&] { load_audio(dir / "nan.npy"); }, dir / "nan.npy", "sample 77");
  save_npy(dir / "cube.npy", from_vector(w, {2, 2, 400}));
  expect_error_naming([&] { load_audio(dir / "cube.npy"); }, dir / "cube.npy");
  test_util::write_bytes(dir / "junk.npy", "not an npy file");
  expect_error_naming([&] { load_audio(dir / "junk.npy"); }, dir / "junk.npy");
}

TEST(Decode, BadFilesThrowErrorsNamingThePath) {
  TempDir dir;
  expect_error_naming([&] { load_audio(dir / "missing.wav"); }, dir / "missing.wav", "no such file");
  test_util::write_bytes(dir / "empty.wav", "");
  expect_error_naming([&] { load_audio(dir / "empty.wav"); }, dir / "empty.wav", "empty");
  test_util::write_bytes(dir / "garbage.wav", std::string(5000, 'x'));
  expect_error_naming([&] { load_audio(dir / "garbage.wav"); }, dir / "garbage.wav");
  test_util::write_bytes(dir / "garbage.flac", "fLaC" + std::string(3000, '\x7f'));
  expect_error_naming([&] { load_audio(dir / "garbage.flac"); }, dir / "garbage.flac");
  expect_error_naming([&] { load_audio(dir.path()); }, dir.path(), "directory");

  // A valid header with no samples.
  write_audio(dir / "nosamples.wav", {}, 1, 16000);
  expect_error_naming([&] { load_audio(dir / "nosamples.wav"); }, dir / "nosamples.wav", "no audio");

  // A FLAC file cut in half: the header announces more frames than the stream holds.
  write_audio(dir / "full.flac", make_sine(48000, 440.0, 0.5, 16000.0), 1, 16000);
  std::string bytes;
  {
    std::ifstream f(dir / "full.flac", std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  test_util::write_bytes(dir / "cut.flac", bytes.substr(0, bytes.size() / 2));
  expect_error_naming([&] { load_audio(dir / "cut.flac"); }, dir / "cut.flac");

  // A 16-bit WAV cut in half (an interrupted copy): libsndfile itself would quietly read the first half.
  write_audio(dir / "full.wav", make_sine(48000, 440.0, 0.5, 16000.0), 1, 16000);
  {
    std::ifstream f(dir / "full.wav", std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  test_util::write_bytes(dir / "cut.wav", bytes.substr(0, bytes.size() / 2));
  expect_error_naming([&] { load_audio(dir / "cut.wav"); }, dir / "cut.wav", "truncated");
  EXPECT_EQ(load_audio(dir / "full.wav").numel(), 48000);

  // NaN and Inf in a float WAV.
  auto w = make_sine(1000, 440.0, 0.5, 16000.0);
  w[500] = NAN;
  write_audio(dir / "nan.wav", w, 1, 16000, SampleFormat::Float);
  expect_error_naming([&] { load_audio(dir / "nan.wav"); }, dir / "nan.wav", "sample 500");
  w[500] = INFINITY;
  write_audio(dir / "inf.wav", w, 1, 16000, SampleFormat::Float);
  expect_error_naming([&] { load_audio(dir / "inf.wav"); }, dir / "inf.wav", "NaN or Inf");

  // Unreadable (permissions) only means something when not running as root.
  if (::geteuid() != 0) {
    write_audio(dir / "locked.wav", make_sine(1000, 440.0, 0.5, 16000.0), 1, 16000);
    std::filesystem::permissions(dir / "locked.wav", std::filesystem::perms::none);
    expect_error_naming([&] { load_audio(dir / "locked.wav"); }, dir / "locked.wav");
  }
}

TEST(Decode, WriterIsAtomicAndChecksItsArguments) {
  TempDir dir;
  EXPECT_THROW(write_audio(dir / "x.xyz", {0.0f}, 1, 16000), Error);
  EXPECT_THROW(write_audio(dir / "odd.wav", {0.0f, 0.0f, 0.0f}, 2, 16000), Error);
  EXPECT_THROW(write_audio(dir / "nope/deeper/x.wav", {0.0f}, 1, 16000), Error);
  // Nothing but what succeeded is left behind (no temporaries).
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path())) (void)e, ++files;
  EXPECT_EQ(files, 0);
}
