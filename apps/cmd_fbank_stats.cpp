// `sonar fbank-stats`: the mean and standard deviation of fbank values over a dataset (folder, manifest or
// file list), for normalising a new domain the way BEATs normalises AudioSet. Thin: flags, progress, output;
// the work is audio/dataset and audio/loader.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>

#include "apps/command.h"
#include "audio/dataset.h"
#include "audio/loader.h"
#include "tensor/error.h"
#include "tensor/io.h"

namespace {

const char* kUsage = R"(usage: sonar fbank-stats --source SRC [--split NAMES] [--max-seconds S] [--limit N] [--seed N]
                         [--path-column C] [--path-template T] [--label-column C] [--audio-dir D]
                         [--strict] [--workers N] [--cache DIR] [--output stats.json]

Computes the mean and standard deviation of every fbank value (128-bin Kaldi fbank of the waveform times 2^15, as
BEATs uses; padding excluded) over a dataset, to use as `--mean M --std S` when normalising features of a new
domain: normalised = (fbank - mean) / (2 * std). BEATs' AudioSet values are mean 15.41663, std 6.55582.

  --source SRC        a folder (audio files in it and below), a .csv/.tsv manifest (path column; paths relative
                      to the manifest), or a text file listing one audio path per line
  --split NAMES       only items whose split/fold column is one of these (comma-separated, e.g. train or 1,2,3)
  --max-seconds S     use at most the first S seconds of each clip (default: whole clips)
  --limit N           use N clips drawn at random (seeded) instead of all of them
  --seed N            seed for --limit (default 0)
  --path-column C     manifest column holding the audio path (default: path, filename, file, ... or YTID)
  --path-template T   build paths from that column, "{}" standing for its value, e.g. "audio/{}.flac"
  --label-column C    manifest label column (labels are not needed here; this only affects parsing checks)
  --audio-dir D       folder that relative manifest/list paths are resolved against (default: the manifest's)
  --strict            stop at the first unreadable, corrupt, empty, too short or NaN-bearing file (default:
                      report it on stderr, skip it and count it)
  --workers N         background loading threads (default 2)
  --cache DIR         on-disk fbank cache (reused by training runs with the same settings)
  --output FILE       also write {"mean":..,"std":..,"clips":..,"frames":..,"skipped":..} as JSON
  --help              this text
)";

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

int run_fbank_stats(int argc, char** argv) {
  using namespace sonar;
  app::Args args(argc, argv,
                 {"source", "split", "max-seconds", "limit", "seed", "path-column", "path-template", "label-column",
                  "audio-dir", "workers", "cache", "output"},
                 {"strict"});
  if (args.help()) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  SONAR_CHECK(args.positional().empty(), "unexpected argument '", args.positional().front(), "' (see --help)");
  const std::string source = args.require("source");
  audio::ManifestOptions mo;
  mo.path_column = args.get("path-column");
  mo.path_template = args.get("path-template");
  if (args.has("label-column")) mo.label_columns = {args.get("label-column")};
  mo.audio_dir = args.get("audio-dir");
  audio::Dataset ds = audio::read_source(source, {}, mo);
  if (args.has("split")) ds = audio::select_split(ds, split_commas(args.get("split")));
  const long long limit = args.get_int("limit", -1);
  const uint64_t seed = static_cast<uint64_t>(args.get_int("seed", 0));
  if (limit >= 0 && limit < ds.size()) {
    auto order = audio::shuffled_indices(ds.size(), seed);
    order.resize(static_cast<size_t>(limit));
    std::sort(order.begin(), order.end());
    ds = ds.subset(order);
  }
  SONAR_CHECK(ds.size() > 0, source, ": no audio files", args.has("split") ? " in the selected splits" : "");

  audio::LoaderOptions lo;
  lo.batch_size = 4;
  lo.shuffle = false;
  lo.crop = audio::CropMode::Full;
  lo.clip_seconds = args.get_double("max-seconds", 0.0);
  SONAR_CHECK(lo.clip_seconds >= 0, "--max-seconds must be >= 0");
  lo.normalize = false;
  lo.keep_waveforms = false;
  lo.strict = args.has("strict");
  lo.num_workers = static_cast<int>(args.get_int("workers", 2));
  SONAR_CHECK(lo.num_workers >= 0, "--workers must be >= 0");
  lo.cache_dir = args.get("cache");

  // Chan et al.'s pairwise merge of (count, mean, M2): stable over billions of values.
  double count = 0, mean = 0, m2 = 0;
  int64_t clips = 0, frames = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto last = t0;
  audio::DataLoader dl(ds, lo);
  while (auto b = dl.next()) {
    const int64_t B = b->size(), T = b->fbank.size(1), F = b->fbank.size(2);
    const float* fb = b->fbank.data<float>();
    const uint8_t* fm = b->frame_mask.bytes();
    for (int64_t i = 0; i < B; ++i) {
      double n = 0, s = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (fm[i * T + t]) continue;
        for (int64_t f = 0; f < F; ++f) s += fb[(i * T + t) * F + f];
        n += F;
        ++frames;
      }
      if (n == 0) continue;
      const double mb = s / n;
      double m2b = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (fm[i * T + t]) continue;
        for (int64_t f = 0; f < F; ++f) {
          const double d = fb[(i * T + t) * F + f] - mb;
          m2b += d * d;
        }
      }
      const double tot = count + n, delta = mb - mean;
      mean += delta * n / tot;
      m2 += m2b + delta * delta * count * n / tot;
      count = tot;
    }
    clips += B;
    const auto now = std::chrono::steady_clock::now();
    if (now - last > std::chrono::seconds(5)) {
      const double secs = std::chrono::duration<double>(now - t0).count();
      const int64_t done = clips + dl.stats().clips_skipped;
      std::fprintf(stderr, "fbank-stats: %lld/%lld clips, %.1f clips/s, about %.0f s left\n",
                   static_cast<long long>(done), static_cast<long long>(ds.size()), done / secs,
                   (ds.size() - done) / std::max(done / secs, 1e-9));
      last = now;
    }
  }
  const audio::LoaderStats st = dl.stats();
  SONAR_CHECK(count > 0, source, ": no usable audio (", st.clips_skipped, " files skipped)");
  const double std_dev = std::sqrt(m2 / count);
  std::printf("mean %.5f std %.5f over %lld clips, %lld frames (%lld skipped)\n", mean, std_dev,
              static_cast<long long>(clips), static_cast<long long>(frames),
              static_cast<long long>(st.clips_skipped));
  std::printf("use: --mean %.5f --std %.5f\n", mean, std_dev);
  if (args.has("output")) {
    char json[512];
    std::snprintf(json, sizeof json,
                  "{\"mean\": %.9g, \"std\": %.9g, \"clips\": %lld, \"frames\": %lld, \"skipped\": %lld}\n", mean,
                  std_dev, static_cast<long long>(clips), static_cast<long long>(frames),
                  static_cast<long long>(st.clips_skipped));
    write_file_atomic(args.get("output"), json);
  }
  return 0;
}

}  // namespace

SONAR_COMMAND("fbank-stats", "Mean and std of fbank values over a dataset (for normalisation)", kUsage,
              run_fbank_stats);
