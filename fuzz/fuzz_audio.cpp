// libFuzzer target: audio decoding from memory (audio/decode.cpp over libsndfile's virtual I/O: WAV, FLAC,
// OGG/Vorbis/Opus, MP3, AIFF, ...), then the mono mix-down. Seeds: tests/fixtures/fuzz/audio. libsndfile
// itself is Debian's (not instrumented): the target checks our use of it. Only sonar::Error may escape.
#include "audio/decode.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const sonar::audio::DecodedAudio a = sonar::audio::decode_audio_memory(sonar::fuzz::bytes_of(data, size), "fuzz.audio");
    (void)sonar::audio::mix_to_mono(a);
  } catch (const sonar::Error&) {
  }
  return 0;
}
