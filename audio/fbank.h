// Kaldi-compatible log mel filterbank ("fbank"), the input features of BEATs.
//
// fbank(wave) reproduces
//   torchaudio.compliance.kaldi.fbank(wave * 2**15, num_mel_bins=128, sample_frequency=16000,
//                                     frame_length=25, frame_shift=10)
// with torchaudio's defaults: frames of 400 samples every 160 (snip_edges: only frames that fit whole),
// per-frame DC offset removal, pre-emphasis 0.97 (x[i] -= 0.97 x[i-1], x[-1] := x[0]), the povey window
// (Hann of length 400, non-periodic, to the power 0.85), zero padding to 512, power spectrum |FFT|^2,
// triangular mel filters (mel = 1127 ln(1 + f/700)) spaced evenly from 20 Hz to Nyquist with the Nyquist
// FFT bin unused, then log(max(energy, FLT_EPSILON)). No dither, no energy term. The input waveform is in
// [-1, 1] and is multiplied by `input_scale` (2^15) first, as BEATs does.
//
// Precision: everything between the samples and the log (DC removal, pre-emphasis, window, FFT, power,
// mel sums) runs in double, so low-energy mel bins (ill-conditioned in float32: an FFT's rounding noise
// is relative to the loudest bin) stay close to the float64 truth; the output is float32.
//
// Tables (window, sparse mel filters) and FFTW plans are built once per settings and shared by all
// threads; FFTW planning happens under a mutex, and frames run through FFTW's new-array execute
// functions with per-thread buffers, so every function here is safe to call from many threads at once.
//
// What this is not: no autograd (fbank is a fixed front end), no file decoding (audio/decode.h), no
// normalisation inside fbank() (see normalize_fbank below).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace sonar::audio {

// BEATs' fbank normalisation constants: (fbank - mean) / (2 * std).
constexpr double kBeatsFbankMean = 15.41663;
constexpr double kBeatsFbankStd = 6.55582;

enum class WindowType { Povey, Hanning, Hamming, Rectangular, Blackman };

struct FbankOptions {
  int num_mel_bins = 128;
  double sample_frequency = 16000.0;  // Hz; the waveform must already be at this rate
  double frame_length_ms = 25.0;
  double frame_shift_ms = 10.0;
  double preemphasis = 0.97;      // 0 disables
  bool remove_dc_offset = true;
  WindowType window = WindowType::Povey;
  double blackman_coeff = 0.42;   // only for WindowType::Blackman
  double low_freq = 20.0;         // Hz, lower edge of the first mel filter
  double high_freq = 0.0;         // Hz, upper edge of the last filter; <= 0 means Nyquist + high_freq
  bool round_to_power_of_two = true;  // FFT size: next power of two >= frame length (else the frame length)
  // true (default): the mel filter weights are computed with torchaudio's float32 arithmetic, as BEATs'
  // features (and the fbank64 fixtures) were; false: exact double-precision weights. The two differ by up
  // to ~1e-3 in the log output where a strong tone sits near a filter's edge.
  bool torchaudio_mel_weights = true;
  double input_scale = 32768.0;   // the waveform is multiplied by this first (BEATs: 2^15)
  // Compute only, never changes a value: 0 = OpenMP's default thread count, 1 = serial (what a
  // loader thread that already runs in parallel with others should ask for), n = at most n threads.
  int num_threads = 0;

  int64_t window_size() const;         // samples per frame (400)
  int64_t window_shift() const;        // samples between frame starts (160)
  int64_t padded_window_size() const;  // FFT length (512)
  // A canonical string of every setting that changes a value (not num_threads), for caches.
  std::string key() const;
  // Throws sonar::Error naming the setting when a value is out of range.
  void validate() const;
};

// Frames that fit whole in `num_samples` (snip_edges): 1 + (n - window_size) / window_shift, and 0 when
// the clip is shorter than one frame.
int64_t fbank_num_frames(int64_t num_samples, const FbankOptions& opts = {});

// wave: float32 [S] at opts.sample_frequency, values nominally in [-1, 1].
// Returns float32 [T, F] with T = fbank_num_frames(S) and F = num_mel_bins. A clip shorter than one frame
// (S < 400 by default) gives an empty [0, F] tensor, as torchaudio's frame count implies; callers that need
// at least one frame must check. Throws sonar::Error on a wrong dtype or rank, or a NaN/Inf sample (its
// index in the message).
Tensor fbank(const Tensor& wave, const FbankOptions& opts = {});

// waves: float32 [B, S]. Each row's fbank is computed on the whole row (padding included), exactly as
// BEATs' preprocess does for a padded batch: returns [B, T, F] with T = fbank_num_frames(S). Frames of all
// clips are spread over the OpenMP threads.
Tensor fbank_batch(const Tensor& waves, const FbankOptions& opts = {});

// A batch of clips of different lengths.
struct PaddedFbank {
  Tensor fbank;       // float32 [B, T, F]; T = the most frames of any clip; padded frames hold pad_value
  Tensor frame_mask;  // bool [B, T]; 1 where a frame is padding
  std::vector<int64_t> num_frames;  // real frames per clip
};
// waves: float32 [B, S] whose row b holds lengths[b] real samples (the rest is ignored). Each clip's fbank
// is computed on its real samples only; frames past them are padding (frame_mask 1, value pad_value).
PaddedFbank fbank_padded(const Tensor& waves, const std::vector<int64_t>& lengths,
                         const FbankOptions& opts = {}, float pad_value = 0.0f);

// Raw-pointer form for loaders: writes fbank_num_frames(n) x num_mel_bins floats to `out` (row-major).
// Uses opts.num_threads like fbank().
void fbank_into(const float* wave, int64_t n, float* out, const FbankOptions& opts = {});

// (fbank - mean) / (2 * std), BEATs' normalisation. std must be > 0.
Tensor normalize_fbank(const Tensor& fbank, double mean = kBeatsFbankMean, double std = kBeatsFbankStd);
// In place on a contiguous float32 tensor.
void normalize_fbank_(Tensor& fbank, double mean = kBeatsFbankMean, double std = kBeatsFbankStd);

// The tables fbank uses, for tests and tools: the window (window_size values) and the dense mel filter
// matrix [F, padded_window_size / 2 + 1] (last column zero), both in double.
std::vector<double> fbank_window(const FbankOptions& opts = {});
std::vector<double> fbank_mel_filters(const FbankOptions& opts = {});

}  // namespace sonar::audio
