// Reading audio files into 16 kHz mono float32 waveforms: WAV, FLAC, OGG/Vorbis/Opus, MP3 and the other
// formats libsndfile reads, at any sample rate and channel count, integer or float samples; plus raw
// float32 .npy arrays of 16 kHz samples. Also a small writer (tests, tools and the corpus builder).
// Not resampling itself (audio/resample.h) and not datasets (audio/dataset.h).
//
// Every failure (missing, unreadable, empty, corrupt or truncated file, NaN/Inf samples) throws
// sonar::Error whose message starts with the path, so callers can report and skip or stop.
// Hostile files: the header's frame count only sizes a reservation bounded by the file's byte count;
// samples are decoded in fixed blocks and at most kMaxDecodedSamples are kept (docs/reliability.md).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "audio/resample.h"
#include "tensor/tensor.h"

namespace sonar::audio {

constexpr int kBeatsSampleRate = 16000;
constexpr size_t kMaxDecodedSamples = size_t{1} << 30;  // 4 GiB of float samples: 18.6 h of 16 kHz mono
constexpr int kMaxAudioChannels = 256;                  // libsndfile's own limit is 1024

struct AudioInfo {
  int64_t frames = 0;   // samples per channel
  int sample_rate = 0;
  int channels = 0;
  std::string format;   // e.g. "WAV (Microsoft) / Signed 16 bit PCM"
  double seconds() const { return sample_rate > 0 ? static_cast<double>(frames) / sample_rate : 0.0; }
};

// Header information without decoding the samples (.npy: shape-derived, 16 kHz mono).
AudioInfo probe_audio(const std::string& path);

// A decoded file at its own rate: `samples` interleaved, frames x channels, as float (integer formats
// scaled to [-1, 1), float formats as stored).
struct DecodedAudio {
  std::vector<float> samples;
  int64_t frames = 0;
  int sample_rate = 0;
  int channels = 0;
};
DecodedAudio decode_audio(const std::string& path);
// The same for a file's bytes already in memory (libsndfile's virtual I/O); `name` labels messages.
DecodedAudio decode_audio_memory(const std::string& bytes, const std::string& name);

// Mean over channels.
std::vector<float> mix_to_mono(const DecodedAudio& audio);

// The file as float32 [S] mono at `sample_rate` (default 16 kHz): decode, mix down, resample with libsoxr.
// A .npy file is read as float32 16 kHz samples of shape [S] or [1, S] (use load_wave_npy for [clips, S]).
Tensor load_audio(const std::string& path, int sample_rate = kBeatsSampleRate,
                  ResampleQuality quality = ResampleQuality::High);

// A float32 .npy of 16 kHz samples, [S] or [clips, S], checked for NaN/Inf.
Tensor load_wave_npy(const std::string& path);

bool has_npy_extension(const std::string& path);

// Sample encodings for write_audio.
enum class SampleFormat { Default, PCM16, PCM24, PCM32, PCMU8, Float, Double, Vorbis, Opus, MP3 };

// Writes interleaved float samples (frames x channels) to `path`; the container comes from the extension
// (.wav .flac .ogg .opus .mp3 .aiff .au .caf .w64). Default encoding: PCM16 for WAV/FLAC/AIFF/AU/CAF/W64,
// Vorbis for .ogg, Opus for .opus, MPEG layer III for .mp3. Written to a temporary name and renamed, so a
// failure leaves no partial file.
void write_audio(const std::string& path, const std::vector<float>& interleaved, int channels, int sample_rate,
                 SampleFormat format = SampleFormat::Default);

}  // namespace sonar::audio
