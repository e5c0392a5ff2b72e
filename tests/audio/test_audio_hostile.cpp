// Hostile manifests and audio files, built on the fly: a manifest of 1 GiB (sparse) refused before it is
// read, rows with too many fields, a cell of 10^5 labels (no quadratic dedup), WAV headers that claim 1000
// channels or far more data than they hold; and decoding from memory (libsndfile's virtual I/O) against
// decoding the same file from disk. Not here: well-formed datasets and decoding (test_dataset.cpp,
// test_decode.cpp).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "audio/dataset.h"
#include "audio/decode.h"
#include "tensor/io.h"
#include "tests/hostile_util.h"
#include "tests/test_util.h"

using namespace sonar;
using namespace sonar::audio;
using testutil::expect_error;
using testutil::TempDir;

// Refusing any of these files must not raise the peak resident memory by more than this.
constexpr double kHostileMaxGrowthMb = 8.0;

namespace {

// A canonical 44-byte PCM WAV header followed by `data`; `data_bytes` is what the header claims.
std::string wav(int channels, int rate, uint32_t data_bytes, const std::string& data) {
  using testutil::le_bytes;
  const int block = 2 * channels;
  return "RIFF" + le_bytes(36 + data_bytes, 4) + "WAVEfmt " + le_bytes(16, 4) + le_bytes(1, 2) +
         le_bytes(channels, 2) + le_bytes(rate, 4) + le_bytes(static_cast<uint64_t>(rate) * block, 4) +
         le_bytes(block, 2) + le_bytes(16, 2) + "data" + le_bytes(data_bytes, 4) + data;
}

}  // namespace

TEST(HostileManifest, OversizedManifestIsRefusedBeforeReading) {
  TempDir dir;
  const std::string path = dir.file("huge.csv");
  write_file_atomic(path, "path,label\na.wav,x\n");
  std::filesystem::resize_file(path, kMaxManifestBytes + 1);
  testutil::expect_peak_growth_below(kHostileMaxGrowthMb, "manifest of 1 GiB", [&] {
    expect_error([&] { read_manifest(path); }, {"huge.csv", "1073741825 bytes", "kMaxManifestBytes"});
  });
  expect_error([&] { read_source(path); }, {"huge.csv", "kMaxManifestBytes"});
}

TEST(HostileManifest, TooManyFieldsAndManyLabels) {
  std::string wide = "path";
  for (size_t c = 0; c < kMaxManifestColumns + 5; ++c) wide += ",c" + std::to_string(c);
  expect_error([&] { parse_manifest(wide + "\n", "wide.csv"); }, {"wide.csv", "line 1", "kMaxManifestColumns"});
  // One cell holding 10^5 distinct labels (and each twice): all kept once, in order.
  std::string cell;
  for (int i = 0; i < 100000; ++i) cell += "l" + std::to_string(i) + ";l" + std::to_string(i) + ";";
  const Dataset d = parse_manifest("path,label\na.wav,\"" + cell + "\"\n", "many.csv");
  ASSERT_EQ(d.size(), 1);
  ASSERT_EQ(d.items[0].labels.size(), 100000u);
  EXPECT_EQ(d.items[0].labels[99999], "l99999");
  EXPECT_EQ(d.num_classes(), 100000);
}

TEST(HostileAudio, DecodingFromMemoryMatchesDecodingTheFile) {
  TempDir dir;
  std::vector<float> stereo;
  for (int i = 0; i < 3000; ++i) {
    stereo.push_back(0.5f * std::sin(0.01f * i));
    stereo.push_back(-0.25f * std::cos(0.02f * i));
  }
  for (const char* name : {"a.wav", "a.flac", "a.ogg"}) {
    write_audio(dir.file(name), stereo, 2, 22050);
    const DecodedAudio disk = decode_audio(dir.file(name));
    const DecodedAudio mem = decode_audio_memory(read_file(dir.file(name)), name);
    EXPECT_EQ(mem.frames, disk.frames) << name;
    EXPECT_EQ(mem.channels, 2) << name;
    EXPECT_EQ(mem.sample_rate, 22050) << name;
    EXPECT_EQ(mem.samples, disk.samples) << name;  // the same decoder on the same bytes: bit-identical
  }
  expect_error([&] { decode_audio_memory("", "empty.wav"); }, {"empty.wav", "empty"});
  expect_error([&] { decode_audio_memory("not audio at all, just text", "text.wav"); }, {"text.wav", "cannot decode"});
}

TEST(HostileAudio, LyingWavHeadersAreRefusedWithinBoundedMemory) {
  // 1000 channels: within libsndfile's limit, past ours.
  expect_error([&] { decode_audio_memory(wav(1000, 16000, 4000, std::string(4000, '\0')), "chan.wav"); },
               {"chan.wav", "1000 channels", "kMaxAudioChannels"});
  // A data chunk claiming 2 GB for 64 bytes: libsndfile notes the shortfall, nothing large is reserved.
  const std::string lie = wav(1, 16000, 0x7ffffff0u, std::string(64, '\x01'));
  testutil::expect_peak_growth_below(kHostileMaxGrowthMb, "WAV claiming 2 GB of samples", [&] {
    expect_error([&] { decode_audio_memory(lie, "lie.wav"); }, {"lie.wav", "truncated"});
  });
}

// Inputs found by fuzz_audio (tests/fixtures/fuzz/regressions/): each gives one error naming it.
// audio_vorbis_leak.ogg: a corrupt OGG/Vorbis stream that libsndfile rejects (leaking inside libvorbis,
// which fuzz/lsan.supp suppresses; our side must still report it and free everything it owns).
TEST(HostileAudio, FuzzFindingsGiveOneErrorNamingTheInput) {
  const std::string dir = std::string(SONAR_FIXTURES_DIR) + "/fuzz/regressions/";
  for (const char* name : {"audio_vorbis_leak.ogg"}) {
    const std::string path = dir + name;
    expect_error([&] { decode_audio_memory(read_file(path), path); }, {name});
    expect_error([&] { decode_audio(path); }, {name});
  }
}
