// `sonar experiment`: a grid of continual pre-training runs (new domains x seeds x methods, the start model
// included), each model linear-probed on every task, with results tables and SVG figures (sonar/experiment.h).
// `--preset demo` builds the built-in setting first: the synthetic corpus, the start model's pre-training chain
// on the prior pool (random-projection targets -> model -> trained tokenizer -> model), then DCPT and SONAR on
// one new domain with two seeds. Thin: parses flags, prepares the demo's inputs and calls the library. Not the
// training loop or the method.
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "apps/command.h"
#include "apps/run_flags.h"
#include "audio/synth_corpus.h"
#include "sonar/experiment.h"
#include "sonar/method.h"
#include "sonar/tokenizer_trainer.h"
#include "sonar/trainer.h"
#include "tensor/error.h"
#include "tensor/io.h"

#include <omp.h>

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- the demo preset: the built-in setting, documented in docs/results.md ----

struct DemoSettings {
  // Music: the start model's probe has room to improve there (macro-F1 0.68; 0.88-1.0 on the other domains),
  // so the demo measures adaptation as well as forgetting. docs/results.md has all four domains.
  std::string domain = "music";
  std::vector<uint64_t> seeds = {0, 1};
  int64_t clips_per_class = 100;
  // The prior pool: 1200 mixtures, 180 of them in its test split. With the 60 a default-sized pool gives, a
  // clip moves the fine prior mAP by about 0.01 and the probe's noise hides the forgetting being measured.
  int64_t prior_clips = 1200;
  double seconds = 2.0;
  // The start model must know its prior pool well: a short or low-rate pre-training leaves it so undertrained
  // that any further training, on any domain, improves every probe (docs/results.md).
  int64_t prior_steps = 800;      // stage 1: random-projection targets
  double prior_lr = 1e-3;
  int64_t tokenizer_steps = 200;  // stage 2: the tokenizer distilled from the stage-1 model
  int64_t start_steps = 700;      // stage 3: the start model, trained on the stage-2 tokenizer's labels
  double start_lr = 3e-3;
  // Continual pre-training on the new domain. A high peak rate stands in for a long continual pre-training in
  // a demo of minutes; DCPT and SONAR share every training setting (no SONAR flag is tuned).
  int64_t steps = 1000;
  double lr = 2e-2;
  int64_t batch = 16;
  double crop = 2.0;
  int threads = 0;
};

void log_line(const std::string& s) {
  std::printf("%s\n", s.c_str());
  std::fflush(stdout);
}

// A pre-training stage of the start chain; a finished one is reused, an interrupted one resumes. False when
// stopped by the flag (a checkpoint was saved).
bool pretrain_stage(const std::string& dir, const std::string& data, const std::string& init,
                    const std::string& tokenizer, int64_t steps, double lr, const DemoSettings& s,
                    std::atomic<bool>* stop) {
  if (fs::exists(fs::path(dir) / sonar::method::kModelFile)) {
    log_line(dir + ": finished earlier, reused");
    return true;
  }
  sonar::method::PretrainOptions o;
  o.data = data;
  o.splits = {"train", "val"};
  o.out_dir = dir;
  o.init = init;
  o.tokenizer = tokenizer;
  o.steps = steps;
  o.batch_size = s.batch;
  o.crop_seconds = s.crop;
  o.adamw.lr = static_cast<float>(lr);
  o.seed = 0;
  o.log_every = 50;
  o.save_every = 100;
  o.num_threads = s.threads;
  o.stop = stop;
  o.log = [](const std::string& l) { log_line("  " + l); };
  return sonar::method::pretrain(o).finished;
}

// Stage 2: `sonar train-tokenizer` from the stage-1 model; a finished one is reused. Returns the tokenizer file,
// or nothing when stopped by the flag.
std::optional<std::string> tokenizer_stage(const std::string& dir, const std::string& data, const std::string& teacher,
                            const DemoSettings& s, std::atomic<bool>* stop) {
  const std::string file = (fs::path(dir) / sonar::method::kTokenizerFile).string();
  if (fs::exists(file)) {
    log_line(dir + ": finished earlier, reused");
    return file;
  }
  sonar::method::TokenizerTrainOptions o;
  o.teacher = teacher;
  o.data = data;
  o.splits = {"train", "val"};
  o.out_dir = dir;
  o.steps = s.tokenizer_steps;
  o.batch_size = s.batch;
  o.crop_seconds = s.crop;
  o.seed = 0;
  o.log_every = 50;
  o.num_threads = s.threads;
  o.stop = stop;
  o.log = [](const std::string& l) { log_line("  " + l); };
  const auto r = sonar::method::train_tokenizer(o);
  if (!r.finished) return std::nullopt;
  SONAR_CHECK(fs::exists(file), "sonar train-tokenizer finished without writing ", file);
  return file;
}

// Writes the corpus and the start model, and returns the plan of the demo grid; nothing when stopped by the flag
// (the interrupted stage saved a checkpoint and resumes on the next call).
std::optional<json> prepare_demo(const std::string& out_arg, const DemoSettings& s, std::atomic<bool>* stop) {
  const std::string out = fs::absolute(out_arg).lexically_normal().string();  // the plan holds absolute paths
  const std::string corpus = (fs::path(out) / "corpus").string();
  sonar::audio::SynthCorpusOptions co;
  co.clips_per_class = s.clips_per_class;
  co.prior_clips = s.prior_clips;
  co.seconds = s.seconds;
  co.seed = 0;
  log_line("corpus: " + corpus);
  sonar::audio::build_synth_corpus(corpus, co, [](const std::string& l) { log_line("  " + l); });
  const std::string prior = corpus + "/prior.csv";

  const fs::path start = fs::path(out) / "start";
  const std::string stage1 = (start / "1-random-projection").string();
  log_line("start model, stage 1: a fresh tiny BEATs on the prior pool, random-projection targets -> " + stage1);
  if (!pretrain_stage(stage1, prior, "", "", s.prior_steps, s.prior_lr, s, stop)) return std::nullopt;
  const std::string stage2 = (start / "2-tokenizer").string();
  log_line("start model, stage 2: a tokenizer distilled from the stage-1 model -> " + stage2);
  const auto tok_file = tokenizer_stage(stage2, prior, stage1 + "/" + sonar::method::kModelFile, s, stop);
  if (!tok_file) return std::nullopt;
  const std::string stage3 = (start / "3-tokenizer-targets").string();
  log_line("start model, stage 3: the stage-1 model trained on the stage-2 tokenizer's labels -> " + stage3);
  if (!pretrain_stage(stage3, prior, stage1 + "/" + sonar::method::kCheckpointFile, *tok_file, s.start_steps,
                      s.start_lr, s, stop))
    return std::nullopt;

  json plan;
  plan["name"] = "SONAR demo: new domain '" + s.domain + "' (synthetic corpus, tiny BEATs)";
  plan["start"] = {{"model", stage3 + "/" + sonar::method::kCheckpointFile},
                   {"tokenizer", stage3 + "/" + sonar::method::kTokenizerFile}};
  // The prior task is the fine one (the classes of each mixture's sources, as AudioSet's 527 classes): the
  // coarse one (which domains are mixed) sits near its ceiling even for an untrained model.
  plan["prior"] = {{"data", prior}, {"splits", {"train", "val"}}, {"task", corpus + "/prior_fine.csv"}};
  plan["domains"] = json::array({{{"name", s.domain},
                                  {"data", corpus + "/" + s.domain + ".csv"},
                                  {"splits", {"train", "val"}}}});
  plan["tasks"] = json::object();
  for (const auto& d : sonar::audio::synth_domains())
    if (d.name != s.domain) plan["tasks"][d.name] = corpus + "/" + d.name + ".csv";
  // SONAR with all three parts at their documented defaults.
  plan["methods"] = json::array({"dcpt", "sonar"});
  plan["seeds"] = s.seeds;
  plan["train"] = {{"steps", s.steps}, {"batch", s.batch}, {"crop_seconds", s.crop}, {"lr", s.lr},
                   {"log_every", 50},  {"save_every", 100}, {"threads", s.threads}};
  return plan;
}

std::vector<uint64_t> parse_seeds(const std::string& v) {
  std::vector<uint64_t> out;
  std::stringstream ss(v);
  for (std::string t; std::getline(ss, t, ',');) {
    char* end = nullptr;
    const long long x = std::strtoll(t.c_str(), &end, 10);
    SONAR_CHECK(!t.empty() && end && *end == '\0' && x >= 0, "--seeds takes whole numbers >= 0 separated by commas, got '",
                v, "'");
    out.push_back(static_cast<uint64_t>(x));
  }
  SONAR_CHECK(!out.empty(), "--seeds is empty");
  return out;
}

std::string usage() {
  const DemoSettings d;
  std::ostringstream u;
  u << "usage: sonar experiment (--plan PLAN.json | --preset demo) --out DIR [--threads N] [--jobs N]\n"
       "       demo options: [--domain NAME] [--seeds 0,1] [--steps N]\n\n"
       "Runs a grid of continual pre-training runs, new domains x seeds x methods, plus the start model, and\n"
       "linear-probes every model on every task: its new domain's, the prior pool's and the other domains'.\n"
       "Writes DIR/results.csv (one row per model and task), results.json and results.md (mean ± std over\n"
       "seeds: new-domain macro-F1 and accuracy, prior score, forgetting = start - after, relative forgetting,\n"
       "the general drop over the other domains' tasks) and figures in DIR/figures/ (training curves per\n"
       "method, grouped bars with error bars, adaptation vs forgetting). Each run is an ordinary `sonar\n"
       "pretrain` folder under DIR/runs/; finished runs and probes are reused, so the same command resumes an\n"
       "interrupted grid and a finished one only rewrites the results. Ctrl-C saves a checkpoint and stops.\n\n"
       "  --plan FILE      the grid (JSON; docs/results.md describes every key): start model and tokenizer,\n"
       "                   prior pool, domains, methods (dcpt, sonar, sonar-no-replay, sonar-uniform-replay,\n"
       "                   sonar-no-model-distill, sonar-no-tokenizer-distill, sonar-frozen-codebook, or custom\n"
       "                   flag sets), seeds, training and probe settings\n"
       "  --preset demo    the built-in setting: the synthetic corpus, a tiny start model pre-trained on its\n"
       "                   prior pool, then DCPT and SONAR on one new domain (the plan is written to\n"
       "                   DIR/plan-demo.json)\n"
       "  --out DIR        output folder\n"
       "  --domain NAME    demo: the new domain (music, birds, noise, speech; default " << d.domain << ")\n"
       "  --seeds LIST     demo: seeds (default 0,1)\n"
       "  --steps N        demo: continual pre-training steps per run (default " << d.steps << ")\n"
       "  --threads N      compute threads (default: OpenMP's), shared by the concurrent runs\n"
       "  --jobs N         runs (and probes) at a time, each with threads/N threads (default 1; --preset demo: 2\n"
       "                   when there are 2 threads or more). A tiny model's step cannot keep two cores busy:\n"
       "                   two runs of one thread finish about 1.5x sooner than one run of two. Each concurrent\n"
       "                   run needs its own memory\n";
  return u.str();
}

int run(int argc, char** argv) {
  sonar::app::Args args(argc, argv, {"plan", "preset", "out", "domain", "seeds", "steps", "threads", "jobs"}, {});
  if (args.help()) {
    std::printf("%s", usage().c_str());
    return 0;
  }
  SONAR_CHECK(args.positional().empty(), "unexpected argument '", args.positional().empty() ? "" : args.positional()[0],
              "' (see --help)");
  SONAR_CHECK(args.has("plan") != args.has("preset"), "give either --plan or --preset (see --help)");
  const std::string out = args.require("out");
  const long long threads = args.get_int("threads", 0);
  SONAR_CHECK(threads >= 0, "--threads must be >= 0, got ", threads);
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
  const long long jobs = args.get_int("jobs", args.has("preset") && omp_get_max_threads() >= 2 ? 2 : 1);
  SONAR_CHECK(jobs >= 1 && jobs <= 64, "--jobs must be between 1 and 64, got ", jobs);

  sonar::app::StopOnSignal stop_on_signal("sonar experiment");
  sonar::method::ExperimentPlan plan;
  if (args.has("plan")) {
    for (const char* demo_only : {"domain", "seeds", "steps"})
      SONAR_CHECK(!args.has(demo_only), "--", demo_only, " is a --preset demo option; set it in the plan file");
    plan = sonar::method::read_plan(args.get("plan"));
    if (threads > 0) plan.train.threads = static_cast<int>(threads);
  } else {
    SONAR_CHECK(args.get("preset") == "demo", "unknown preset '", args.get("preset"), "' (known: demo)");
    DemoSettings s;
    s.domain = args.get("domain", s.domain);
    bool known = false;
    for (const auto& d : sonar::audio::synth_domains()) known = known || d.name == s.domain;
    SONAR_CHECK(known, "--domain must be music, birds, noise or speech, got '", s.domain, "'");
    if (args.has("seeds")) s.seeds = parse_seeds(args.get("seeds"));
    s.steps = args.get_int("steps", s.steps);
    SONAR_CHECK(s.steps > 0, "--steps must be positive, got ", s.steps);
    s.threads = static_cast<int>(threads);
    fs::create_directories(out);
    const auto j = prepare_demo(out, s, stop_on_signal.flag());
    if (!j) {
      log_line("stopped while making the start model; run the same command again to resume");
      return 130;
    }
    const std::string plan_file = (fs::path(out) / "plan-demo.json").string();
    sonar::write_file_atomic(plan_file, j->dump(2) + "\n");
    plan = sonar::method::parse_plan(*j, out, plan_file);
  }
  sonar::method::ExperimentOptions eo;
  eo.out_dir = out;
  eo.stop = stop_on_signal.flag();
  eo.jobs = static_cast<int>(jobs);
  const auto rep = sonar::method::run_experiment(plan, eo);
  if (rep.stopped) return 130;
  std::printf("\n%s\n", sonar::read_file((fs::path(out) / "results.md").string()).c_str());
  std::printf("grid: %lld runs (%lld trained now, %lld reused), %lld probes (%lld reused) in %s\n",
              static_cast<long long>(rep.cells), static_cast<long long>(rep.trained),
              static_cast<long long>(rep.reused), static_cast<long long>(rep.probes + rep.probes_reused),
              static_cast<long long>(rep.probes_reused), sonar::method::format_duration(rep.seconds).c_str());
  for (const auto& f : rep.outputs) std::printf("wrote %s\n", f.c_str());
  return 0;
}

}  // namespace

SONAR_COMMAND("experiment", "a grid of continual pre-training runs (DCPT, SONAR, ablations) with probes, tables and figures",
              usage(), run);
