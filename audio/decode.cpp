// libsndfile decoding and encoding, mono mix-down and the .npy waveform reader (see decode.h). Not the
// resampler (resample.cpp) and not dataset logic.
#include "audio/decode.h"

#include <sndfile.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "tensor/error.h"
#include "tensor/io.h"

namespace sonar::audio {

namespace {

std::string lower_extension(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

// An open libsndfile handle that closes itself.
struct SndFile {
  SNDFILE* f = nullptr;
  SF_INFO info{};
  ~SndFile() {
    if (f) sf_close(f);
  }
};

// libsndfile's virtual I/O over bytes in memory (read only).
struct MemoryFile {
  const std::string* bytes;
  sf_count_t pos = 0;
};
sf_count_t mem_length(void* user) { return static_cast<sf_count_t>(static_cast<MemoryFile*>(user)->bytes->size()); }
sf_count_t mem_seek(sf_count_t offset, int whence, void* user) {
  auto* m = static_cast<MemoryFile*>(user);
  const sf_count_t size = static_cast<sf_count_t>(m->bytes->size());
  sf_count_t base = whence == SEEK_CUR ? m->pos : whence == SEEK_END ? size : 0;
  // Out-of-range seeks clamp (as a file would report EOF) instead of overflowing.
  if (offset < 0 && base < -offset) return -1;
  const sf_count_t target = offset > size - base ? size : base + offset;
  m->pos = target;
  return m->pos;
}
sf_count_t mem_read(void* dst, sf_count_t count, void* user) {
  auto* m = static_cast<MemoryFile*>(user);
  const sf_count_t size = static_cast<sf_count_t>(m->bytes->size());
  if (count <= 0 || m->pos >= size) return 0;
  const sf_count_t n = std::min(count, size - m->pos);
  std::memcpy(dst, m->bytes->data() + m->pos, static_cast<size_t>(n));
  m->pos += n;
  return n;
}
sf_count_t mem_write(const void*, sf_count_t, void*) { return 0; }
sf_count_t mem_tell(void* user) { return static_cast<MemoryFile*>(user)->pos; }

void check_header(const std::string& path, const SndFile& sf) {
  SONAR_CHECK(sf.info.channels > 0 && sf.info.samplerate > 0, path, ": invalid header (", sf.info.channels,
              " channels at ", sf.info.samplerate, " Hz)");
  SONAR_CHECK(sf.info.channels <= kMaxAudioChannels, path, ": ", sf.info.channels, " channels, more than ",
              kMaxAudioChannels, " (kMaxAudioChannels)");
}

// Returns the file's size in bytes.
uint64_t open_for_read(const std::string& path, SndFile& sf) {
  std::error_code ec;
  SONAR_CHECK(std::filesystem::exists(path, ec), path, ": no such file");
  SONAR_CHECK(!std::filesystem::is_directory(path, ec), path, ": is a directory, not an audio file");
  const uintmax_t size = std::filesystem::file_size(path, ec);
  SONAR_CHECK(size > 0 || ec, path, ": empty file (0 bytes)");
  sf.f = sf_open(path.c_str(), SFM_READ, &sf.info);
  SONAR_CHECK(sf.f != nullptr, path, ": cannot decode (libsndfile: ", sf_strerror(nullptr), ")");
  check_header(path, sf);
  return ec ? 0 : static_cast<uint64_t>(size);
}

std::string format_name(int format) {
  SF_FORMAT_INFO major{}, sub{};
  major.format = format & SF_FORMAT_TYPEMASK;
  sub.format = format & SF_FORMAT_SUBMASK;
  std::string s = sf_command(nullptr, SFC_GET_FORMAT_INFO, &major, sizeof(major)) == 0 && major.name
                      ? major.name
                      : "unknown container";
  if (sf_command(nullptr, SFC_GET_FORMAT_INFO, &sub, sizeof(sub)) == 0 && sub.name) s += std::string(" / ") + sub.name;
  return s;
}

void check_finite(const std::vector<float>& v, int channels, const std::string& path) {
  bool ok = true;
  for (float x : v) ok &= std::isfinite(x);
  if (ok) return;
  for (size_t i = 0; i < v.size(); ++i)
    SONAR_CHECK(std::isfinite(v[i]), path, ": sample ", i / channels, " (channel ", i % channels, ") is ", v[i],
                " (NaN or Inf)");
}

// libsndfile reads a WAV/AIFF-family file whose data chunk runs past the end of the file without an
// error: it shrinks the frame count and notes "data : N (should be M)" in its log. Such a file was cut short
// (an interrupted copy or download), so report it rather than silently use part of it. Streaming writers
// that leave the size unset (0 or 0xFFFFFFFF) are not flagged.
std::string truncation_note(SNDFILE* f) {
  std::string log(1 << 14, '\0');
  sf_command(f, SFC_GET_LOG_INFO, log.data(), static_cast<int>(log.size()));
  log.resize(log.find('\0') == std::string::npos ? log.size() : log.find('\0'));
  size_t pos = 0;
  while (pos < log.size()) {
    size_t end = log.find('\n', pos);
    if (end == std::string::npos) end = log.size();
    const std::string line = log.substr(pos, end - pos);
    pos = end + 1;
    if (line.rfind("data", 0) != 0 && line.rfind("SSND", 0) != 0) continue;
    unsigned long long declared = 0, actual = 0;
    const size_t colon = line.find(':');
    if (colon == std::string::npos || line.find("(should be") == std::string::npos) continue;
    if (std::sscanf(line.c_str() + colon + 1, " %llu (should be %llu)", &declared, &actual) != 2) continue;
    if (declared > actual && declared != 0xFFFFFFFFull && declared != 0x7FFFFFFFull)
      return "truncated: the data chunk announces " + std::to_string(declared) + " bytes but the file holds " +
             std::to_string(actual);
  }
  return "";
}

int container_for(const std::string& ext) {
  if (ext == ".wav") return SF_FORMAT_WAV;
  if (ext == ".flac") return SF_FORMAT_FLAC;
  if (ext == ".ogg" || ext == ".oga" || ext == ".opus") return SF_FORMAT_OGG;
  if (ext == ".mp3") return SF_FORMAT_MPEG;
  if (ext == ".aiff" || ext == ".aif") return SF_FORMAT_AIFF;
  if (ext == ".au") return SF_FORMAT_AU;
  if (ext == ".caf") return SF_FORMAT_CAF;
  if (ext == ".w64") return SF_FORMAT_W64;
  return 0;
}

int subtype_for(SampleFormat f, int container, const std::string& ext) {
  switch (f) {
    case SampleFormat::PCM16: return SF_FORMAT_PCM_16;
    case SampleFormat::PCM24: return SF_FORMAT_PCM_24;
    case SampleFormat::PCM32: return SF_FORMAT_PCM_32;
    case SampleFormat::PCMU8: return SF_FORMAT_PCM_U8;
    case SampleFormat::Float: return SF_FORMAT_FLOAT;
    case SampleFormat::Double: return SF_FORMAT_DOUBLE;
    case SampleFormat::Vorbis: return SF_FORMAT_VORBIS;
    case SampleFormat::Opus: return SF_FORMAT_OPUS;
    case SampleFormat::MP3: return SF_FORMAT_MPEG_LAYER_III;
    case SampleFormat::Default: break;
  }
  if (container == SF_FORMAT_OGG) return ext == ".opus" ? SF_FORMAT_OPUS : SF_FORMAT_VORBIS;
  if (container == SF_FORMAT_MPEG) return SF_FORMAT_MPEG_LAYER_III;
  return SF_FORMAT_PCM_16;
}

}  // namespace

bool has_npy_extension(const std::string& path) { return lower_extension(path) == ".npy"; }

Tensor load_wave_npy(const std::string& path) {
  Tensor t;
  try {
    t = load_npy(path);
  } catch (const Error& e) {
    const std::string msg = e.what();
    // io's messages already name the path; add it when they don't.
    if (msg.find(path) != std::string::npos) throw;
    SONAR_FAIL(path, ": ", msg);
  }
  SONAR_CHECK(t.dtype() == DType::Float32, path, ": expected float32 samples, got ", dtype_name(t.dtype()));
  SONAR_CHECK(t.dim() == 1 || t.dim() == 2, path, ": expected [samples] or [clips, samples], got shape ",
              shape_str(t.shape()));
  t = t.contiguous();
  const float* p = t.data<float>();
  const int64_t n = t.numel(), row = t.size(-1);
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(p[i]);
  if (!ok)
    for (int64_t i = 0; i < n; ++i)
      SONAR_CHECK(std::isfinite(p[i]), path, ": ", t.dim() == 2 ? "clip " + std::to_string(i / row) + ", " : "",
                  "sample ", i % row, " is ", p[i], " (NaN or Inf)");
  return t;
}

AudioInfo probe_audio(const std::string& path) {
  AudioInfo info;
  if (has_npy_extension(path)) {
    Tensor t = load_wave_npy(path);
    info.frames = t.size(-1);
    info.sample_rate = kBeatsSampleRate;
    info.channels = 1;
    info.format = "npy float32 (16 kHz)";
    return info;
  }
  SndFile sf;
  open_for_read(path, sf);
  info.frames = sf.info.frames;
  info.sample_rate = sf.info.samplerate;
  info.channels = sf.info.channels;
  info.format = format_name(sf.info.format);
  return info;
}

namespace {

// Decodes an open file; `file_bytes` is its real size (0 when unknown).
DecodedAudio decode_open(SndFile& sf, const std::string& path, uint64_t file_bytes) {
  DecodedAudio a;
  a.channels = sf.info.channels;
  a.sample_rate = sf.info.samplerate;
  const int64_t expected = sf.info.frames;
  // Read in blocks until the decoder stops, rather than trusting the header's frame count alone. The
  // header's count only sizes a reservation, and never beyond one sample per byte of the file (PCM needs
  // at least that many bytes; compressed formats grow the vector as they really decode).
  constexpr int64_t kBlockSamples = 1 << 16;
  const sf_count_t block_frames = std::max<sf_count_t>(1, kBlockSamples / a.channels);
  if (expected > 0 && expected <= static_cast<int64_t>(kMaxDecodedSamples) / a.channels)
    a.samples.reserve(std::min<uint64_t>(static_cast<uint64_t>(expected) * a.channels, file_bytes));
  std::vector<float> block(static_cast<size_t>(block_frames) * a.channels);
  int64_t total = 0;
  for (;;) {
    const sf_count_t got = sf_readf_float(sf.f, block.data(), block_frames);
    if (got <= 0) break;
    SONAR_CHECK(a.samples.size() + static_cast<size_t>(got) * a.channels <= kMaxDecodedSamples, path,
                ": decodes to more than ", kMaxDecodedSamples, " samples (kMaxDecodedSamples)");
    a.samples.insert(a.samples.end(), block.begin(), block.begin() + got * a.channels);
    total += got;
  }
  const int err = sf_error(sf.f);
  SONAR_CHECK(err == SF_ERR_NO_ERROR, path, ": decoding failed after ", total, " frames (libsndfile: ",
              sf_strerror(sf.f), ")");
  SONAR_CHECK(total > 0, path, ": no audio samples (", format_name(sf.info.format), ")");
  SONAR_CHECK(total >= expected, path, ": truncated or corrupt: decoded ", total, " of the ", expected,
              " frames its header announces");
  const std::string cut = truncation_note(sf.f);
  SONAR_CHECK(cut.empty(), path, ": ", cut);
  a.frames = total;
  check_finite(a.samples, a.channels, path);
  return a;
}

}  // namespace

DecodedAudio decode_audio(const std::string& path) {
  SndFile sf;
  const uint64_t bytes = open_for_read(path, sf);
  return decode_open(sf, path, bytes);
}

DecodedAudio decode_audio_memory(const std::string& bytes, const std::string& name) {
  SONAR_CHECK(!bytes.empty(), name, ": empty file (0 bytes)");
  SF_VIRTUAL_IO io{mem_length, mem_seek, mem_read, mem_write, mem_tell};
  MemoryFile mem{&bytes, 0};
  SndFile sf;
  sf.f = sf_open_virtual(&io, SFM_READ, &sf.info, &mem);
  SONAR_CHECK(sf.f != nullptr, name, ": cannot decode (libsndfile: ", sf_strerror(nullptr), ")");
  check_header(name, sf);
  return decode_open(sf, name, bytes.size());
}

std::vector<float> mix_to_mono(const DecodedAudio& a) {
  if (a.channels == 1) return a.samples;
  std::vector<float> mono(static_cast<size_t>(a.frames));
  const int c = a.channels;
  for (int64_t i = 0; i < a.frames; ++i) {
    double s = 0.0;
    for (int k = 0; k < c; ++k) s += a.samples[static_cast<size_t>(i) * c + k];
    mono[i] = static_cast<float>(s / c);
  }
  return mono;
}

Tensor load_audio(const std::string& path, int sample_rate, ResampleQuality quality) {
  SONAR_CHECK(sample_rate > 0, "load_audio: target sample rate must be positive, got ", sample_rate);
  if (has_npy_extension(path)) {
    Tensor t = load_wave_npy(path);
    if (t.dim() == 2) {
      SONAR_CHECK(t.size(0) == 1, path, ": holds ", t.size(0), " clips ([clips, samples]); one was expected");
      t = t.select(0, 0).contiguous();
    }
    SONAR_CHECK(t.numel() > 0, path, ": no audio samples");
    if (sample_rate == kBeatsSampleRate) return t;
    return resample(t, kBeatsSampleRate, sample_rate, quality);
  }
  DecodedAudio a = decode_audio(path);
  std::vector<float> mono = mix_to_mono(a);
  if (a.sample_rate != sample_rate) mono = resample(mono.data(), a.frames, a.sample_rate, sample_rate, quality);
  return from_vector(mono, {static_cast<int64_t>(mono.size())});
}

void write_audio(const std::string& path, const std::vector<float>& interleaved, int channels, int sample_rate,
                 SampleFormat format) {
  SONAR_CHECK(channels > 0 && sample_rate > 0, path, ": cannot write ", channels, " channels at ", sample_rate, " Hz");
  SONAR_CHECK(interleaved.size() % channels == 0, path, ": ", interleaved.size(),
              " samples do not divide into ", channels, " channels");
  const std::string ext = lower_extension(path);
  const int container = container_for(ext);
  SONAR_CHECK(container != 0, path, ": unknown audio extension '", ext,
              "' (use .wav .flac .ogg .opus .mp3 .aiff .au .caf .w64)");
  SF_INFO info{};
  info.samplerate = sample_rate;
  info.channels = channels;
  info.format = container | subtype_for(format, container, ext);
  SONAR_CHECK(sf_format_check(&info), path, ": libsndfile cannot write ", format_name(info.format), " with ",
              channels, " channels at ", sample_rate, " Hz");
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  {
    SndFile sf;
    sf.f = sf_open(tmp.c_str(), SFM_WRITE, &info);
    SONAR_CHECK(sf.f != nullptr, path, ": cannot create (libsndfile: ", sf_strerror(nullptr), ")");
    const sf_count_t frames = static_cast<sf_count_t>(interleaved.size() / channels);
    const sf_count_t wrote = frames ? sf_writef_float(sf.f, interleaved.data(), frames) : 0;
    const bool ok = wrote == frames && sf_error(sf.f) == SF_ERR_NO_ERROR;
    const std::string why = ok ? "" : sf_strerror(sf.f);
    sf_close(sf.f);
    sf.f = nullptr;
    if (!ok) {
      std::remove(tmp.c_str());
      SONAR_FAIL(path, ": writing failed (libsndfile: ", why, ")");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    SONAR_FAIL(path, ": cannot rename the finished file into place: ", ec.message());
  }
}

}  // namespace sonar::audio
