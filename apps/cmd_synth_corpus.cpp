// `sonar synth-corpus`: writes the synthetic labelled corpus (audio/synth_corpus.h) into a folder and prints
// its per-class counts. Thin: parses flags and calls the library. It downloads nothing; the recorded Debian
// benchmark is built by scripts/build-benchmark.sh instead.
#include <cstdio>
#include <string>

#include "apps/command.h"
#include "audio/synth_corpus.h"
#include "tensor/error.h"

namespace {

std::string usage() {
  std::string u =
      "usage: sonar synth-corpus --out DIR [--clips-per-class N] [--clips-per-group N] [--prior-clips N]\n"
      "                          [--seconds S] [--seed N] [--sample-rate HZ] [--float] [--force]\n\n"
      "Writes a synthetic labelled corpus (no downloads, seconds to build): 16 kHz mono WAV files under DIR and\n"
      "one CSV manifest per task (path,label,split,group,source,license), prior.csv (a multi-label pool of\n"
      "mixtures) and tasks.csv. Splits are train/val/test by group (clips of one group share a source).\n"
      "Re-running with the same flags finds the stamp and writes nothing.\n\n"
      "  --out DIR             output folder (created)\n"
      "  --clips-per-class N   clips per class, >= 3 (default 20)\n"
      "  --clips-per-group N   clips sharing one source, the leakage unit (default 2)\n"
      "  --prior-clips N       size of the prior pool (default 4 x clips-per-class)\n"
      "  --seconds S           clip length in seconds (default 2)\n"
      "  --seed N              corpus seed (default 0); the same seed gives byte-identical files\n"
      "  --sample-rate HZ      default 16000\n"
      "  --float               32-bit float WAV instead of 16-bit PCM\n"
      "  --force               rebuild even if up to date\n\ndomains:\n";
  for (const auto& d : sonar::audio::synth_domains()) {
    u += "  " + d.name + ": " + d.structure + "\n    classes:";
    for (const auto& c : d.classes) u += " " + c;
    u += "\n";
  }
  return u;
}

int run(int argc, char** argv) {
  sonar::app::Args args(argc, argv,
                        {"out", "clips-per-class", "clips-per-group", "prior-clips", "seconds", "seed", "sample-rate"},
                        {"float", "force"});
  if (args.help()) {
    std::printf("%s", usage().c_str());
    return 0;
  }
  SONAR_CHECK(args.positional().empty(), "unexpected argument '", args.positional().empty() ? "" : args.positional()[0],
              "' (see --help)");
  sonar::audio::SynthCorpusOptions o;
  std::string out = args.require("out");
  o.clips_per_class = args.get_int("clips-per-class", o.clips_per_class);
  o.clips_per_group = args.get_int("clips-per-group", o.clips_per_group);
  o.prior_clips = args.get_int("prior-clips", o.prior_clips);
  o.seconds = args.get_double("seconds", o.seconds);
  long long seed = args.get_int("seed", 0);
  SONAR_CHECK(seed >= 0, "--seed must be >= 0, got ", seed);
  o.seed = static_cast<uint64_t>(seed);
  long long sr = args.get_int("sample-rate", o.sample_rate);
  SONAR_CHECK(sr >= 8000 && sr <= 96000, "--sample-rate must be in [8000, 96000], got ", sr);
  o.sample_rate = static_cast<int>(sr);
  o.float_wav = args.has("float");
  o.force = args.has("force");

  auto res = sonar::audio::build_synth_corpus(out, o, [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  });
  std::printf("%-10s %-14s %7s %7s %7s\n", "task", "label", "train", "val", "test");
  for (const auto& [manifest, labels] : res.counts) {
    for (const auto& [label, splits] : labels) {
      auto get = [&](const char* s) {
        auto it = splits.find(s);
        return it == splits.end() ? 0LL : static_cast<long long>(it->second);
      };
      std::printf("%-10s %-14s %7lld %7lld %7lld\n", manifest.c_str(), label.c_str(), get("train"), get("val"),
                  get("test"));
    }
  }
  std::printf("%s: %lld clips written; manifests:", out.c_str(), static_cast<long long>(res.clips_written));
  for (const auto& m : res.manifests) std::printf(" %s", m.c_str());
  std::printf("\n");
  return 0;
}

}  // namespace

SONAR_COMMAND("synth-corpus", "write a synthetic labelled audio corpus (no downloads) with CSV manifests", usage(),
              run);
