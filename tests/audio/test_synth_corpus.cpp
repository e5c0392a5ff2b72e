// Tests of the synthetic corpus generator (audio/synth_corpus.h): determinism, manifests, splits by group,
// resume/idempotence, bad input, and spectral checks that each domain really has the structure it claims
// (measured here with plain DFTs and a FIR Hilbert transformer written in this file, independent of the
// generator's code). Not a test of the Debian benchmark builder.
#include <gtest/gtest.h>
#include <sndfile.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "audio/synth_corpus.h"
#include "tensor/error.h"

namespace fs = std::filesystem;
using sonar::audio::synth_render;

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr int kSr = 16000;
// Spectral thresholds. Each is far from where the signal model puts the value but would be crossed by a
// generator that made the wrong structure (checked by the negative controls below).
constexpr double kHarmonicBandHz = 10.0;        // half-width of the band counted around each partial
constexpr double kMinHarmonicEnergy = 0.9;      // share of energy on the partials of a tone or chord
constexpr double kMaxOffHarmonicEnergy = 0.3;   // same share for noise measured against a made-up f0
constexpr double kThirdRatio = 10.0;            // energy at the chord's own third over the other third
constexpr double kMinLowShareRumble = 0.9;      // rumble: share of energy below 1 kHz
constexpr double kMinHighShareHiss = 0.9;       // hiss: share of energy above 2 kHz
constexpr double kMinBandShare = 0.7;           // band noise: share within [0.7, 1.4] x centre
constexpr double kSparseRatio = 100.0;          // crackle: loudest 5 ms frame over the median frame (energy)
constexpr double kDenseRatio = 20.0;            // hiss and rumble stay under this
constexpr double kMinSweepSlopeShare = 0.3;     // chirp slope at least this share of (f_hi - f_lo) / syllable
constexpr double kMaxWhistleStdHz = 40.0;       // whistle: spread of its instantaneous frequency in a syllable
constexpr double kMinVoicedCorr = 0.6;          // vowels: normalised autocorrelation at the pitch lag
constexpr double kMaxWhisperCorr = 0.4;         // whisper: no pitch
constexpr double kFormantRatio = 3.0;           // vowel i over a and u: energy 1.8-3 kHz relative to 0.4-1.3 kHz

std::string tmp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("sonar_test_synth_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  return p.string();
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Minimal CSV reader for the manifests (fields may be quoted with doubled quotes).
std::vector<std::vector<std::string>> read_csv(const fs::path& p) {
  std::vector<std::vector<std::string>> rows;
  std::string text = read_file(p), field;
  std::vector<std::string> row;
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') field += '"', ++i;
      else if (c == '"') quoted = false;
      else field += c;
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      row.push_back(field), field.clear();
    } else if (c == '\n') {
      row.push_back(field), field.clear();
      rows.push_back(row), row.clear();
    } else {
      field += c;
    }
  }
  EXPECT_TRUE(row.empty() && field.empty()) << p << " does not end with a newline";
  return rows;
}

std::vector<double> to_double(const std::vector<float>& x) { return {x.begin(), x.end()}; }

// |X(f)|^2 of x (already windowed) at frequency f, by direct evaluation.
double dft_power(const std::vector<double>& x, double f) {
  std::complex<double> rot = std::polar(1.0, -2 * kPi * f / kSr), w = 1, acc = 0;
  for (double v : x) {
    acc += v * w;
    w *= rot;
  }
  return std::norm(acc);
}

std::vector<double> hann(const std::vector<double>& x) {
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * (0.5 - 0.5 * std::cos(2 * kPi * i / x.size()));
  return y;
}

// Share of the (one-sided) energy of windowed x in bins whose frequency satisfies `in_band`; Parseval gives
// the total, so only the bins in the band are evaluated.
template <class Pred>
double band_share(const std::vector<double>& x, Pred in_band, double f_lo, double f_hi) {
  auto xw = hann(x);
  double total = 0;
  for (double v : xw) total += v * v;
  total *= xw.size() / 2.0;  // sum over bins 1 .. N/2 of |X_k|^2
  double df = static_cast<double>(kSr) / xw.size(), band = 0;
  for (int64_t k = std::max<int64_t>(1, std::ceil(f_lo / df)); k * df <= f_hi && k < static_cast<int64_t>(xw.size() / 2); ++k)
    if (in_band(k * df)) band += dft_power(xw, k * df);
  return band / total;
}

// Share of energy within kHarmonicBandHz of the partials k*f (k >= 1, below 0.45 sr) of any of `fs`.
double harmonic_share(const std::vector<double>& x, const std::vector<double>& fund) {
  auto near = [&](double f) {
    for (double f0 : fund)
      for (int k = 1; k * f0 < 0.45 * kSr + kHarmonicBandHz; ++k)
        if (std::abs(f - k * f0) <= kHarmonicBandHz) return true;
    return false;
  };
  return band_share(x, near, 1.0, 0.45 * kSr + kHarmonicBandHz);
}

// Energies of consecutive frames of `len` samples.
std::vector<double> frame_energy(const std::vector<double>& x, size_t len) {
  std::vector<double> e;
  for (size_t i = 0; i + len <= x.size(); i += len) {
    double s = 0;
    for (size_t j = 0; j < len; ++j) s += x[i + j] * x[i + j];
    e.push_back(s);
  }
  return e;
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

// Instantaneous frequency (Hz) and envelope from a 127-tap Hamming-windowed FIR Hilbert transformer, the
// frequency smoothed over 2 ms. Valid for tones well inside (500 Hz, 7.5 kHz).
void instantaneous_frequency(const std::vector<double>& x, std::vector<double>& freq, std::vector<double>& env) {
  const int half = 63;
  std::vector<double> h(2 * half + 1, 0.0);
  for (int n = -half; n <= half; ++n)
    if (n % 2 != 0) h[n + half] = 2.0 / (kPi * n) * (0.54 + 0.46 * std::cos(kPi * n / half));
  size_t n = x.size();
  std::vector<double> phase(n, 0.0);
  env.assign(n, 0.0);
  for (size_t i = half; i + half < n; ++i) {
    double q = 0;
    for (int k = -half; k <= half; ++k) q += h[k + half] * x[i - k];
    env[i] = std::hypot(x[i], q);
    phase[i] = std::atan2(q, x[i]);
  }
  std::vector<double> raw(n, 0.0);
  for (size_t i = half + 1; i + half < n; ++i) {
    double d = phase[i] - phase[i - 1];
    while (d > kPi) d -= 2 * kPi;
    while (d < -kPi) d += 2 * kPi;
    raw[i] = d * kSr / (2 * kPi);
  }
  const int smooth = 32;
  freq.assign(n, 0.0);
  for (size_t i = smooth; i + smooth < n; ++i) {
    double s = 0;
    for (int k = -smooth / 2; k < smooth / 2; ++k) s += raw[i + k];
    freq[i] = s / smooth;
  }
}

// Runs of samples (start, end) whose envelope stays above `frac` of its maximum for at least `min_len`.
std::vector<std::pair<size_t, size_t>> loud_runs(const std::vector<double>& env, double frac, size_t min_len) {
  double peak = *std::max_element(env.begin(), env.end());
  std::vector<std::pair<size_t, size_t>> runs;
  size_t start = 0;
  bool in = false;
  for (size_t i = 0; i <= env.size(); ++i) {
    bool loud = i < env.size() && env[i] > frac * peak;
    if (loud && !in) start = i, in = true;
    if (!loud && in) {
      if (i - start >= min_len) runs.push_back({start + 40, i - 40});  // trim the edges, where f is unreliable
      in = false;
    }
  }
  return runs;
}

// Least-squares slope (Hz per second) of freq over [a, b).
double slope(const std::vector<double>& f, size_t a, size_t b) {
  double n = b - a, st = 0, sf = 0, stt = 0, stf = 0;
  for (size_t i = a; i < b; ++i) {
    double t = static_cast<double>(i) / kSr;
    st += t, sf += f[i], stt += t * t, stf += t * f[i];
  }
  return (n * stf - st * sf) / (n * stt - st * st);
}

sonar::audio::SynthCorpusOptions small_options(uint64_t seed) {
  sonar::audio::SynthCorpusOptions o;
  o.clips_per_class = 4;
  o.clips_per_group = 2;
  o.prior_clips = 6;
  o.seconds = 0.25;
  o.seed = seed;
  return o;
}

}  // namespace

TEST(SynthCorpus, SameSeedGivesIdenticalFilesOtherSeedDiffers) {
  auto a = tmp_dir("det_a"), b = tmp_dir("det_b"), c = tmp_dir("det_c");
  sonar::audio::build_synth_corpus(a, small_options(7));
  sonar::audio::build_synth_corpus(b, small_options(7));
  sonar::audio::build_synth_corpus(c, small_options(8));
  int64_t files = 0, differing = 0;
  for (const auto& e : fs::recursive_directory_iterator(a)) {
    if (!e.is_regular_file()) continue;
    auto rel = fs::relative(e.path(), a);
    ASSERT_TRUE(fs::exists(fs::path(b) / rel)) << rel;
    EXPECT_EQ(read_file(e.path()), read_file(fs::path(b) / rel)) << rel << " differs between two builds of seed 7";
    if (e.path().extension() == ".wav") {
      ++files;
      differing += read_file(e.path()) != read_file(fs::path(c) / rel);
    }
  }
  EXPECT_EQ(files, 16 * 4 + 6);
  EXPECT_EQ(differing, files) << "seed 8 should change every clip";
  for (auto& d : {a, b, c}) fs::remove_all(d);
}

TEST(SynthCorpus, ManifestsAreWellFormedAndSplitByGroup) {
  auto dir = tmp_dir("manifest");
  auto o = small_options(3);
  o.clips_per_class = 7;
  o.prior_clips = 9;
  auto res = sonar::audio::build_synth_corpus(dir, o);
  ASSERT_EQ(res.manifests.size(), 7u);
  EXPECT_EQ(res.clips_written, 16 * 7 + 9);
  const std::set<std::string> splits = {"train", "val", "test"};
  std::set<std::string> all_paths;
  for (const auto& d : sonar::audio::synth_domains()) {
    auto rows = read_csv(fs::path(dir) / (d.name + ".csv"));
    ASSERT_FALSE(rows.empty());
    EXPECT_EQ(rows[0], (std::vector<std::string>{"path", "label", "split", "group", "source", "license"}));
    std::map<std::string, int64_t> per_class;
    std::map<std::string, std::set<std::string>> class_splits;
    std::map<std::string, std::string> group_split, group_label;
    for (size_t r = 1; r < rows.size(); ++r) {
      const auto& row = rows[r];
      ASSERT_EQ(row.size(), 6u) << d.name << " row " << r;
      EXPECT_FALSE(fs::path(row[0]).is_absolute()) << row[0];
      EXPECT_TRUE(fs::is_regular_file(fs::path(dir) / row[0])) << row[0];
      EXPECT_TRUE(all_paths.insert(row[0]).second) << "path listed twice: " << row[0];
      EXPECT_TRUE(std::count(d.classes.begin(), d.classes.end(), row[1])) << "unknown label " << row[1];
      EXPECT_TRUE(splits.count(row[2])) << "bad split " << row[2];
      EXPECT_EQ(row[4], "synthetic");
      EXPECT_EQ(row[5], "CC0-1.0");
      ++per_class[row[1]];
      class_splits[row[1]].insert(row[2]);
      // The leakage unit: a group lies in exactly one split and one class.
      auto [it, fresh] = group_split.emplace(row[3], row[2]);
      EXPECT_EQ(it->second, row[2]) << "group " << row[3] << " is in two splits";
      auto [jt, fresh2] = group_label.emplace(row[3], row[1]);
      EXPECT_EQ(jt->second, row[1]) << "group " << row[3] << " has two labels";
    }
    EXPECT_EQ(per_class.size(), d.classes.size());
    for (const auto& c : d.classes) {
      EXPECT_EQ(per_class[c], 7) << d.name << "/" << c;
      EXPECT_EQ(class_splits[c], splits) << d.name << "/" << c << " lacks a split";
      int64_t total = 0;
      for (auto& [s, n] : res.counts.at(d.name + ".csv").at(c)) total += n;
      EXPECT_EQ(total, 7) << "reported counts disagree with the manifest for " << c;
    }
  }
  auto prior = read_csv(fs::path(dir) / "prior.csv");
  ASSERT_EQ(prior.size(), 10u);
  for (size_t r = 1; r < prior.size(); ++r) {
    std::stringstream ss(prior[r][1]);
    int n = 0;
    for (std::string l; std::getline(ss, l, ';'); ++n) {
      bool known = false;
      for (const auto& d : sonar::audio::synth_domains()) known |= d.name == l;
      EXPECT_TRUE(known) << "prior label " << l;
    }
    EXPECT_TRUE(n == 1 || n == 2) << prior[r][1];
    EXPECT_TRUE(all_paths.insert(prior[r][0]).second);
  }
  // The fine prior task: the same clips and splits, each source's "domain:class", in the order of prior.csv.
  auto fine = read_csv(fs::path(dir) / "prior_fine.csv");
  ASSERT_EQ(fine.size(), prior.size());
  for (size_t r = 1; r < fine.size(); ++r) {
    EXPECT_EQ(fine[r][0], prior[r][0]);
    EXPECT_EQ(fine[r][2], prior[r][2]);
    std::stringstream coarse(prior[r][1]), labels(fine[r][1]);
    for (std::string c, l; std::getline(coarse, c, ';');) {
      ASSERT_TRUE(static_cast<bool>(std::getline(labels, l, ';'))) << fine[r][1];
      const size_t colon = l.find(':');
      ASSERT_NE(colon, std::string::npos) << l;
      EXPECT_EQ(l.substr(0, colon), c);
      bool known = false;
      for (const auto& d : sonar::audio::synth_domains())
        for (const auto& k : d.classes) known |= d.name == c && k == l.substr(colon + 1);
      EXPECT_TRUE(known) << l;
    }
  }
  auto tasks = read_csv(fs::path(dir) / "tasks.csv");
  ASSERT_EQ(tasks.size(), 7u);
  EXPECT_EQ(tasks[5], (std::vector<std::string>{"prior", "prior.csv", "multilabel", "train;val;test"}));
  EXPECT_EQ(tasks[6], (std::vector<std::string>{"prior_fine", "prior_fine.csv", "multilabel", "train;val;test"}));
  // Every file is a 16 kHz mono WAV of the requested length.
  SF_INFO info{};
  SNDFILE* f = sf_open((fs::path(dir) / *all_paths.begin()).c_str(), SFM_READ, &info);
  ASSERT_NE(f, nullptr);
  sf_close(f);
  EXPECT_EQ(info.samplerate, kSr);
  EXPECT_EQ(info.channels, 1);
  EXPECT_EQ(info.frames, static_cast<sf_count_t>(0.25 * kSr));
  EXPECT_EQ(info.format, SF_FORMAT_WAV | SF_FORMAT_PCM_16);
  // No temporary file is left behind.
  for (const auto& e : fs::recursive_directory_iterator(dir))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
  fs::remove_all(dir);
}

TEST(SynthCorpus, SecondRunIsUpToDateAndAMissingFileRebuilds) {
  auto dir = tmp_dir("resume");
  auto o = small_options(5);
  auto first = sonar::audio::build_synth_corpus(dir, o);
  EXPECT_FALSE(first.up_to_date);
  auto second = sonar::audio::build_synth_corpus(dir, o);
  EXPECT_TRUE(second.up_to_date);
  EXPECT_EQ(second.clips_written, 0);
  EXPECT_EQ(second.counts, first.counts);
  fs::path victim = fs::path(dir) / "birds/trill/birds_trill_g000_c00.wav";
  std::string bytes = read_file(victim);
  fs::remove(victim);
  auto third = sonar::audio::build_synth_corpus(dir, o);
  EXPECT_FALSE(third.up_to_date);
  EXPECT_EQ(read_file(victim), bytes);
  o.seconds = 0.3;  // a changed option rebuilds
  EXPECT_FALSE(sonar::audio::build_synth_corpus(dir, o).up_to_date);
  fs::remove_all(dir);
}

TEST(SynthCorpus, BadInputThrowsAndWritesNoManifest) {
  auto dir = tmp_dir("bad");
  auto o = small_options(1);
  o.clips_per_class = 2;
  EXPECT_THROW(sonar::audio::build_synth_corpus(dir, o), sonar::Error);
  o = small_options(1);
  o.seconds = 0;
  EXPECT_THROW(sonar::audio::build_synth_corpus(dir, o), sonar::Error);
  EXPECT_FALSE(fs::exists(fs::path(dir) / "music.csv"));
  // Output "folder" that is a file.
  fs::create_directories(dir);
  std::ofstream(fs::path(dir) / "file") << "x";
  EXPECT_THROW(sonar::audio::build_synth_corpus((fs::path(dir) / "file").string(), small_options(1)), sonar::Error);
  EXPECT_THROW(synth_render("music", "polka", 1, 2, 0.1), sonar::Error);
  EXPECT_THROW(synth_render("opera", "tone", 1, 2, 0.1), sonar::Error);
  EXPECT_THROW(synth_render("music", "tone", 1, 2, 0.1, 100), sonar::Error);
  EXPECT_THROW(sonar::audio::synth_write_wav((fs::path(dir) / "no/such/dir/x.wav").string(), {0.f}, kSr, false),
               sonar::Error);
  fs::remove_all(dir);
}

TEST(SynthCorpus, CsvFieldsAreQuotedWhenNeeded) {
  EXPECT_EQ(sonar::audio::synth_csv_field("plain/path.wav"), "plain/path.wav");
  EXPECT_EQ(sonar::audio::synth_csv_field("a,b"), "\"a,b\"");
  EXPECT_EQ(sonar::audio::synth_csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
}

TEST(SynthSpectra, TonesAndChordsAreHarmonic) {
  for (uint64_t s = 1; s <= 3; ++s) {
    auto tone = synth_render("music", "tone", 100 + s, 200 + s, 0.5);
    EXPECT_GT(harmonic_share(to_double(tone.samples), {tone.params.at("f0")}), kMinHarmonicEnergy) << "seed " << s;
    for (const char* cls : {"major_chord", "minor_chord"}) {
      auto c = synth_render("music", cls, 100 + s, 300 + s, 1.0);  // 1 Hz bins: thirds of a low root are 7 Hz apart
      auto x = to_double(c.samples);
      double root = c.params.at("f1");
      std::vector<double> head(x.begin(), x.begin() + kSr / 2);  // 0.5 s is enough for the partials' share
      EXPECT_GT(harmonic_share(head, {root, c.params.at("f2"), c.params.at("f3")}), kMinHarmonicEnergy) << cls;
      // The third decides the chord: measure energy at both candidate thirds above the root.
      auto xw = hann(x);
      double major3 = dft_power(xw, root * std::pow(2.0, 4 / 12.0)), minor3 = dft_power(xw, root * std::pow(2.0, 3 / 12.0));
      if (std::string(cls) == "major_chord") {
        EXPECT_GT(major3, kThirdRatio * minor3) << "seed " << s;
      } else {
        EXPECT_GT(minor3, kThirdRatio * major3) << "seed " << s;
      }
    }
  }
  // Negative control: noise has no partials at a made-up f0.
  auto hiss = synth_render("noise", "hiss", 1, 2, 0.5);
  EXPECT_LT(harmonic_share(to_double(hiss.samples), {220.0}), kMaxOffHarmonicEnergy);
}

TEST(SynthSpectra, DrumsRepeatAtTheirTempo) {
  auto d = synth_render("music", "drums", 11, 12, 3.0);
  auto e = frame_energy(to_double(d.samples), kSr / 100);  // 10 ms frames
  double mean = 0;
  for (double v : e) mean += v / e.size();
  for (double& v : e) v -= mean;
  auto corr = [&](double lag_s) {
    size_t lag = static_cast<size_t>(std::lround(lag_s * 100));
    double s = 0, a = 0, b = 0;
    for (size_t i = 0; i + lag < e.size(); ++i) s += e[i] * e[i + lag], a += e[i] * e[i], b += e[i + lag] * e[i + lag];
    return s / std::sqrt(a * b);
  };
  double bar = 4 * 30.0 / d.params.at("bpm");  // four eighths: kick to kick
  EXPECT_GT(corr(bar), 0.5);
  EXPECT_GT(corr(bar), corr(0.625 * bar) + 0.3);
}

TEST(SynthSpectra, ChirpsMoveWhistlesStayTrillsOscillate) {
  for (uint64_t s = 1; s <= 2; ++s) {
    for (const char* cls : {"upsweep", "downsweep", "whistle", "trill"}) {
      auto c = synth_render("birds", cls, 40 + s, 50 + s, 1.0);
      std::vector<double> f, env;
      instantaneous_frequency(to_double(c.samples), f, env);
      auto runs = loud_runs(env, 0.3, kSr / 50);  // >= 20 ms
      ASSERT_FALSE(runs.empty()) << cls;
      double expected = (c.params.at("f_hi") - c.params.at("f_lo")) / c.params.at("syllable");
      for (auto [a, b] : runs) {
        if (b <= a + 32) continue;
        std::string what = std::string(cls) + " seed " + std::to_string(s) + " run at " + std::to_string(a);
        if (std::string(cls) == "upsweep") {
          EXPECT_GT(slope(f, a, b), kMinSweepSlopeShare * expected) << what;
        }
        if (std::string(cls) == "downsweep") {
          EXPECT_LT(slope(f, a, b), -kMinSweepSlopeShare * expected) << what;
        }
        if (std::string(cls) == "whistle") {
          double m = 0, v = 0;
          for (size_t i = a; i < b; ++i) m += f[i] / (b - a);
          for (size_t i = a; i < b; ++i) v += (f[i] - m) * (f[i] - m) / (b - a);
          EXPECT_LT(std::sqrt(v), kMaxWhistleStdHz) << what;
          EXPECT_NEAR(m, c.params.at("f_whistle"), 2 * kMaxWhistleStdHz) << what;
        }
        if (std::string(cls) == "trill" && b - a > static_cast<size_t>(0.2 * kSr)) {
          double fc = c.params.at("f_centre"), dev = c.params.at("fm_dev");
          double lo = 1e9, hi = 0;
          int crossings = 0;
          for (size_t i = a; i < b; ++i) {
            lo = std::min(lo, f[i]), hi = std::max(hi, f[i]);
            if (i > a && (f[i - 1] - fc) * (f[i] - fc) < 0) ++crossings;
          }
          EXPECT_GT(hi - lo, dev) << what;      // swings of +-dev around the centre
          EXPECT_LT(hi - lo, 3 * dev) << what;
          double expected_crossings = 2 * c.params.at("fm_rate") * (b - a) / kSr;
          EXPECT_GT(crossings, 0.5 * expected_crossings) << what;
        }
      }
    }
  }
}

TEST(SynthSpectra, NoiseTexturesOccupyTheirBands) {
  for (uint64_t s = 1; s <= 2; ++s) {
    auto r = synth_render("noise", "rumble", 60 + s, 70 + s, 0.5);
    auto x = to_double(r.samples);
    EXPECT_GT(band_share(x, [](double) { return true; }, 1, 1000), kMinLowShareRumble);
    auto h = synth_render("noise", "hiss", 60 + s, 70 + s, 0.5);
    x = to_double(h.samples);
    EXPECT_LT(band_share(x, [](double) { return true; }, 1, 2000), 1 - kMinHighShareHiss);
    auto b = synth_render("noise", "band_noise", 60 + s, 70 + s, 0.5);
    double fc = b.params.at("centre");
    EXPECT_GT(band_share(to_double(b.samples), [](double) { return true; }, 0.7 * fc, 1.4 * fc), kMinBandShare);
    // Crackle is sparse in time; hiss and rumble are not.
    auto c = synth_render("noise", "crackle", 60 + s, 70 + s, 2.0);
    auto ec = frame_energy(to_double(c.samples), kSr / 200);
    EXPECT_GT(*std::max_element(ec.begin(), ec.end()) / median(ec), kSparseRatio);
    for (auto* dense : {&r, &h}) {
      auto ed = frame_energy(to_double(dense->samples), kSr / 200);
      EXPECT_LT(*std::max_element(ed.begin(), ed.end()) / median(ed), kDenseRatio);
    }
  }
}

TEST(SynthSpectra, SpeechIsSyllabicVoicedAndFormantShaped) {
  std::map<std::string, double> ratio;
  for (const char* cls : {"vowel_a", "vowel_i", "vowel_u", "whisper"}) {
    for (uint64_t s = 1; s <= 2; ++s) {
      auto c = synth_render("speech", cls, 80 + s, 90 + s, 2.0);
      auto x = to_double(c.samples);
      // Syllabic modulation: the envelope's spectrum peaks at 2-8 Hz.
      auto e = frame_energy(x, kSr / 100);
      double mean = 0;
      for (double& v : e) v = std::sqrt(v), mean += v / e.size();
      for (double& v : e) v -= mean;
      double best_f = 0, best_p = 0;
      for (double fm = 0.5; fm <= 20; fm += 0.25) {
        std::complex<double> acc = 0;
        for (size_t i = 0; i < e.size(); ++i) acc += e[i] * std::polar(1.0, -2 * kPi * fm * i / 100.0);
        if (std::norm(acc) > best_p) best_p = std::norm(acc), best_f = fm;
      }
      EXPECT_GE(best_f, 2.0) << cls << " modulation peak";
      EXPECT_LE(best_f, 8.0) << cls << " modulation peak";
      // Periodicity in the loudest 40 ms: over pitch lags L for 80-300 Hz, the best min(r(L), r(2L)) of the
      // normalised autocorrelation r. Requiring the second period too tells a pitch from the ringing of a
      // narrow formant, whose correlation decays with the lag.
      size_t len = kSr / 25, at = 0;
      double loud = -1;
      for (size_t i = 0; i + len + 2 * kSr / 80 < x.size(); i += len / 4) {
        double s2 = 0;
        for (size_t j = 0; j < len; ++j) s2 += x[i + j] * x[i + j];
        if (s2 > loud) loud = s2, at = i;
      }
      auto r = [&](size_t lag) {
        double num = 0, a = 0, b = 0;
        for (size_t j = 0; j < len; ++j)
          num += x[at + j] * x[at + j + lag], a += x[at + j] * x[at + j], b += x[at + j + lag] * x[at + j + lag];
        return num / std::sqrt(a * b);
      };
      double best_r = -1;
      for (size_t lag = kSr / 300; lag <= kSr / 80; ++lag) best_r = std::max(best_r, std::min(r(lag), r(2 * lag)));
      if (std::string(cls) == "whisper") {
        EXPECT_LT(best_r, kMaxWhisperCorr) << "whisper is voiced?";
      } else {
        EXPECT_GT(best_r, kMinVoicedCorr) << cls << " is not voiced";
      }
      size_t from = std::min(x.size() - kSr / 2, at > kSr / 4 ? at - kSr / 4 : 0);
      std::vector<double> half(x.begin() + from, x.begin() + from + kSr / 2);  // 0.5 s around the loudest part
      double hi = band_share(half, [](double) { return true; }, 1800, 3000);
      double lo = band_share(half, [](double) { return true; }, 400, 1300);
      ratio[cls] += hi / lo / 2;
    }
  }
  EXPECT_GT(ratio["vowel_i"], kFormantRatio * ratio["vowel_a"]);
  EXPECT_GT(ratio["vowel_i"], kFormantRatio * ratio["vowel_u"]);
}
