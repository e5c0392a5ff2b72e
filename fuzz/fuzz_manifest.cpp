// libFuzzer target: dataset manifests and file lists from memory (audio/dataset.cpp: the CSV/TSV parser,
// header detection, label splitting, path resolution). The first byte picks the reader and its options.
// Seeds: tests/fixtures/fuzz/manifest. Only sonar::Error may escape.
#include "audio/dataset.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text = sonar::fuzz::bytes_of(data + 1, size - 1);
  try {
    sonar::audio::Dataset d;
    switch (data[0] % 4) {
      case 0: d = sonar::audio::parse_manifest(text, "fuzz/manifest.csv"); break;
      case 1: d = sonar::audio::parse_manifest(text, "fuzz/manifest.tsv"); break;
      case 2: {
        sonar::audio::ManifestOptions o;  // AudioSet style: labels in quotes, a path template
        o.label_columns = {"positive_labels"};
        o.path_template = "audio/{}.wav";
        d = sonar::audio::parse_manifest(text, "fuzz/segments.csv", o);
        break;
      }
      default: d = sonar::audio::parse_file_list(text, "fuzz/list.txt"); break;
    }
    for (int64_t i = 0; i < d.size(); ++i) (void)d.label_index(i);
  } catch (const sonar::Error&) {
  }
  return 0;
}
