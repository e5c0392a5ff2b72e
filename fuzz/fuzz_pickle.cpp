// libFuzzer target: the pickle machine with torch's hooks (nn/pickle.cpp, nn/torch_checkpoint.cpp's
// unpickler), fed raw data.pkl bytes. Storage records are zero bytes of the size the pickle asks for, up to
// 1 MiB. Seeds: the data.pkl files of tests/fixtures (tests/fixtures/fuzz/pickle). Not the zip container:
// fuzz_torch_checkpoint.cpp. Only sonar::Error may escape the reader; anything else is a finding.
#include "fuzz/fuzz_util.h"
#include "nn/torch_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes = sonar::fuzz::bytes_of(data, size);
  constexpr uint64_t kMaxRecord = 1 << 20;
  const sonar::RecordReader records = [](const std::string& key, uint64_t need) {
    SONAR_CHECK(need <= kMaxRecord, "fuzz: record '", key, "' of ", need, " bytes is larger than the harness serves");
    return std::string(static_cast<size_t>(need), '\0');
  };
  try {
    const sonar::PyValue v = sonar::unpickle_torch(bytes, records, "fuzz.pkl");
    (void)v.repr();
    if (v.is_tensor()) sonar::fuzz::touch(v.as_tensor());
    for (const auto& [name, t] : sonar::state_dict_items(v)) sonar::fuzz::touch(t);
  } catch (const sonar::Error&) {
  }
  return 0;
}
