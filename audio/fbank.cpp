// Kaldi-compatible fbank (see fbank.h for the exact definition): shared tables and FFTW plans, a per-frame
// kernel in double precision, and OpenMP over frames. Not the decoding or the dataset code.
//
// Precision note: this file must not be built with -ffast-math. The mel energies of quiet bins are
// differences of large numbers; reassociation or flush-to-zero would move them away from the float64
// truth that the tests hold us to. Contraction into fused multiply-adds is off too, so the float32 mel
// weights round exactly as torchaudio's separate multiplies and adds do.
#pragma GCC optimize("fp-contract=off")
#include "audio/fbank.h"

#include <fftw3.h>
#include <omp.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>

#include "tensor/error.h"

namespace sonar::audio {

namespace {

constexpr double kPi = 3.14159265358979323846;
// torchaudio floors mel energies at float32's machine epsilon whatever the dtype.
constexpr double kLogFloor = static_cast<double>(FLT_EPSILON);
// Fewer frames than this are not worth waking the OpenMP team for.
constexpr int64_t kMinFramesPerThread = 16;
// Frames handed out at a time (~40 us of work): dynamic scheduling, so a thread that the OS preempts (a
// busy machine, or loader threads beside us) does not hold the others up at the end of the loop.
constexpr int kFramesPerChunk = 32;

double mel_scale(double hz) { return 1127.0 * std::log(1.0 + hz / 700.0); }

// Everything that depends only on the settings: built once, shared read-only.
struct Tables {
  int64_t win = 0, shift = 0, nfft = 0, nbins = 0;  // nbins = nfft / 2 + 1
  int num_mel = 0;
  double scale = 1.0, preemph = 0.0;
  bool remove_dc = true;
  std::vector<double> window;         // [win]
  std::vector<int64_t> mel_first;     // first FFT bin with a nonzero weight, per mel filter
  std::vector<int64_t> mel_count;     // number of such bins
  std::vector<int64_t> mel_offset;    // where its weights start in mel_weights
  std::vector<double> mel_weights;
  fftw_plan plan = nullptr;           // r2c of length nfft, executed with fftw_execute_dft_r2c
  ~Tables();
};

// FFTW's planner is not thread-safe; every planner call (create and destroy) goes through this lock.
std::mutex& planner_mutex() {
  static std::mutex m;
  return m;
}

Tables::~Tables() {
  if (plan) {
    std::lock_guard<std::mutex> lock(planner_mutex());
    fftw_destroy_plan(plan);
  }
}

std::vector<double> make_window(const FbankOptions& o) {
  const int64_t n = o.window_size();
  std::vector<double> w(n, 1.0);
  // torch's non-periodic windows divide by (n - 1); a one-sample window is just 1.
  const double denom = n > 1 ? static_cast<double>(n - 1) : 1.0;
  for (int64_t i = 0; i < n; ++i) {
    const double a = 2.0 * kPi * static_cast<double>(i) / denom;
    switch (o.window) {
      case WindowType::Hanning: w[i] = 0.5 - 0.5 * std::cos(a); break;
      case WindowType::Povey: w[i] = std::pow(0.5 - 0.5 * std::cos(a), 0.85); break;
      case WindowType::Hamming: w[i] = 0.54 - 0.46 * std::cos(a); break;
      case WindowType::Rectangular: w[i] = 1.0; break;
      case WindowType::Blackman:
        w[i] = o.blackman_coeff - 0.5 * std::cos(a) + (0.5 - o.blackman_coeff) * std::cos(2.0 * a);
        break;
    }
  }
  if (n == 1 && o.window != WindowType::Rectangular) w[0] = 1.0;
  return w;
}

// torchaudio's get_mel_banks in its own arithmetic: the band edges are Python doubles, every tensor
// operation is float32 (the default dtype), with each scalar rounded to float first.
std::vector<double> make_mel_dense_torchaudio(const FbankOptions& o) {
  const int64_t nfft = o.padded_window_size();
  const int64_t nbins = nfft / 2 + 1;
  const int64_t num_fft_bins = nfft / 2;
  const double nyquist = 0.5 * o.sample_frequency;
  const double high = o.high_freq <= 0.0 ? o.high_freq + nyquist : o.high_freq;
  const float fft_bin_width = static_cast<float>(o.sample_frequency / static_cast<double>(nfft));
  const double mel_low = mel_scale(o.low_freq), mel_high = mel_scale(high);
  const double delta = (mel_high - mel_low) / (o.num_mel_bins + 1);
  const float delta_f = static_cast<float>(delta), low_f = static_cast<float>(mel_low);
  std::vector<float> mel(num_fft_bins);
  for (int64_t k = 0; k < num_fft_bins; ++k) {
    const float f = static_cast<float>(k) * fft_bin_width;
    mel[k] = 1127.0f * std::log(1.0f + f / 700.0f);
  }
  std::vector<double> dense(static_cast<size_t>(o.num_mel_bins) * nbins, 0.0);
  for (int m = 0; m < o.num_mel_bins; ++m) {
    const float left = low_f + static_cast<float>(m) * delta_f;
    const float center = low_f + (static_cast<float>(m) + 1.0f) * delta_f;
    const float right = low_f + (static_cast<float>(m) + 2.0f) * delta_f;
    for (int64_t k = 0; k < num_fft_bins; ++k) {
      const float up = (mel[k] - left) / (center - left);
      const float down = (right - mel[k]) / (right - center);
      dense[m * nbins + k] = static_cast<double>(std::max(0.0f, std::min(up, down)));
    }
  }
  return dense;
}

// Dense [num_mel, nfft/2 + 1] triangular filters on the mel scale, Nyquist column zero.
std::vector<double> make_mel_dense(const FbankOptions& o) {
  if (o.torchaudio_mel_weights) return make_mel_dense_torchaudio(o);
  const int64_t nfft = o.padded_window_size();
  const int64_t nbins = nfft / 2 + 1;
  const int64_t num_fft_bins = nfft / 2;
  const double nyquist = 0.5 * o.sample_frequency;
  const double high = o.high_freq <= 0.0 ? o.high_freq + nyquist : o.high_freq;
  const double fft_bin_width = o.sample_frequency / static_cast<double>(nfft);
  const double mel_low = mel_scale(o.low_freq), mel_high = mel_scale(high);
  const double delta = (mel_high - mel_low) / (o.num_mel_bins + 1);
  std::vector<double> dense(static_cast<size_t>(o.num_mel_bins) * nbins, 0.0);
  for (int m = 0; m < o.num_mel_bins; ++m) {
    const double left = mel_low + m * delta, center = mel_low + (m + 1.0) * delta,
                 right = mel_low + (m + 2.0) * delta;
    for (int64_t k = 0; k < num_fft_bins; ++k) {
      const double mel = mel_scale(fft_bin_width * static_cast<double>(k));
      const double up = (mel - left) / (center - left);
      const double down = (right - mel) / (right - center);
      dense[m * nbins + k] = std::max(0.0, std::min(up, down));
    }
  }
  return dense;
}

std::shared_ptr<const Tables> build_tables(const FbankOptions& o) {
  auto t = std::make_shared<Tables>();
  t->win = o.window_size();
  t->shift = o.window_shift();
  t->nfft = o.padded_window_size();
  t->nbins = t->nfft / 2 + 1;
  t->num_mel = o.num_mel_bins;
  t->scale = o.input_scale;
  t->preemph = o.preemphasis;
  t->remove_dc = o.remove_dc_offset;
  t->window = make_window(o);
  const std::vector<double> dense = make_mel_dense(o);
  for (int m = 0; m < t->num_mel; ++m) {
    const double* row = dense.data() + m * t->nbins;
    int64_t first = -1, last = -1;
    for (int64_t k = 0; k < t->nbins; ++k)
      if (row[k] != 0.0) {
        if (first < 0) first = k;
        last = k;
      }
    if (first < 0) {  // an empty filter (possible with odd settings): no bins
      first = 0;
      last = -1;
    }
    t->mel_first.push_back(first);
    t->mel_count.push_back(last - first + 1);
    t->mel_offset.push_back(static_cast<int64_t>(t->mel_weights.size()));
    for (int64_t k = first; k <= last; ++k) t->mel_weights.push_back(row[k]);
  }
  {
    std::lock_guard<std::mutex> lock(planner_mutex());
    double* in = fftw_alloc_real(t->nfft);
    fftw_complex* out = fftw_alloc_complex(t->nbins);
    // FFTW_ESTIMATE: the plan is chosen by rule, not by timing runs, so every process computes the same
    // bits (a measured plan could differ from run to run and flip the last bit of an output now and then).
    // The frame buffer is scratch, so FFTW may overwrite it (FFTW_DESTROY_INPUT allows faster algorithms).
    t->plan = fftw_plan_dft_r2c_1d(static_cast<int>(t->nfft), in, out, FFTW_ESTIMATE | FFTW_DESTROY_INPUT);
    fftw_free(in);
    fftw_free(out);
  }
  SONAR_CHECK(t->plan != nullptr, "fbank: FFTW could not plan a real FFT of length ", t->nfft);
  return t;
}

std::shared_ptr<const Tables> get_tables(const FbankOptions& o) {
  static std::mutex cache_mutex;
  static std::map<std::string, std::shared_ptr<const Tables>> cache;
  const std::string key = o.key();
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  o.validate();
  auto t = build_tables(o);
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto [it, inserted] = cache.emplace(key, t);
  return it->second;
}

// Per-thread FFTW buffers (allocated with fftw_malloc so their alignment matches the plan's).
struct Workspace {
  int64_t nfft = 0;
  double* x = nullptr;
  fftw_complex* spec = nullptr;
  std::vector<double> power;
  std::vector<double> mel;
  ~Workspace() {
    fftw_free(x);
    fftw_free(spec);
  }
  void ensure(int64_t n) {
    if (n == nfft) return;
    fftw_free(x);
    fftw_free(spec);
    x = fftw_alloc_real(n);
    spec = fftw_alloc_complex(n / 2 + 1);
    SONAR_CHECK(x && spec, "fbank: out of memory for FFT buffers of length ", n);
    power.assign(n / 2 + 1, 0.0);
    nfft = n;
  }
  void ensure_mel(int num_mel) {
    if (static_cast<int>(mel.size()) < num_mel) mel.assign(num_mel, 0.0);
  }
};

Workspace& workspace(int64_t nfft, int num_mel) {
  thread_local Workspace ws;
  ws.ensure(nfft);
  ws.ensure_mel(num_mel);
  return ws;
}

// Natural log of a positive, finite, normal double, accurate to a few 1e-16 relative: exponent from the bits,
// mantissa m folded into [sqrt(1/2), sqrt(2)), log(m) = 2 atanh(s) with s = (m - 1) / (m + 1), |s| <= 0.172,
// summed to s^15 (truncation < 1e-14 absolute). Branch-free so a loop of them vectorises; deterministic
// (no library call whose last bit could differ between platforms). The output is rounded to float anyway.
inline double log_positive(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  double k = static_cast<double>(static_cast<int64_t>(bits >> 52) - 1023);
  bits = (bits & 0x000FFFFFFFFFFFFFULL) | 0x3FF0000000000000ULL;  // mantissa in [1, 2)
  double m;
  std::memcpy(&m, &bits, sizeof m);
  const bool high = m > 1.4142135623730951;
  m = high ? 0.5 * m : m;
  k = high ? k + 1.0 : k;
  const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
  const double poly =
      s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 * (1.0 / 11 + s2 * (1.0 / 13 + s2 / 15))))));
  return k * 0.69314718055994530942 + (2.0 * s + 2.0 * s * poly);
}

// One frame: `src` points at the frame's first sample, `out` receives num_mel floats.
void compute_frame(const Tables& t, const float* src, float* out) {
  Workspace& ws = workspace(t.nfft, t.num_mel);
  double* x = ws.x;
  const int64_t win = t.win;
  double sum = 0.0;
  for (int64_t i = 0; i < win; ++i) {
    x[i] = static_cast<double>(src[i]) * t.scale;
    sum += x[i];
  }
  if (t.remove_dc) {
    const double mean = sum / static_cast<double>(win);
    for (int64_t i = 0; i < win; ++i) x[i] -= mean;
  }
  if (t.preemph != 0.0) {
    // y[i] = x[i] - p x[i-1], y[0] = x[0] - p x[0]; backwards so each x[i-1] is still the input.
    for (int64_t i = win - 1; i > 0; --i) x[i] -= t.preemph * x[i - 1];
    x[0] -= t.preemph * x[0];
  }
  const double* w = t.window.data();
  for (int64_t i = 0; i < win; ++i) x[i] *= w[i];
  for (int64_t i = win; i < t.nfft; ++i) x[i] = 0.0;
  fftw_execute_dft_r2c(t.plan, x, ws.spec);
  double* p = ws.power.data();
  for (int64_t k = 0; k < t.nbins; ++k) p[k] = ws.spec[k][0] * ws.spec[k][0] + ws.spec[k][1] * ws.spec[k][1];
  double* e = ws.mel.data();
  for (int m = 0; m < t.num_mel; ++m) {
    const double* wt = t.mel_weights.data() + t.mel_offset[m];
    const double* pk = p + t.mel_first[m];
    const int64_t cnt = t.mel_count[m];
    double acc = 0.0;
    for (int64_t j = 0; j < cnt; ++j) acc += wt[j] * pk[j];
    e[m] = std::max(acc, kLogFloor);
  }
  for (int m = 0; m < t.num_mel; ++m) out[m] = static_cast<float>(log_positive(e[m]));
}

void check_finite(const float* wave, int64_t n, const char* what) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(wave[i]);
  if (ok) return;
  for (int64_t i = 0; i < n; ++i)
    SONAR_CHECK(std::isfinite(wave[i]), what, ": sample ", i, " is ", wave[i], " (NaN or Inf in the waveform)");
}

// Runs frame(g) for g in [0, total), across threads when worthwhile.
template <class F>
void for_frames(int64_t total, const FbankOptions& o, F&& frame) {
  int threads = o.num_threads > 0 ? o.num_threads : omp_get_max_threads();
  if (omp_in_parallel()) threads = 1;
  threads = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(1, total / kMinFramesPerThread)));
  if (threads <= 1) {
    for (int64_t g = 0; g < total; ++g) frame(g);
    return;
  }
#pragma omp parallel for schedule(dynamic, kFramesPerChunk) num_threads(threads)
  for (int64_t g = 0; g < total; ++g) frame(g);
}

const float* float_rows(const Tensor& t, Tensor& holder, int64_t rank, const char* op) {
  SONAR_CHECK(t.defined(), op, ": undefined tensor");
  SONAR_CHECK(t.dtype() == DType::Float32, op, ": expected a float32 waveform, got ", dtype_name(t.dtype()));
  SONAR_CHECK(t.dim() == rank, op, ": expected a ", rank == 1 ? "[samples]" : "[clips, samples]",
              " waveform, got shape ", shape_str(t.shape()));
  holder = t.contiguous();
  return holder.data<float>();
}

}  // namespace

// ---- options ----------------------------------------------------------------------------------------

int64_t FbankOptions::window_size() const {
  // The same arithmetic as torchaudio (int(sample_frequency * frame_length * 0.001)).
  return static_cast<int64_t>(sample_frequency * frame_length_ms * 0.001);
}

int64_t FbankOptions::window_shift() const {
  return static_cast<int64_t>(sample_frequency * frame_shift_ms * 0.001);
}

int64_t FbankOptions::padded_window_size() const {
  const int64_t n = window_size();
  if (!round_to_power_of_two) return n;
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

std::string FbankOptions::key() const {
  std::ostringstream os;
  os.precision(17);
  os << "fbank-v1 mel=" << num_mel_bins << " sr=" << sample_frequency << " len=" << frame_length_ms
     << " shift=" << frame_shift_ms << " pre=" << preemphasis << " dc=" << remove_dc_offset
     << " win=" << static_cast<int>(window) << " bc=" << blackman_coeff << " lo=" << low_freq
     << " hi=" << high_freq << " pow2=" << round_to_power_of_two << " scale=" << input_scale
     << " tamel=" << torchaudio_mel_weights;
  return os.str();
}

void FbankOptions::validate() const {
  SONAR_CHECK(sample_frequency > 0, "fbank: sample_frequency must be > 0, got ", sample_frequency);
  SONAR_CHECK(num_mel_bins > 3, "fbank: num_mel_bins must be > 3, got ", num_mel_bins);
  SONAR_CHECK(window_size() >= 2, "fbank: frame_length ", frame_length_ms, " ms is under two samples");
  SONAR_CHECK(window_shift() >= 1, "fbank: frame_shift ", frame_shift_ms, " ms is under one sample");
  SONAR_CHECK(padded_window_size() % 2 == 0, "fbank: the FFT length ", padded_window_size(),
              " must be even (use a frame length with an even number of samples or round_to_power_of_two)");
  const double nyquist = 0.5 * sample_frequency;
  const double high = high_freq <= 0.0 ? high_freq + nyquist : high_freq;
  SONAR_CHECK(low_freq >= 0.0 && low_freq < nyquist, "fbank: low_freq ", low_freq, " Hz must be in [0, ",
              nyquist, ")");
  SONAR_CHECK(high > 0.0 && high <= nyquist && low_freq < high, "fbank: high_freq resolves to ", high,
              " Hz; it must be in (low_freq, Nyquist = ", nyquist, "]");
  SONAR_CHECK(preemphasis >= 0.0 && preemphasis <= 1.0, "fbank: preemphasis must be in [0, 1], got ",
              preemphasis);
  SONAR_CHECK(std::isfinite(input_scale) && input_scale != 0.0, "fbank: input_scale must be finite and nonzero");
}

int64_t fbank_num_frames(int64_t num_samples, const FbankOptions& o) {
  const int64_t win = o.window_size(), shift = o.window_shift();
  SONAR_CHECK(num_samples >= 0, "fbank: negative sample count ", num_samples);
  SONAR_CHECK(win >= 1 && shift >= 1, "fbank: frame length and shift must be at least one sample");
  if (num_samples < win) return 0;
  return 1 + (num_samples - win) / shift;
}

// ---- features ---------------------------------------------------------------------------------------

void fbank_into(const float* wave, int64_t n, float* out, const FbankOptions& o) {
  auto tables = get_tables(o);
  const Tables& t = *tables;
  const int64_t frames = fbank_num_frames(n, o);
  if (frames == 0) return;
  check_finite(wave, n, "fbank");
  for_frames(frames, o, [&](int64_t f) { compute_frame(t, wave + f * t.shift, out + f * t.num_mel); });
}

Tensor fbank(const Tensor& wave, const FbankOptions& o) {
  Tensor holder;
  const float* w = float_rows(wave, holder, 1, "fbank");
  const int64_t n = wave.size(0);
  Tensor out = Tensor::empty({fbank_num_frames(n, o), o.num_mel_bins});
  fbank_into(w, n, out.data<float>(), o);
  return out;
}

Tensor fbank_batch(const Tensor& waves, const FbankOptions& o) {
  Tensor holder;
  const float* w = float_rows(waves, holder, 2, "fbank_batch");
  const int64_t B = waves.size(0), S = waves.size(1);
  const int64_t T = fbank_num_frames(S, o);
  auto tables = get_tables(o);
  const Tables& t = *tables;
  Tensor out = Tensor::empty({B, T, o.num_mel_bins});
  if (B * T == 0) return out;
  for (int64_t b = 0; b < B; ++b) check_finite(w + b * S, S, ("fbank_batch: clip " + std::to_string(b)).c_str());
  float* dst = out.data<float>();
  for_frames(B * T, o, [&](int64_t g) {
    const int64_t b = g / T, f = g % T;
    compute_frame(t, w + b * S + f * t.shift, dst + g * t.num_mel);
  });
  return out;
}

PaddedFbank fbank_padded(const Tensor& waves, const std::vector<int64_t>& lengths, const FbankOptions& o,
                         float pad_value) {
  Tensor holder;
  const float* w = float_rows(waves, holder, 2, "fbank_padded");
  const int64_t B = waves.size(0), S = waves.size(1);
  SONAR_CHECK(static_cast<int64_t>(lengths.size()) == B, "fbank_padded: ", lengths.size(),
              " lengths for a batch of ", B, " clips");
  auto tables = get_tables(o);
  const Tables& t = *tables;
  PaddedFbank r;
  std::vector<int64_t> start(B + 1, 0);  // prefix sums of real frames: frame g belongs to clip b
  int64_t T = 0;
  for (int64_t b = 0; b < B; ++b) {
    SONAR_CHECK(lengths[b] >= 0 && lengths[b] <= S, "fbank_padded: clip ", b, " has length ", lengths[b],
                " outside [0, ", S, "]");
    r.num_frames.push_back(fbank_num_frames(lengths[b], o));
    T = std::max(T, r.num_frames.back());
    start[b + 1] = start[b] + r.num_frames.back();
    check_finite(w + b * S, lengths[b], ("fbank_padded: clip " + std::to_string(b)).c_str());
  }
  r.fbank = Tensor::empty({B, T, o.num_mel_bins});
  r.frame_mask = Tensor::empty({B, T}, DType::Bool);
  float* dst = r.fbank.data<float>();
  uint8_t* mask = r.frame_mask.bytes();
  const int64_t F = o.num_mel_bins;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t f = 0; f < T; ++f) mask[b * T + f] = f >= r.num_frames[b] ? 1 : 0;
    std::fill(dst + (b * T + r.num_frames[b]) * F, dst + (b + 1) * T * F, pad_value);
  }
  for_frames(start[B], o, [&](int64_t g) {
    const int64_t b = std::upper_bound(start.begin(), start.end(), g) - start.begin() - 1;
    const int64_t f = g - start[b];
    compute_frame(t, w + b * S + f * t.shift, dst + (b * T + f) * F);
  });
  return r;
}

void normalize_fbank_(Tensor& fb, double mean, double std) {
  SONAR_CHECK(std > 0.0 && std::isfinite(std), "normalize_fbank: std must be positive, got ", std);
  SONAR_CHECK(std::isfinite(mean), "normalize_fbank: mean must be finite, got ", mean);
  SONAR_CHECK(fb.dtype() == DType::Float32 && fb.is_contiguous(),
              "normalize_fbank_: expected a contiguous float32 tensor, got ", fb.str());
  float* p = fb.data<float>();
  const int64_t n = fb.numel();
  // The same float32 operations as BEATs' (fbank - mean) / (2 * std) in PyTorch.
  const float m = static_cast<float>(mean), d = static_cast<float>(2.0 * std);
  for (int64_t i = 0; i < n; ++i) p[i] = (p[i] - m) / d;
}

Tensor normalize_fbank(const Tensor& fb, double mean, double std) {
  SONAR_CHECK(fb.dtype() == DType::Float32, "normalize_fbank: expected float32, got ", dtype_name(fb.dtype()));
  Tensor out = fb.clone();
  normalize_fbank_(out, mean, std);
  return out;
}

std::vector<double> fbank_window(const FbankOptions& o) {
  o.validate();
  return make_window(o);
}

std::vector<double> fbank_mel_filters(const FbankOptions& o) {
  o.validate();
  return make_mel_dense(o);
}

}  // namespace sonar::audio
