// `sonar start-model`: the start model of an experiment, made once and reused by every grid that names it:
// BEATs' pre-training chain on a prior pool (random-projection targets -> model -> distilled tokenizer ->
// model; sonar/start_model.h). Thin: parses flags and calls the library.
#include <cstdio>
#include <sstream>
#include <string>

#include "apps/command.h"
#include "apps/run_flags.h"
#include "sonar/start_model.h"
#include "sonar/trainer.h"
#include "tensor/error.h"

#include <omp.h>

namespace {

std::string usage() {
  const sonar::method::StartModelOptions d;
  std::ostringstream u;
  u << "usage: sonar start-model --data PRIOR --out DIR [--preset tiny|small|base] [--splits train,val]\n"
       "                          [--projection-steps N] [--projection-lr LR] [--tokenizer-steps N] [--steps N]\n"
       "                          [--lr LR] [--batch B] [--crop-seconds S] [--seed S] [--threads N]\n\n"
       "Pre-trains the start model of a continual pre-training experiment on a prior pool, as BEATs does, in\n"
       "three stages (run folders under DIR):\n"
       "  1-random-projection   a fresh model, trained on a random-projection tokenizer's labels\n"
       "  2-tokenizer           a tokenizer distilled from the stage-1 model (sonar train-tokenizer)\n"
       "  3-tokenizer-targets   the stage-1 model trained further on the stage-2 tokenizer's labels\n"
       "A plan's \"start\" names DIR/3-tokenizer-targets/checkpoint.safetensors and tokenizer.safetensors;\n"
       "DIR/start-model.json records the settings and each stage's training time. A finished stage is\n"
       "reused and an interrupted one resumes: the same command finishes an interrupted chain. Ctrl-C saves a\n"
       "checkpoint and exits with status 130.\n\n"
       "  --data PRIOR          the prior pool: a manifest, a folder or a list (labels are ignored)\n"
       "  --out DIR             output folder\n"
       "  --preset NAME         model and tokenizer size: tiny, small or base (default " << d.preset << ")\n"
       "  --splits LIST         rows trained on (default train,val; the test rows are kept for probes)\n"
       "  --projection-steps N  stage 1 steps (default " << d.projection_steps << ")\n"
       "  --projection-lr LR    stage 1 peak learning rate (default " << d.projection_lr << ")\n"
       "  --tokenizer-steps N   stage 2 steps (default " << d.tokenizer_steps << ")\n"
       "  --steps N             stage 3 steps (default " << d.steps << ")\n"
       "  --lr LR               stage 3 peak learning rate (default " << d.lr << ")\n"
       "  --batch B             clips per step, every stage (default " << d.batch_size << ")\n"
       "  --crop-seconds S      training window per clip (default " << d.crop_seconds << ")\n"
       "  --seed S              seed of every stage (default 0)\n"
       "  --threads N           compute threads (default: OpenMP's)\n";
  return u.str();
}

int run(int argc, char** argv) {
  sonar::app::Args args(argc, argv,
                        {"data", "out", "preset", "splits", "projection-steps", "projection-lr", "tokenizer-steps",
                         "steps", "lr", "batch", "crop-seconds", "seed", "threads"},
                        {});
  if (args.help()) {
    std::printf("%s", usage().c_str());
    return 0;
  }
  SONAR_CHECK(args.positional().empty(), "unexpected argument '", args.positional().empty() ? "" : args.positional()[0],
              "' (see --help)");
  sonar::method::StartModelOptions o;
  o.data = args.require("data");
  o.out_dir = args.require("out");
  o.preset = args.get("preset", o.preset);
  if (args.has("splits")) o.splits = sonar::app::split_list(args.get("splits"));
  o.projection_steps = args.get_int("projection-steps", o.projection_steps);
  o.projection_lr = args.get_double("projection-lr", o.projection_lr);
  o.tokenizer_steps = args.get_int("tokenizer-steps", o.tokenizer_steps);
  o.steps = args.get_int("steps", o.steps);
  o.lr = args.get_double("lr", o.lr);
  o.batch_size = args.get_int("batch", o.batch_size);
  SONAR_CHECK(o.batch_size >= 1, "--batch must be at least 1, got ", o.batch_size);
  o.crop_seconds = args.get_double("crop-seconds", o.crop_seconds);
  SONAR_CHECK(o.crop_seconds > 0, "--crop-seconds must be positive, got ", o.crop_seconds);
  const long long seed = args.get_int("seed", 0);
  SONAR_CHECK(seed >= 0, "--seed must be >= 0, got ", seed);
  o.seed = static_cast<uint64_t>(seed);
  const long long threads = args.get_int("threads", 0);
  SONAR_CHECK(threads >= 0, "--threads must be >= 0, got ", threads);
  o.num_threads = static_cast<int>(threads);

  sonar::app::StopOnSignal stop_on_signal("sonar start-model");
  o.stop = stop_on_signal.flag();
  const auto r = sonar::method::make_start_model(o);
  if (!r.finished) {
    std::printf("stopped; run the same command again to resume\n");
    return 130;
  }
  std::printf("plan entry: \"start\": {\"model\": \"%s\", \"tokenizer\": \"%s\"}\n", r.model.c_str(), r.tokenizer.c_str());
  return 0;
}

}  // namespace

SONAR_COMMAND("start-model", "pre-train the start model of an experiment on a prior pool (three stages, resumable)",
              usage(), run);
