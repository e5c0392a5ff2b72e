// libFuzzer target: safetensors from memory (tensor/io.cpp: the length, the JSON header, the offsets).
// Seeds: tests/fixtures/fuzz/safetensors. Only sonar::Error may escape.
#include "fuzz/fuzz_util.h"
#include "tensor/io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const sonar::SafeTensorsFile f = sonar::load_safetensors_bytes(sonar::fuzz::bytes_of(data, size), "fuzz.safetensors");
    for (const auto& [name, t] : f.tensors) sonar::fuzz::touch(t);
  } catch (const sonar::Error&) {
  }
  return 0;
}
