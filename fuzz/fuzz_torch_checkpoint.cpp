// libFuzzer target: a whole PyTorch .pt file from memory (tensor/zip_reader.cpp over libzip, then the
// unpickler and the storage records). Seeds: the .pt files of tests/fixtures. The pickle machine alone is
// fuzz_pickle.cpp (mutations rarely survive the zip's CRC). Only sonar::Error may escape.
#include "fuzz/fuzz_util.h"
#include "nn/torch_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes = sonar::fuzz::bytes_of(data, size);
  try {
    const sonar::PyValue v = sonar::load_torch_checkpoint_bytes(bytes, "fuzz.pt");
    (void)v.repr();
    for (const auto& [name, t] : sonar::state_dict_items(v)) sonar::fuzz::touch(t);
  } catch (const sonar::Error&) {
  }
  return 0;
}
