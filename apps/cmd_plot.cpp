// `sonar plot RUN_DIR`: one pre-training run's curves from its metrics.jsonl as an SVG file (loss terms, masked
// accuracy, codebook size and perplexity, replay share, learning rate, gradient norm; whichever the run logged),
// written atomically. Thin: reads the log with sonar/experiment.h and draws with sonar/plot.h. Not the
// experiment figures (`sonar experiment` writes those).
#include <cstdio>
#include <filesystem>
#include <string>

#include "apps/command.h"
#include "sonar/experiment.h"
#include "sonar/trainer.h"
#include "tensor/error.h"
#include "tensor/io.h"

namespace {

namespace fs = std::filesystem;

std::string usage() {
  return "usage: sonar plot RUN_DIR [--output FILE]\n\n"
         "Draws the training curves of a `sonar pretrain` run from RUN_DIR/metrics.jsonl: one panel each for the\n"
         "loss terms, the accuracies, codebook health, replay, the learning rate and the gradient norm (panels\n"
         "with nothing logged are left out). Open the SVG in a browser.\n\n"
         "  --output FILE   where to write the SVG (default RUN_DIR/curves.svg)\n";
}

int run(int argc, char** argv) {
  sonar::app::Args args(argc, argv, {"output"}, {});
  if (args.help()) {
    std::printf("%s", usage().c_str());
    return 0;
  }
  SONAR_CHECK(args.positional().size() == 1, "give one run folder (see --help)");
  const std::string dir = args.positional()[0];
  const std::string metrics = (fs::path(dir) / sonar::method::kMetricsFile).string();
  SONAR_CHECK(fs::exists(metrics), dir, " has no ", sonar::method::kMetricsFile, " (is it a `sonar pretrain` run folder?)");
  const sonar::method::MetricsLog log = sonar::method::read_metrics(metrics);
  SONAR_CHECK(!log.keys.empty(), metrics, ": no logged step yet");
  const std::string out = args.get("output", (fs::path(dir) / "curves.svg").string());
  sonar::write_file_atomic(out, sonar::method::run_curves_svg(log, "training curves: " + dir));
  std::printf("wrote %s (%zu curves)\n", out.c_str(), log.keys.size());
  return 0;
}

}  // namespace

SONAR_COMMAND("plot", "draw a pre-training run's curves (metrics.jsonl) as an SVG file", usage(), run);
