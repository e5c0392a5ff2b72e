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
#include "sonar/start_model.h"
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

  sonar::method::StartModelOptions so;
  so.data = prior;
  so.out_dir = (fs::path(out) / "start").string();
  so.preset = "tiny";
  so.projection_steps = s.prior_steps;
  so.projection_lr = s.prior_lr;
  so.tokenizer_steps = s.tokenizer_steps;
  so.steps = s.start_steps;
  so.lr = s.start_lr;
  so.batch_size = s.batch;
  so.crop_seconds = s.crop;
  so.num_threads = s.threads;
  so.stop = stop;
  so.log = log_line;
  const auto start = sonar::method::make_start_model(so);
  if (!start.finished) return std::nullopt;

  json plan;
  plan["name"] = "SONAR demo: new domain '" + s.domain + "' (synthetic corpus, tiny BEATs)";
  plan["start"] = {{"model", start.model}, {"tokenizer", start.tokenizer}};
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
       "                        [--finished-only]\n"
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
       "                   run needs its own memory\n"
       "  --finished-only  train nothing: probe the runs already finished (and the start model at their seeds)\n"
       "                   and write the results and figures of those alone, titled 'partial: K of N runs\n"
       "                   finished'. For reading a long grid between the sessions it runs in, or while it\n"
       "                   runs (in another shell)\n";
  return u.str();
}

int run(int argc, char** argv) {
  sonar::app::Args args(argc, argv, {"plan", "preset", "out", "domain", "seeds", "steps", "threads", "jobs"},
                         {"finished-only"});
  if (args.help()) {
    std::printf("%s", usage().c_str());
    return 0;
  }
  SONAR_CHECK(args.positional().empty(), "unexpected argument '", args.positional().empty() ? "" : args.positional()[0],
              "' (see --help)");
  SONAR_CHECK(args.has("plan") != args.has("preset"), "give either --plan or --preset (see --help)");
  SONAR_CHECK(!(args.has("finished-only") && args.has("preset")),
              "--finished-only reads a grid made from a plan; with --preset demo the whole grid takes minutes");
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
  eo.finished_only = args.has("finished-only");
  const auto rep = sonar::method::run_experiment(plan, eo);
  if (rep.stopped) return 130;
  std::printf("\n%s\n", sonar::read_file((fs::path(out) / "results.md").string()).c_str());
  std::printf("grid: %lld runs (%lld trained now, %lld reused%s), %lld probes (%lld reused) in %s\n",
              static_cast<long long>(rep.cells), static_cast<long long>(rep.trained),
              static_cast<long long>(rep.reused),
              rep.left_out > 0 ? (", " + std::to_string(rep.left_out) + " not finished, left out").c_str() : "",
              static_cast<long long>(rep.probes + rep.probes_reused), static_cast<long long>(rep.probes_reused),
              sonar::method::format_duration(rep.seconds).c_str());
  for (const auto& f : rep.outputs) std::printf("wrote %s\n", f.c_str());
  return 0;
}

}  // namespace

SONAR_COMMAND("experiment", "a grid of continual pre-training runs (DCPT, SONAR, ablations) with probes, tables and figures",
              usage(), run);
