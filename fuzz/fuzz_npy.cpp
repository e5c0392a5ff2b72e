// libFuzzer target: .npy and .npz from memory (tensor/io.cpp; .npz entries through tensor/zip_reader.cpp).
// The first byte picks the reader (even: .npy, odd: .npz) so one corpus serves both. Seeds: the .npy and
// .npz files of tests/fixtures. Only sonar::Error may escape.
#include "fuzz/fuzz_util.h"
#include "tensor/io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string bytes = sonar::fuzz::bytes_of(data + 1, size - 1);
  try {
    if (data[0] % 2 == 0) {
      sonar::fuzz::touch(sonar::load_npy_bytes(bytes, "fuzz.npy"));
    } else {
      for (const auto& [name, t] : sonar::load_npz_bytes(bytes, "fuzz.npz")) sonar::fuzz::touch(t);
    }
  } catch (const sonar::Error&) {
  }
  return 0;
}
