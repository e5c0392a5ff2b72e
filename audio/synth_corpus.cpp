// Synthetic corpus generator (see synth_corpus.h): the signal models of the four domains, the deterministic
// plan of groups and splits, and the atomic writers for WAV files and CSV manifests. It is not a general
// synthesiser and not a data-set reader; the Debian benchmark is built by scripts/build-benchmark.sh.
#include "audio/synth_corpus.h"

#include <sndfile.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "tensor/error.h"

namespace sonar::audio {
namespace {

namespace fs = std::filesystem;

constexpr double kPi = 3.14159265358979323846;
constexpr double kNoiseFloor = 1e-3;        // std of the white noise under every clip (-60 dBFS)
constexpr double kMinLevel = 0.3;           // clip peak levels are drawn from [kMinLevel, kMaxLevel]
constexpr double kMaxLevel = 0.9;
constexpr double kFadeSeconds = 0.01;       // raised-cosine fade in and out of every clip
constexpr double kMaxPartialFraction = 0.45;  // no partial above 0.45 x sample rate (stays below Nyquist)
constexpr double kTestFraction = 0.15;      // share of groups per class in test, and in val
constexpr double kValFraction = 0.15;
constexpr int kStampVersion = 2;            // bump when the signal models or manifests change, so old corpora rebuild
const char* const kLicense = "CC0-1.0";
const char* const kSource = "synthetic";

// ---- deterministic randomness ------------------------------------------------------------------------

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A new seed from a seed and a value, so that (seed, a, b, ...) chains give independent streams.
uint64_t mix_seed(uint64_t seed, uint64_t value) {
  uint64_t s = seed;
  uint64_t a = splitmix64(s);
  s = a ^ (value * 0xD6E8FEB86659FD93ull + 0x632BE59BD9B4E019ull);
  return splitmix64(s);
}

uint64_t hash_name(const std::string& s) {  // FNV-1a, 64 bit
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t bits() { return splitmix64(state_); }
  double uniform() { return static_cast<double>(bits() >> 11) * 0x1.0p-53; }  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  int64_t integer(int64_t lo, int64_t hi) {  // [lo, hi)
    return lo + static_cast<int64_t>(bits() % static_cast<uint64_t>(hi - lo));
  }
  double normal() {  // Box-Muller, one value per call
    double u1 = 1.0 - uniform();  // (0, 1]
    double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
  }

 private:
  uint64_t state_;
};

// ---- small DSP building blocks -----------------------------------------------------------------------

// Second-order IIR section (transposed direct form II) with the usual audio-EQ designs.
struct Biquad {
  double b0 = 1, b1 = 0, b2 = 0, a1 = 0, a2 = 0, z1 = 0, z2 = 0;
  double step(double x) {
    double y = b0 * x + z1;
    z1 = b1 * x - a1 * y + z2;
    z2 = b2 * x - a2 * y;
    return y;
  }
  static Biquad make(double b0, double b1, double b2, double a0, double a1, double a2) {
    Biquad q;
    q.b0 = b0 / a0; q.b1 = b1 / a0; q.b2 = b2 / a0; q.a1 = a1 / a0; q.a2 = a2 / a0;
    return q;
  }
  static Biquad lowpass(double f, double q, double sr) {
    double w = 2 * kPi * f / sr, c = std::cos(w), al = std::sin(w) / (2 * q);
    return make((1 - c) / 2, 1 - c, (1 - c) / 2, 1 + al, -2 * c, 1 - al);
  }
  static Biquad highpass(double f, double q, double sr) {
    double w = 2 * kPi * f / sr, c = std::cos(w), al = std::sin(w) / (2 * q);
    return make((1 + c) / 2, -(1 + c), (1 + c) / 2, 1 + al, -2 * c, 1 - al);
  }
  static Biquad bandpass(double f, double q, double sr) {  // 0 dB at the centre
    double w = 2 * kPi * f / sr, c = std::cos(w), al = std::sin(w) / (2 * q);
    return make(al, 0, -al, 1 + al, -2 * c, 1 - al);
  }
  // All-pole formant resonator with unit gain at 0 Hz (the classic cascade formant synthesiser's section).
  static Biquad resonator(double f, double bandwidth, double sr) {
    double r = std::exp(-kPi * bandwidth / sr), c = std::cos(2 * kPi * f / sr);
    Biquad q;
    q.b0 = 1 - 2 * r * c + r * r;
    q.a1 = -2 * r * c;
    q.a2 = r * r;
    return q;
  }
};

void filter(std::vector<double>& y, Biquad q) {
  for (double& v : y) v = q.step(v);
}

constexpr double kButterworthQ = 0.70710678118654752;

// Sum of harmonics k*f0 (k >= 1, below the partial limit) with amplitudes amps[k-1], added to y over
// [start, start + length) with an attack/exponential-decay envelope.
void add_harmonic_note(std::vector<double>& y, double sr, double start, double length, double f0,
                       const std::vector<double>& amps, const std::vector<double>& phases, double decay) {
  int64_t i0 = std::max<int64_t>(0, static_cast<int64_t>(start * sr));
  int64_t i1 = std::min<int64_t>(static_cast<int64_t>(y.size()), static_cast<int64_t>((start + length) * sr));
  const double attack = 0.02;
  for (size_t k = 1; k <= amps.size(); ++k) {
    if (k * f0 >= kMaxPartialFraction * sr) break;
    double w = 2 * kPi * k * f0 / sr;
    for (int64_t i = i0; i < i1; ++i) {
      double t = (i - i0) / sr;
      double env = std::min(1.0, t / attack) * std::exp(-t / decay);
      y[i] += amps[k - 1] * env * std::sin(w * (i - i0) + phases[k - 1]);
    }
  }
}

// Adds a tone whose instantaneous frequency is freq(t) (t in seconds from `start`) under a Hann window, with a
// weak second harmonic when it stays below the partial limit.
template <class F>
void add_swept_tone(std::vector<double>& y, double sr, double start, double length, F freq, double gain) {
  int64_t i0 = static_cast<int64_t>(start * sr);
  int64_t n = static_cast<int64_t>(length * sr);
  double phase = 0;
  for (int64_t j = 0; j < n && i0 + j < static_cast<int64_t>(y.size()); ++j) {
    double t = j / sr;
    double f = freq(t);
    phase += 2 * kPi * f / sr;
    double w = std::sin(kPi * j / n);
    double s = std::sin(phase);
    if (2 * f < kMaxPartialFraction * sr) s += 0.15 * std::sin(2 * phase);
    if (i0 + j >= 0) y[i0 + j] += gain * w * w * s;
  }
}

// ---- the four domains --------------------------------------------------------------------------------

using Params = std::map<std::string, double>;

void render_music(const std::string& cls, Rng& src, Rng& clip, std::vector<double>& y, double sr, Params& p) {
  const double dur = y.size() / sr;
  // Source ("instrument"): register, timbre (spectral roll-off), number of partials, decay, tempo.
  double f0_base = 110.0 * std::pow(2.0, src.uniform(0, 24) / 12.0);  // 110 .. 440 Hz
  double rolloff = src.uniform(0.7, 1.8);
  int n_harm = static_cast<int>(src.integer(5, 11));
  double decay = src.uniform(1.0, 4.0);
  double bpm = src.uniform(80, 160);
  double kick_f = src.uniform(100, 160);
  std::vector<double> amps(n_harm);
  for (int k = 1; k <= n_harm; ++k) amps[k - 1] = std::pow(k, -rolloff) * clip.uniform(0.8, 1.2);
  auto phases = [&] {
    std::vector<double> ph(n_harm);
    for (double& v : ph) v = clip.uniform(0, 2 * kPi);
    return ph;
  };
  if (cls == "tone" || cls == "major_chord" || cls == "minor_chord") {
    double root = f0_base * std::pow(2.0, clip.uniform(-2, 2) / 12.0);
    std::vector<int> steps = {0};
    if (cls == "major_chord") steps = {0, 4, 7};
    if (cls == "minor_chord") steps = {0, 3, 7};
    for (size_t n = 0; n < steps.size(); ++n) {
      double f = root * std::pow(2.0, steps[n] / 12.0);
      p["f" + std::to_string(n + 1)] = f;
      add_harmonic_note(y, sr, 0, dur, f, amps, phases(), decay);
    }
    p["f0"] = root;
    p["partials"] = n_harm;
    return;
  }
  if (cls == "drums") {
    double beat = 60.0 / (bpm * clip.uniform(0.95, 1.05));
    double eighth = beat / 2;
    p["bpm"] = 60.0 / beat;
    double hat_f = std::min(7000.0, 0.4 * sr);
    int64_t step = 0;
    for (double t0 = clip.uniform(0, eighth); t0 < dur; t0 += eighth, ++step) {
      auto hit = [&](double length, auto sample) {
        int64_t i0 = static_cast<int64_t>(t0 * sr), n = static_cast<int64_t>(length * sr);
        for (int64_t j = 0; j < n && i0 + j < static_cast<int64_t>(y.size()); ++j) y[i0 + j] += sample(j / sr);
      };
      if (step % 4 == 0) {  // kick: a sine falling from kick_f to 45 Hz
        double phase = 0;
        hit(0.35, [&](double t) {
          double f = 45 + (kick_f - 45) * std::exp(-t / 0.03);
          phase += 2 * kPi * f / sr;
          return std::exp(-t / 0.15) * std::sin(phase);
        });
      } else if (step % 4 == 2) {  // snare: band-passed noise plus a short 190 Hz body
        Biquad bp = Biquad::bandpass(1800, 0.8, sr);
        hit(0.25, [&](double t) {
          return std::exp(-t / 0.07) * (1.5 * bp.step(clip.normal()) + 0.4 * std::sin(2 * kPi * 190 * t));
        });
      }
      Biquad hp = Biquad::highpass(hat_f, kButterworthQ, sr);  // hi-hat on every eighth
      double g = clip.uniform(0.15, 0.3);
      hit(0.08, [&](double t) { return g * std::exp(-t / 0.02) * hp.step(clip.normal()); });
    }
    return;
  }
  SONAR_FAIL("synth_render: unknown class '", cls, "' in domain music");
}

void render_birds(const std::string& cls, Rng& src, Rng& clip, std::vector<double>& y, double sr, Params& p) {
  const double dur = y.size() / sr;
  const double f_max = kMaxPartialFraction * sr;
  // Source ("species"): register, sweep width, syllable length and spacing, trill rate and depth.
  double f_base = src.uniform(1500, 4000);
  double bw = src.uniform(800, 2500);
  double syl = src.uniform(0.06, 0.2);
  double gap = src.uniform(0.04, 0.15);
  double fm_rate = src.uniform(12, 30);
  double fm_dev = src.uniform(200, 600);
  double f_lo = f_base * clip.uniform(0.95, 1.05);
  double f_hi = std::min(f_lo + bw, f_max - 100);
  p["f_lo"] = f_lo;
  p["f_hi"] = f_hi;
  double t0 = clip.uniform(0, gap);
  while (t0 < dur) {
    double len = syl * clip.uniform(0.85, 1.15);
    double g = clip.uniform(0.7, 1.0);
    if (cls == "upsweep") {
      add_swept_tone(y, sr, t0, len, [&](double t) { return f_lo + (f_hi - f_lo) * t / len; }, g);
    } else if (cls == "downsweep") {
      add_swept_tone(y, sr, t0, len, [&](double t) { return f_hi - (f_hi - f_lo) * t / len; }, g);
    } else if (cls == "trill") {
      len = clip.uniform(0.3, 0.6);
      double fc = std::min((f_lo + f_hi) / 2, f_max - fm_dev - 100), ph = clip.uniform(0, 2 * kPi);
      p["fm_rate"] = fm_rate;
      p["fm_dev"] = fm_dev;
      p["f_centre"] = fc;
      add_swept_tone(y, sr, t0, len, [&](double t) { return fc + fm_dev * std::sin(2 * kPi * fm_rate * t + ph); }, g);
    } else if (cls == "whistle") {
      len = syl * clip.uniform(1.5, 2.5);
      double f = (f_lo + f_hi) / 2 * clip.uniform(0.99, 1.01);
      p["f_whistle"] = f;
      add_swept_tone(y, sr, t0, len, [&](double) { return f; }, g);
    } else {
      SONAR_FAIL("synth_render: unknown class '", cls, "' in domain birds");
    }
    t0 += len + gap * clip.uniform(0.7, 1.3);
  }
  p["syllable"] = syl;
}

void render_noise(const std::string& cls, Rng& src, Rng& clip, std::vector<double>& y, double sr, Params& p) {
  const double dur = y.size() / sr;
  for (double& v : y) v = clip.normal();
  if (cls == "rumble") {  // low-passed noise with slow gusts
    double fc = src.uniform(150, 500) * clip.uniform(0.9, 1.1);
    double rate = src.uniform(0.2, 1.0), ph = clip.uniform(0, 2 * kPi);
    filter(y, Biquad::lowpass(fc, kButterworthQ, sr));
    filter(y, Biquad::lowpass(fc, kButterworthQ, sr));
    for (size_t i = 0; i < y.size(); ++i) y[i] *= 1 + 0.5 * std::sin(2 * kPi * rate * i / sr + ph);
    p["cutoff"] = fc;
  } else if (cls == "hiss") {  // high-passed noise
    double fc = src.uniform(3000, std::min(5000.0, 0.35 * sr)) * clip.uniform(0.9, 1.1);
    filter(y, Biquad::highpass(fc, kButterworthQ, sr));
    filter(y, Biquad::highpass(fc, kButterworthQ, sr));
    p["cutoff"] = fc;
  } else if (cls == "band_noise") {  // narrow band of noise, like running water or a whistling wind
    double fc = src.uniform(700, 2000) * clip.uniform(0.9, 1.1), q = src.uniform(3, 8);
    filter(y, Biquad::bandpass(fc, q, sr));
    filter(y, Biquad::bandpass(fc, q, sr));
    p["centre"] = fc;
    p["q"] = q;
  } else if (cls == "crackle") {  // sparse short bursts (fire, rain on a roof) over a faint bed
    double rate = src.uniform(4, 20), fc = src.uniform(1000, 4000);
    for (double& v : y) v *= 0.01;
    std::vector<double> bursts(y.size(), 0.0);
    for (double t = -std::log(1 - clip.uniform()) / rate; t < dur; t += -std::log(1 - clip.uniform()) / rate) {
      double len = clip.uniform(0.002, 0.006), amp = std::exp(0.5 * clip.normal());
      int64_t i0 = static_cast<int64_t>(t * sr), n = static_cast<int64_t>(len * 3 * sr);
      for (int64_t j = 0; j < n && i0 + j < static_cast<int64_t>(y.size()); ++j)
        bursts[i0 + j] += amp * std::exp(-j / (len * sr)) * clip.normal();
    }
    filter(bursts, Biquad::bandpass(fc, 1.0, sr));
    for (size_t i = 0; i < y.size(); ++i) y[i] += bursts[i];
    p["rate"] = rate;
    p["centre"] = fc;
  } else {
    SONAR_FAIL("synth_render: unknown class '", cls, "' in domain noise");
  }
}

void render_speech(const std::string& cls, Rng& src, Rng& clip, std::vector<double>& y, double sr, Params& p) {
  const double dur = y.size() / sr;
  // Source ("speaker"): pitch, vocal-tract length (formant scale), speaking rate.
  double f0 = src.uniform(90, 240) * clip.uniform(0.95, 1.05);
  double scale = src.uniform(0.88, 1.15);
  double rate = src.uniform(3, 6) * clip.uniform(0.9, 1.1);
  // Formant frequencies of three vowels (adult averages; a as in "father", i as in "beet", u as in "boot").
  static const double kFormants[3][3] = {{730, 1090, 2440}, {270, 2290, 3010}, {300, 870, 2240}};
  static const double kBandwidths[3] = {90, 110, 170};
  int vowel = cls == "vowel_a" ? 0 : cls == "vowel_i" ? 1 : cls == "vowel_u" ? 2 : -1;
  bool whisper = cls == "whisper";
  SONAR_CHECK(vowel >= 0 || whisper, "synth_render: unknown class '", cls, "' in domain speech");
  if (whisper) vowel = static_cast<int>(clip.integer(0, 3));
  // Excitation: a harmonic source falling 6 dB per octave with a slow intonation contour, or white noise.
  std::vector<double> e(y.size(), 0.0);
  if (whisper) {
    for (double& v : e) v = 0.3 * clip.normal();
  } else {
    double vib = clip.uniform(0, 2 * kPi), phase = 0;
    std::vector<double> ph(y.size());
    for (size_t i = 0; i < y.size(); ++i) {
      double t = i / sr;
      phase += 2 * kPi * f0 * (1 + 0.08 * std::sin(2 * kPi * 0.7 * t + vib)) * (1 - 0.1 * t / dur) / sr;
      ph[i] = phase;
    }
    int n_harm = static_cast<int>(std::min(4000.0, kMaxPartialFraction * sr) / (f0 * 1.1));
    for (int k = 1; k <= n_harm; ++k)
      for (size_t i = 0; i < y.size(); ++i) e[i] += std::sin(k * ph[i]) / k;
  }
  // Syllabic amplitude modulation at the speaking rate, with an occasional pause.
  std::vector<double> env(y.size(), 0.0);
  for (double t0 = clip.uniform(0, 0.5 / rate); t0 < dur; t0 += clip.uniform(0.8, 1.2) / rate) {
    if (clip.uniform() < 0.15) continue;
    double len = 0.75 / rate;
    int64_t i0 = static_cast<int64_t>(t0 * sr), n = static_cast<int64_t>(len * sr);
    for (int64_t j = 0; j < n && i0 + j < static_cast<int64_t>(y.size()); ++j) {
      double w = std::sin(kPi * j / n);
      env[i0 + j] = std::max(env[i0 + j], w * w);
    }
  }
  for (size_t i = 0; i < y.size(); ++i) y[i] = e[i] * env[i];
  for (int f = 0; f < 3; ++f) {
    double ff = std::min(kFormants[vowel][f] * scale, kMaxPartialFraction * sr);
    filter(y, Biquad::resonator(ff, kBandwidths[f], sr));
    p["F" + std::to_string(f + 1)] = ff;
  }
  // Radiation at the lips: a first difference (+6 dB per octave), which also removes the DC that the
  // unit-DC-gain resonators would otherwise pass.
  for (size_t i = y.size() - 1; i > 0; --i) y[i] -= y[i - 1];
  p["f0"] = whisper ? 0.0 : f0;
  p["rate"] = rate;
  p["vowel"] = vowel;
}

// ---- plan, files, manifests --------------------------------------------------------------------------

void write_text_atomic(const fs::path& path, const std::string& text) {
  fs::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    SONAR_CHECK(f.good(), "synth corpus: cannot write ", tmp.string());
    f << text;
    f.flush();
    SONAR_CHECK(f.good(), "synth corpus: write failed for ", tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    SONAR_FAIL("synth corpus: cannot rename ", tmp.string(), " to ", path.string());
  }
}

std::string read_text(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return {};
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct Component {  // one rendered source of a clip
  int domain, cls;
  uint64_t source_seed, clip_seed;
};

struct PlannedClip {
  std::string manifest;  // "music.csv"
  std::string path, label, split, group;
  std::string fine_label;  // prior pool: the classes of its sources, "domain:class" (';'-joined)
  std::vector<Component> parts;
  std::vector<double> part_gains;
  double level = 1;  // peak level of a mixture (single sources keep their own)
};

std::vector<std::string> split_labels(const std::string& label) {
  std::vector<std::string> out;
  std::stringstream ss(label);
  for (std::string s; std::getline(ss, s, ';');) out.push_back(s);
  return out;
}

// Assigns n groups to splits: a seeded shuffle, then test, val, and the rest train (each at least one).
std::vector<std::string> assign_splits(int64_t n, uint64_t seed) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  Rng rng(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng.integer(0, i + 1)]);
  int64_t n_test = std::max<int64_t>(1, std::llround(kTestFraction * n));
  int64_t n_val = std::max<int64_t>(1, std::llround(kValFraction * n));
  std::vector<std::string> split(n, "train");
  for (int64_t i = 0; i < n_test; ++i) split[order[i]] = "test";
  for (int64_t i = n_test; i < n_test + n_val; ++i) split[order[i]] = "val";
  return split;
}

std::string padded(int64_t v, int width) {
  std::string s = std::to_string(v);
  return std::string(std::max<int>(0, width - static_cast<int>(s.size())), '0') + s;
}

std::vector<PlannedClip> plan_corpus(const SynthCorpusOptions& o, int64_t prior_clips) {
  const auto& domains = synth_domains();
  std::vector<PlannedClip> plan;
  int64_t per_group = std::max<int64_t>(1, std::min(o.clips_per_group, o.clips_per_class / 3));
  int64_t groups = (o.clips_per_class + per_group - 1) / per_group;
  for (size_t d = 0; d < domains.size(); ++d) {
    const auto& dom = domains[d];
    uint64_t dseed = mix_seed(o.seed, hash_name(dom.name));
    for (size_t c = 0; c < dom.classes.size(); ++c) {
      const std::string& cls = dom.classes[c];
      uint64_t cseed = mix_seed(dseed, c);
      auto splits = assign_splits(groups, mix_seed(cseed, hash_name("split")));
      for (int64_t i = 0; i < o.clips_per_class; ++i) {
        int64_t g = i % groups, k = i / groups;
        uint64_t source_seed = mix_seed(cseed, 1000 + g);
        PlannedClip pc;
        pc.manifest = dom.name + ".csv";
        pc.group = dom.name + "_" + cls + "_g" + padded(g, 3);
        pc.path = dom.name + "/" + cls + "/" + pc.group + "_c" + padded(k, 2) + ".wav";
        pc.label = cls;
        pc.split = splits[g];
        pc.parts.push_back({static_cast<int>(d), static_cast<int>(c), source_seed, mix_seed(source_seed, 1 + k)});
        pc.part_gains.push_back(1.0);
        plan.push_back(std::move(pc));
      }
    }
  }
  // Prior pool: mixtures of one or two domains with their own seeds; one group per clip.
  uint64_t pseed = mix_seed(o.seed, hash_name("prior"));
  auto psplits = assign_splits(prior_clips, mix_seed(pseed, hash_name("split")));
  for (int64_t i = 0; i < prior_clips; ++i) {
    uint64_t s = mix_seed(pseed, i);
    Rng rng(s);
    int n_src = rng.uniform() < 0.5 ? 1 : 2;
    std::vector<int> ds(domains.size());
    std::iota(ds.begin(), ds.end(), 0);
    for (int j = static_cast<int>(ds.size()) - 1; j > 0; --j) std::swap(ds[j], ds[rng.integer(0, j + 1)]);
    ds.resize(n_src);
    std::sort(ds.begin(), ds.end());
    PlannedClip pc;
    pc.manifest = "prior.csv";
    pc.group = "prior_" + padded(i, 5);
    pc.path = "prior/" + pc.group + ".wav";
    pc.split = psplits[i];
    for (int j = 0; j < n_src; ++j) {
      int d = ds[j];
      int c = static_cast<int>(rng.integer(0, domains[d].classes.size()));
      pc.parts.push_back({d, c, mix_seed(s, 2 * j + 1), mix_seed(s, 2 * j + 2)});
      pc.part_gains.push_back(j == 0 ? 1.0 : std::pow(10.0, -rng.uniform(0, 10) / 20));
      pc.label += (j ? ";" : "") + domains[d].name;
      pc.fine_label += (j ? ";" : "") + domains[d].name + ":" + domains[d].classes[c];
    }
    pc.level = rng.uniform(kMinLevel, kMaxLevel);
    plan.push_back(std::move(pc));
  }
  return plan;
}

std::vector<float> render_planned(const PlannedClip& pc, double seconds, int sr) {
  const auto& domains = synth_domains();
  if (pc.parts.size() == 1) {
    const auto& c = pc.parts[0];
    return synth_render(domains[c.domain].name, domains[c.domain].classes[c.cls], c.source_seed, c.clip_seed,
                        seconds, sr).samples;
  }
  std::vector<double> mix;
  for (size_t j = 0; j < pc.parts.size(); ++j) {
    const auto& c = pc.parts[j];
    auto s = synth_render(domains[c.domain].name, domains[c.domain].classes[c.cls], c.source_seed, c.clip_seed,
                          seconds, sr).samples;
    if (mix.empty()) mix.assign(s.size(), 0.0);
    for (size_t i = 0; i < s.size(); ++i) mix[i] += pc.part_gains[j] * s[i];
  }
  double peak = 0;
  for (double v : mix) peak = std::max(peak, std::abs(v));
  std::vector<float> out(mix.size());
  for (size_t i = 0; i < mix.size(); ++i) out[i] = static_cast<float>(peak > 0 ? mix[i] * pc.level / peak : 0.0);
  return out;
}

}  // namespace

const std::vector<SynthDomain>& synth_domains() {
  static const std::vector<SynthDomain> d = {
      {"music", "harmonic tones and chords (energy at multiples of f0) and drum patterns (periodic percussive onsets)",
       {"tone", "major_chord", "minor_chord", "drums"}},
      {"birds", "frequency-modulated syllables: rising and falling chirps, sinusoidal trills, steady whistles",
       {"upsweep", "downsweep", "trill", "whistle"}},
      {"noise", "filtered noise textures: low-passed rumble, high-passed hiss, narrow-band noise, sparse crackle",
       {"rumble", "hiss", "band_noise", "crackle"}},
      {"speech", "formant-filtered voiced (or whispered) excitation amplitude-modulated at a syllable rate",
       {"vowel_a", "vowel_i", "vowel_u", "whisper"}},
  };
  return d;
}

SynthClip synth_render(const std::string& domain, const std::string& cls, uint64_t source_seed, uint64_t clip_seed,
                       double seconds, int sample_rate) {
  SONAR_CHECK(seconds > 0 && seconds <= 60, "synth_render: seconds must be in (0, 60], got ", seconds);
  SONAR_CHECK(sample_rate >= 8000 && sample_rate <= 96000, "synth_render: sample rate must be in [8000, 96000], got ",
              sample_rate);
  const double sr = sample_rate;
  std::vector<double> y(static_cast<size_t>(std::llround(seconds * sr)), 0.0);
  SONAR_CHECK(!y.empty(), "synth_render: ", seconds, " s is shorter than one sample");
  Rng src(source_seed), clip(clip_seed);
  SynthClip out;
  if (domain == "music") render_music(cls, src, clip, y, sr, out.params);
  else if (domain == "birds") render_birds(cls, src, clip, y, sr, out.params);
  else if (domain == "noise") render_noise(cls, src, clip, y, sr, out.params);
  else if (domain == "speech") render_speech(cls, src, clip, y, sr, out.params);
  else SONAR_FAIL("synth_render: unknown domain '", domain, "' (music, birds, noise, speech)");
  // Fades, a random level, and a faint noise floor.
  size_t fade = std::min(y.size() / 2, static_cast<size_t>(kFadeSeconds * sr));
  for (size_t i = 0; i < fade; ++i) {
    double w = 0.5 - 0.5 * std::cos(kPi * i / fade);
    y[i] *= w;
    y[y.size() - 1 - i] *= w;
  }
  double peak = 0;
  for (double v : y) peak = std::max(peak, std::abs(v));
  double level = clip.uniform(kMinLevel, kMaxLevel);
  out.params["level"] = level;
  out.samples.resize(y.size());
  for (size_t i = 0; i < y.size(); ++i) {
    double v = (peak > 0 ? y[i] * level / peak : 0.0) + kNoiseFloor * clip.normal();
    out.samples[i] = static_cast<float>(std::clamp(v, -1.0, 1.0));
  }
  return out;
}

void synth_write_wav(const std::string& path, const std::vector<float>& samples, int sample_rate, bool float_wav) {
  SONAR_CHECK(!samples.empty(), "synth_write_wav: no samples for ", path);
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  SF_INFO info{};
  info.samplerate = sample_rate;
  info.channels = 1;
  info.format = SF_FORMAT_WAV | (float_wav ? SF_FORMAT_FLOAT : SF_FORMAT_PCM_16);
  SNDFILE* f = sf_open(tmp.c_str(), SFM_WRITE, &info);
  SONAR_CHECK(f != nullptr, "synth_write_wav: cannot open ", tmp, ": ", sf_strerror(nullptr));
  // A PEAK chunk holds a time stamp; leaving it out keeps files of one seed byte-identical.
  if (float_wav) sf_command(f, SFC_SET_ADD_PEAK_CHUNK, nullptr, SF_FALSE);
  sf_count_t n = sf_write_float(f, samples.data(), static_cast<sf_count_t>(samples.size()));
  int close_err = sf_close(f);
  std::error_code ec;
  if (n != static_cast<sf_count_t>(samples.size()) || close_err != 0) {
    fs::remove(tmp, ec);
    SONAR_FAIL("synth_write_wav: short write to ", tmp, " (", n, " of ", samples.size(), " samples)");
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    SONAR_FAIL("synth_write_wav: cannot rename ", tmp, " to ", path, ": ", ec.message());
  }
}

std::string synth_csv_field(const std::string& field) {
  if (field.find_first_of(",\"\r\n") == std::string::npos) return field;
  std::string q = "\"";
  for (char c : field) {
    if (c == '"') q += '"';
    q += c;
  }
  return q + "\"";
}

SynthCorpusResult build_synth_corpus(const std::string& out_dir, const SynthCorpusOptions& o,
                                     const std::function<void(const std::string&)>& progress) {
  SONAR_CHECK(o.clips_per_class >= 3, "synth corpus: --clips-per-class must be >= 3 (one group each for train, "
              "val and test), got ", o.clips_per_class);
  SONAR_CHECK(o.clips_per_class <= 100000, "synth corpus: --clips-per-class too large: ", o.clips_per_class);
  SONAR_CHECK(o.clips_per_group >= 1, "synth corpus: --clips-per-group must be >= 1, got ", o.clips_per_group);
  SONAR_CHECK(o.prior_clips == -1 || (o.prior_clips >= 3 && o.prior_clips <= 1000000),
              "synth corpus: --prior-clips must be -1 or in [3, 1000000], got ", o.prior_clips);
  SONAR_CHECK(o.seconds > 0 && o.seconds <= 60, "synth corpus: --seconds must be in (0, 60], got ", o.seconds);
  SONAR_CHECK(o.sample_rate >= 8000 && o.sample_rate <= 96000, "synth corpus: bad sample rate ", o.sample_rate);
  SONAR_CHECK(!out_dir.empty(), "synth corpus: empty output folder");
  const int64_t prior_clips = o.prior_clips < 0 ? 4 * o.clips_per_class : o.prior_clips;
  const fs::path out(out_dir);
  std::error_code ec;
  fs::create_directories(out, ec);
  SONAR_CHECK(!ec && fs::is_directory(out), "synth corpus: cannot create folder ", out_dir, ": ", ec.message());

  std::ostringstream stamp;
  char secs[64];
  std::snprintf(secs, sizeof secs, "%.17g", o.seconds);
  stamp << "sonar synth-corpus v" << kStampVersion << "\nseed=" << o.seed << "\nclips_per_class=" << o.clips_per_class
        << "\nclips_per_group=" << o.clips_per_group << "\nprior_clips=" << prior_clips << "\nseconds=" << secs
        << "\nsample_rate=" << o.sample_rate << "\nformat=" << (o.float_wav ? "float" : "pcm16") << "\n";
  const fs::path stamp_path = out / ".synth_corpus.stamp";

  auto plan = plan_corpus(o, prior_clips);
  SynthCorpusResult res;
  std::vector<std::string> names;
  for (const auto& d : synth_domains()) names.push_back(d.name + ".csv");
  names.push_back("prior.csv");
  names.push_back("prior_fine.csv");
  for (const auto& n : names) res.manifests.push_back((out / n).string());
  res.manifests.push_back((out / "tasks.csv").string());
  for (const auto& pc : plan) {
    for (const auto& l : split_labels(pc.label)) res.counts[pc.manifest][l][pc.split] += 1;
    for (const auto& l : split_labels(pc.fine_label)) res.counts["prior_fine.csv"][l][pc.split] += 1;
  }

  bool complete = read_text(stamp_path) == stamp.str();
  for (size_t i = 0; complete && i < res.manifests.size(); ++i) complete = fs::exists(res.manifests[i]);
  for (size_t i = 0; complete && i < plan.size(); ++i) complete = fs::exists(out / plan[i].path);
  if (complete && !o.force) {
    res.up_to_date = true;
    if (progress) progress("synth corpus in " + out_dir + " is up to date (same options; --force rebuilds)");
    return res;
  }
  fs::remove(stamp_path, ec);  // a run killed from here on is not mistaken for a finished one

  std::map<std::string, std::ostringstream> manifests;
  for (const auto& n : names) manifests[n] << "path,label,split,group,source,license\n";
  auto t_start = std::chrono::steady_clock::now();
  std::string current;
  int64_t done_in_manifest = 0;
  auto report = [&] {
    if (!progress || current.empty()) return;
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    char line[256];
    std::snprintf(line, sizeof line, "%-10s %6lld clips written (%.1f s elapsed)", current.c_str(),
                  static_cast<long long>(done_in_manifest), s);
    progress(line);
  };
  for (const auto& pc : plan) {
    if (pc.manifest != current) {
      report();
      current = pc.manifest;
      done_in_manifest = 0;
    }
    fs::path file = out / pc.path;
    fs::create_directories(file.parent_path(), ec);
    SONAR_CHECK(!ec, "synth corpus: cannot create folder ", file.parent_path().string(), ": ", ec.message());
    synth_write_wav(file.string(), render_planned(pc, o.seconds, o.sample_rate), o.sample_rate, o.float_wav);
    if (!pc.fine_label.empty())
      manifests["prior_fine.csv"] << synth_csv_field(pc.path) << ',' << synth_csv_field(pc.fine_label) << ','
                                  << pc.split << ',' << synth_csv_field(pc.group) << ',' << kSource << ',' << kLicense
                                  << '\n';
    manifests[pc.manifest] << synth_csv_field(pc.path) << ',' << synth_csv_field(pc.label) << ',' << pc.split << ','
                           << synth_csv_field(pc.group) << ',' << kSource << ',' << kLicense << '\n';
    ++res.clips_written;
    ++done_in_manifest;
  }
  report();
  for (const auto& n : names) write_text_atomic(out / n, manifests[n].str());
  std::ostringstream tasks;
  tasks << "task,manifest,type,splits\n";
  for (const auto& d : synth_domains()) tasks << d.name << ',' << d.name << ".csv,multiclass,train;val;test\n";
  tasks << "prior,prior.csv,multilabel,train;val;test\n";
  tasks << "prior_fine,prior_fine.csv,multilabel,train;val;test\n";
  write_text_atomic(out / "tasks.csv", tasks.str());
  write_text_atomic(stamp_path, stamp.str());
  return res;
}

}  // namespace sonar::audio
