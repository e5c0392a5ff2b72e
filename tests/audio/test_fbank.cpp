// Tests of audio/fbank: parity with torchaudio's Kaldi fbank on the BEATs fixtures (float32 output and the
// float64 truth), an independent double-precision reference (plain DFT, mel filters written from the Kaldi
// definition) on silence, loud tones and chirps, edge lengths, the batched variants, thread invariance and
// normalisation. Not the decoders or datasets (test_decode.cpp, test_dataset.cpp).
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <vector>

#include "audio/fbank.h"
#include "tensor/io.h"

using namespace sonar;
using namespace sonar::audio;

namespace {

// Within this of torchaudio's float32 output on the fixture clips (the brief's bound).
constexpr double kTorchaudioTol = 1e-3;
// Floor of the bound against the float64 truth: max(2 * torchaudio's own error, kTruthFloor).
constexpr double kTruthFloor = 1e-3;
// What this implementation actually achieves on the fixture clips (double frames, torchaudio's mel weights;
// the rest is 1-ulp differences between glibc's and PyTorch's float32 log in four filter weights).
constexpr double kFixtureTruthTol = 1e-4;
// Our float32 output against the in-test double reference on synthetic signals. The default mel weights are
// computed in torchaudio's float32 arithmetic (as the fixtures were), the reference's in double: they differ
// by ~1e-4 at most in the log output.
constexpr double kReferenceTol = 1e-3;
// With exact double weights (torchaudio_mel_weights = false) only the float32 rounding of the output remains.
constexpr double kExactWeightsTol = 1e-5;
// Normalisation is float32 arithmetic on values of magnitude ~2: a few ulps.
constexpr double kNormTol = 1e-6;

const std::string kFix = std::string(SONAR_FIXTURES_DIR) + "/beats_tiny/";

struct Cmp {
  double max_abs = 0;
  int64_t worst = -1;
};

// Max-abs difference; prints the first few mismatches above `tol`.
Cmp compare(const std::vector<float>& got, const std::vector<double>& want, double tol, const char* what) {
  EXPECT_EQ(got.size(), want.size()) << what;
  Cmp c;
  int printed = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double d = std::abs(static_cast<double>(got[i]) - want[i]);
    if (d > c.max_abs) c.max_abs = d, c.worst = static_cast<int64_t>(i);
    if (d > tol && printed < 5) {
      std::printf("%s: mismatch at %zu (frame %zu, bin %zu): got %.7f want %.7f\n", what, i, i / 128, i % 128,
                  got[i], want[i]);
      ++printed;
    }
  }
  return c;
}

// ---- an independent float64 reference: a literal transcription of the Kaldi definition ----------------
double hz_to_mel(double f) { return 1127.0 * std::log(1.0 + f / 700.0); }

std::vector<double> reference_fbank(const std::vector<float>& wave, int mel_bins = 128, int win = 400,
                                    int shift = 160, int nfft = 512, double sr = 16000.0) {
  const int n = static_cast<int>(wave.size());
  const int frames = n < win ? 0 : 1 + (n - win) / shift;
  // Triangles on the mel scale between 20 Hz and Nyquist, evaluated at each FFT bin's frequency.
  const double lo = hz_to_mel(20.0), hi = hz_to_mel(sr / 2);
  const double step = (hi - lo) / (mel_bins + 1);
  std::vector<std::vector<double>> filt(mel_bins, std::vector<double>(nfft / 2 + 1, 0.0));
  for (int m = 0; m < mel_bins; ++m)
    for (int k = 0; k < nfft / 2; ++k) {  // the Nyquist bin gets no weight
      const double mel = hz_to_mel(k * sr / nfft);
      const double l = lo + m * step, c = lo + (m + 1) * step, r = lo + (m + 2) * step;
      double v = 0;
      if (mel > l && mel <= c) v = (mel - l) / (c - l);
      else if (mel > c && mel < r) v = (r - mel) / (r - c);
      filt[m][k] = v;
    }
  std::vector<double> out(static_cast<size_t>(frames) * mel_bins);
  std::vector<double> x(nfft), power(nfft / 2 + 1);
  std::vector<long double> cos_t(nfft), sin_t(nfft);  // e^{-2 pi i j / nfft}
  for (int j = 0; j < nfft; ++j) {
    cos_t[j] = std::cos(2.0L * M_PI * j / nfft);
    sin_t[j] = -std::sin(2.0L * M_PI * j / nfft);
  }
  for (int f = 0; f < frames; ++f) {
    std::vector<double> raw(win);
    double mean = 0;
    for (int i = 0; i < win; ++i) raw[i] = wave[f * shift + i] * 32768.0, mean += raw[i] / win;
    for (int i = 0; i < win; ++i) raw[i] -= mean;
    std::fill(x.begin(), x.end(), 0.0);
    for (int i = 0; i < win; ++i) {
      const double prev = i == 0 ? raw[0] : raw[i - 1];
      const double hann = 0.5 - 0.5 * std::cos(2 * M_PI * i / (win - 1));
      x[i] = (raw[i] - 0.97 * prev) * std::pow(hann, 0.85);
    }
    for (int k = 0; k <= nfft / 2; ++k) {  // plain DFT
      long double re = 0, im = 0;
      for (int i = 0; i < win; ++i) {
        const int j = (k * i) % nfft;
        re += x[i] * cos_t[j];
        im += x[i] * sin_t[j];
      }
      power[k] = static_cast<double>(re * re + im * im);
    }
    for (int m = 0; m < mel_bins; ++m) {
      double e = 0;
      for (int k = 0; k <= nfft / 2; ++k) e += filt[m][k] * power[k];
      out[static_cast<size_t>(f) * mel_bins + m] = std::log(std::max(e, static_cast<double>(FLT_EPSILON)));
    }
  }
  return out;
}

std::vector<float> sine(int n, double freq, double amp, double sr = 16000.0) {
  std::vector<float> w(n);
  for (int i = 0; i < n; ++i) w[i] = static_cast<float>(amp * std::sin(2 * M_PI * freq * i / sr));
  return w;
}

// Linear chirp from f0 to f1 over the clip.
std::vector<float> chirp(int n, double f0, double f1, double amp, double sr = 16000.0) {
  std::vector<float> w(n);
  const double dur = n / sr;
  for (int i = 0; i < n; ++i) {
    const double t = i / sr;
    w[i] = static_cast<float>(amp * std::sin(2 * M_PI * (f0 * t + 0.5 * (f1 - f0) / dur * t * t)));
  }
  return w;
}

Tensor wave_tensor(const std::vector<float>& w) { return from_vector(w, {static_cast<int64_t>(w.size())}); }

void expect_matches_reference(const std::vector<float>& w, const char* what) {
  Tensor fb = fbank(wave_tensor(w));
  ASSERT_EQ(fb.size(0), fbank_num_frames(static_cast<int64_t>(w.size())));
  ASSERT_EQ(fb.size(1), 128);
  const auto want = reference_fbank(w);
  const Cmp c = compare(fb.to_vector<float>(), want, kReferenceTol, what);
  std::printf("%s: max |ours - float64 reference| = %.3g\n", what, c.max_abs);
  EXPECT_LE(c.max_abs, kReferenceTol) << what;
}

}  // namespace

TEST(Fbank, FrameGeometry) {
  FbankOptions o;
  EXPECT_EQ(o.window_size(), 400);
  EXPECT_EQ(o.window_shift(), 160);
  EXPECT_EQ(o.padded_window_size(), 512);
  EXPECT_EQ(fbank_num_frames(0), 0);
  EXPECT_EQ(fbank_num_frames(399), 0);
  EXPECT_EQ(fbank_num_frames(400), 1);
  EXPECT_EQ(fbank_num_frames(559), 1);
  EXPECT_EQ(fbank_num_frames(560), 2);
  EXPECT_EQ(fbank_num_frames(16000), 98);
  EXPECT_EQ(fbank_num_frames(160000), 998);
}

// The fixtures: torchaudio float32 (fbank_i) and float64 (fbank64_i) of wave.npy's clips, clip 1 unpadded.
TEST(Fbank, ParityWithTorchaudioFixtures) {
  Tensor wave = load_npy(kFix + "wave.npy");
  ASSERT_EQ(wave.shape(), (Shape{2, 16000}));
  const int64_t lengths[2] = {16000, 11680};
  for (int c = 0; c < 2; ++c) {
    Tensor clip = wave.select(0, c).narrow(0, 0, lengths[c]).contiguous();
    Tensor ours = fbank(clip);
    Tensor ta = load_npy(kFix + "fbank_" + std::to_string(c) + ".npy");
    NpyF64 truth = load_npy_f64(kFix + "fbank64_" + std::to_string(c) + ".npy");
    ASSERT_EQ(ours.shape(), ta.shape());
    ASSERT_EQ(ours.shape(), truth.shape);
    const auto got = ours.to_vector<float>();
    std::vector<double> ta64;
    for (float v : ta.to_vector<float>()) ta64.push_back(v);
    const std::string name = "clip " + std::to_string(c);
    const Cmp vs_ta = compare(got, ta64, kTorchaudioTol, (name + " vs torchaudio").c_str());
    // torchaudio's own float32 error on this clip sets the bound against the truth.
    const Cmp ta_err = compare(ta.to_vector<float>(), truth.values, 1e9, "torchaudio vs truth");
    const double bound = std::max(2 * ta_err.max_abs, kTruthFloor);
    const Cmp vs_truth = compare(got, truth.values, bound, (name + " vs float64").c_str());
    std::printf("%s: |ours - torchaudio| %.3g, |ours - float64| %.3g, |torchaudio - float64| %.3g\n",
                name.c_str(), vs_ta.max_abs, vs_truth.max_abs, ta_err.max_abs);
    EXPECT_LE(vs_ta.max_abs, kTorchaudioTol) << name;
    EXPECT_LE(vs_truth.max_abs, bound) << name;
    EXPECT_LE(vs_truth.max_abs, kFixtureTruthTol) << name;
  }
}

TEST(Fbank, IndependentReferenceOnFixtureClip) {
  Tensor wave = load_npy(kFix + "wave.npy");
  expect_matches_reference(wave.select(0, 1).narrow(0, 0, 11680).contiguous().to_vector<float>(), "fixture clip 1");
}

TEST(Fbank, SilenceGivesTheLogFloor) {
  Tensor fb = fbank(wave_tensor(std::vector<float>(4000, 0.0f)));
  ASSERT_EQ(fb.size(0), 23);
  const float floor = static_cast<float>(std::log(static_cast<double>(FLT_EPSILON)));
  for (float v : fb.to_vector<float>()) ASSERT_EQ(v, floor);
  // A constant (DC) signal is removed by the DC offset and gives the floor too.
  Tensor dc = fbank(wave_tensor(std::vector<float>(4000, 0.25f)));
  for (float v : dc.to_vector<float>()) ASSERT_EQ(v, floor);
}

TEST(Fbank, LoudPureTones) {
  expect_matches_reference(sine(4000, 1000.0, 0.99), "1 kHz tone at -0.1 dBFS");
  expect_matches_reference(sine(4000, 7777.0, 1.0), "7.777 kHz tone at 0 dBFS");
  expect_matches_reference(sine(4000, 50.0, 1.0), "50 Hz tone at 0 dBFS");
}

TEST(Fbank, LoudChirps) {
  expect_matches_reference(chirp(8000, 30.0, 7990.0, 1.0), "rising chirp 30 Hz - 7.99 kHz");
  expect_matches_reference(chirp(8000, 7000.0, 100.0, 0.9), "falling chirp 7 kHz - 100 Hz");
}

TEST(Fbank, ShorterThanOneFrameIsEmpty) {
  Tensor fb = fbank(wave_tensor(sine(399, 440.0, 0.5)));
  EXPECT_EQ(fb.shape(), (Shape{0, 128}));
  Tensor none = fbank(Tensor::empty({0}));
  EXPECT_EQ(none.shape(), (Shape{0, 128}));
}

TEST(Fbank, ExactlyOneFrame) {
  const auto w = chirp(400, 200.0, 5000.0, 0.7);
  expect_matches_reference(w, "one 400-sample frame");
  EXPECT_EQ(fbank(wave_tensor(w)).shape(), (Shape{1, 128}));
}

TEST(Fbank, BadInputThrows) {
  EXPECT_THROW(fbank(Tensor::empty({2, 400})), Error);
  EXPECT_THROW(fbank(Tensor::empty({400}, DType::Int64)), Error);
  auto w = sine(800, 440.0, 0.5);
  w[123] = NAN;
  try {
    fbank(wave_tensor(w));
    FAIL() << "NaN accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sample 123"), std::string::npos) << e.what();
  }
  FbankOptions bad;
  bad.num_mel_bins = 2;
  EXPECT_THROW(fbank(wave_tensor(sine(800, 440.0, 0.5)), bad), Error);
  bad = FbankOptions{};
  bad.high_freq = 9000;  // above Nyquist
  EXPECT_THROW(fbank(wave_tensor(sine(800, 440.0, 0.5)), bad), Error);
}

TEST(Fbank, NonContiguousInput) {
  Tensor wave = load_npy(kFix + "wave.npy");
  Tensor strided = wave.narrow(1, 0, 4000).select(0, 0);  // a view (contiguous here) ...
  Tensor every_other = wave.select(0, 0).slice(0, 0, 16000, 2);  // ... and a strided one
  EXPECT_EQ(fbank(every_other).to_vector<float>(), fbank(every_other.contiguous()).to_vector<float>());
  EXPECT_EQ(fbank(strided).to_vector<float>(), fbank(strided.contiguous()).to_vector<float>());
}

TEST(Fbank, BatchEqualsPerRowAndThreadCountDoesNotMatter) {
  Tensor wave = load_npy(kFix + "wave.npy");
  Tensor batch = fbank_batch(wave);
  ASSERT_EQ(batch.shape(), (Shape{2, 98, 128}));
  for (int c = 0; c < 2; ++c) {
    Tensor row = fbank(wave.select(0, c).contiguous());
    EXPECT_EQ(batch.select(0, c).contiguous().to_vector<float>(), row.to_vector<float>()) << c;
  }
  FbankOptions serial;
  serial.num_threads = 1;
  FbankOptions two;
  two.num_threads = 2;
  EXPECT_EQ(fbank_batch(wave, serial).to_vector<float>(), batch.to_vector<float>());
  EXPECT_EQ(fbank_batch(wave, two).to_vector<float>(), batch.to_vector<float>());
}

TEST(Fbank, PaddedBatchUsesRealSamplesAndMasksTheRest) {
  Tensor wave = load_npy(kFix + "wave.npy");
  PaddedFbank p = fbank_padded(wave, {16000, 11680}, {}, -7.0f);
  ASSERT_EQ(p.fbank.shape(), (Shape{2, 98, 128}));
  ASSERT_EQ(p.frame_mask.shape(), (Shape{2, 98}));
  EXPECT_EQ(p.num_frames, (std::vector<int64_t>{98, 71}));
  const auto ta1 = load_npy(kFix + "fbank_1.npy").to_vector<float>();
  const auto got1 = p.fbank.select(0, 1).narrow(0, 0, 71).contiguous().to_vector<float>();
  std::vector<double> ta64(ta1.begin(), ta1.end());
  EXPECT_LE(compare(got1, ta64, kTorchaudioTol, "padded clip 1").max_abs, kTorchaudioTol);
  const auto mask = p.frame_mask.to_vector<uint8_t>();
  for (int f = 0; f < 98; ++f) {
    EXPECT_EQ(mask[f], 0);
    EXPECT_EQ(mask[98 + f], f >= 71 ? 1 : 0);
  }
  for (int f = 71; f < 98; ++f)
    for (int m = 0; m < 128; ++m) ASSERT_EQ(p.fbank.at({1, f, m}), -7.0);
  EXPECT_THROW(fbank_padded(wave, {16000}), Error);
  EXPECT_THROW(fbank_padded(wave, {16000, 16001}), Error);
}

TEST(Fbank, NormalisationUsesBeatsConstantsAndIsConfigurable) {
  Tensor fb = load_npy(kFix + "fbank_0.npy");
  Tensor n = normalize_fbank(fb);
  const auto a = fb.to_vector<float>(), b = n.to_vector<float>();
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_NEAR(b[i], (a[i] - 15.41663) / (2 * 6.55582), kNormTol);
  Tensor custom = normalize_fbank(fb, 1.0, 0.5);
  const auto c = custom.to_vector<float>();
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(c[i], a[i] - 1.0, kNormTol);
  EXPECT_THROW(normalize_fbank(fb, 0.0, 0.0), Error);
}

TEST(Fbank, OtherSettingsMatchTheReference) {
  // 80 mel bins: the reference is generic in the bin count.
  FbankOptions o;
  o.num_mel_bins = 80;
  const auto w = chirp(3000, 100.0, 6000.0, 0.5);
  Tensor fb = fbank(wave_tensor(w), o);
  ASSERT_EQ(fb.shape(), (Shape{fbank_num_frames(3000), 80}));
  const auto want = reference_fbank(w, 80);
  EXPECT_LE(compare(fb.to_vector<float>(), want, kReferenceTol, "80 bins").max_abs, kReferenceTol);
  EXPECT_NE(o.key(), FbankOptions{}.key());
  // Exact double-precision mel weights match the double reference to float32 output rounding.
  FbankOptions exact;
  exact.torchaudio_mel_weights = false;
  const auto loud = chirp(6000, 30.0, 7990.0, 1.0);
  const Cmp c = compare(fbank(wave_tensor(loud), exact).to_vector<float>(), reference_fbank(loud), kExactWeightsTol,
                        "exact mel weights");
  std::printf("exact mel weights: max |ours - float64 reference| = %.3g\n", c.max_abs);
  EXPECT_LE(c.max_abs, kExactWeightsTol);
  EXPECT_NE(exact.key(), FbankOptions{}.key());
  FbankOptions threads;
  threads.num_threads = 1;
  EXPECT_EQ(threads.key(), FbankOptions{}.key());
}

TEST(Fbank, TablesMatchTheDefinition) {
  const auto w = fbank_window();
  ASSERT_EQ(w.size(), 400u);
  EXPECT_NEAR(w[0], 0.0, 1e-12);
  EXPECT_NEAR(w[399], 0.0, 1e-12);
  EXPECT_NEAR(w[100], std::pow(0.5 - 0.5 * std::cos(2 * M_PI * 100 / 399), 0.85), 1e-12);
  const auto mel = fbank_mel_filters();
  ASSERT_EQ(mel.size(), 128u * 257u);
  for (int m = 0; m < 128; ++m) {
    EXPECT_EQ(mel[m * 257 + 256], 0.0);  // Nyquist unused
    double peak = 0;
    for (int k = 0; k < 257; ++k) {
      EXPECT_GE(mel[m * 257 + k], 0.0);
      peak = std::max(peak, mel[m * 257 + k]);
    }
    EXPECT_LE(peak, 1.0);
    // The lowest filters are narrower than an FFT bin (31.25 Hz) and may hold no bin at all, as in
    // Kaldi; from filter 10 up every filter covers at least one bin.
    if (m >= 10) {
      EXPECT_GT(peak, 0.0) << "empty filter " << m;
    }
  }
}
