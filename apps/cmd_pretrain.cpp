// `sonar pretrain`: continual self-supervised pre-training of a BEATs model on unlabelled audio by masked label
// prediction: DCPT (--method dcpt, the baseline) or SONAR (--method sonar: replay, self-distillation, online
// codebook; sonar/method.h), with progress lines, metrics.jsonl, atomic checkpoints and exact resume.
// Thin: parses flags and calls sonar/trainer.h and sonar/method.h. Ctrl-C (SIGINT) or SIGTERM finishes the
// current step, saves a checkpoint and exits with status 130; the same command then resumes.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <sstream>
#include <map>
#include <set>
#include <string>

#include "apps/command.h"
#include "sonar/method.h"
#include "sonar/trainer.h"
#include "tensor/error.h"

namespace {

std::atomic<bool> g_stop{false};

// First signal: finish the step, save, exit 130. A second one ends the process at once (default action).
extern "C" void on_stop_signal(int sig) {
  if (g_stop.exchange(true)) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  static const char msg[] = "\nsonar pretrain: stopping after this step and saving a checkpoint (again to quit at once)\n";
  ssize_t ignored = ::write(2, msg, sizeof msg - 1);
  (void)ignored;
}

std::string usage() {
  const sonar::method::PretrainOptions d;
  std::ostringstream u;
  u << "usage: sonar pretrain --data MANIFEST|DIR|LIST --out RUN_DIR [--init CKPT | --preset tiny|base]\n"
       "                      [--tokenizer CKPT] [--steps N] [--batch B] [--crop-seconds S] [--lr LR] [--warmup N]\n"
       "                      [--seed S] [--log-every N] [--save-every N] [--threads N] [--force]\n"
       "                      [--method dcpt|sonar --prior SRC ...] [more flags below]\n\n"
       "Continues the self-supervised pre-training of a BEATs model on unlabelled audio: 75% of each clip's\n"
       "patches are masked, the encoder sees the rest, and a label predictor learns the tokenizer's labels of\n"
       "the masked patches (cross-entropy, label smoothing 0.1); AdamW with linear warm-up and cosine decay,\n"
       "gradient clipping. --method dcpt (default) is exactly that: direct continual pre-training, the baseline.\n"
       "--method sonar adds the three SONAR parts (each can be switched off on its own, see below): replay of\n"
       "prior clips chosen by relevance, self-distillation from the frozen start model and tokenizer, and an\n"
       "online codebook that refreshes and grows the tokenizer's codes. Typical SONAR run:\n"
       "  sonar pretrain --method sonar --init START/model.safetensors --tokenizer START/tokenizer.safetensors \\\n"
       "                --prior prior.csv --data new_domain.csv --out runs/sonar\n\n"
       "Data and model:\n"
       "  --data SRC           training audio: a CSV/TSV manifest, a folder (searched recursively) or a text file\n"
       "                       listing one audio file per line; labels, if any, are ignored\n"
       "  --splits A,B         use only the manifest rows whose split/fold is one of these (e.g. train)\n"
       "  --out RUN_DIR        run folder: checkpoint.safetensors, tokenizer.safetensors, run.json and, at the\n"
       "                       end, model.safetensors (created)\n"
       "  --init CKPT          start from this BEATs checkpoint (official .pt or project safetensors; a fine-tuned\n"
       "                       model's head is dropped). Without it, a fresh model of --preset\n"
       "  --preset NAME        tiny (2 blocks, 64 wide) or base (BEATs base, 12 blocks, 768 wide); default tiny\n"
       "  --tokenizer CKPT     tokenizer whose labels are the targets (BEATs tokenizer or random-projection\n"
       "                       tokenizer checkpoint). Without it, a fresh random-projection tokenizer (iteration 0)\n"
       "  --codes K            codebook size of that fresh random-projection tokenizer (default: the model\n"
       "                       configuration's quant_n: 256 for tiny, 1024 for base)\n"
       "  --fresh-predictor    when --init is a run of this command with the same tokenizer, its label predictor\n"
       "                       is reused unless this switch is given\n\n"
       "Training:\n"
       "  --steps N            optimiser steps (default " << d.steps << ")\n"
       "  --batch B            clips per batch (default " << d.batch_size << ")\n"
       "  --crop-seconds S     random window per clip, shorter clips padded (default " << d.crop_seconds << ")\n"
       "  --max-clip-seconds S longer files are read up to this length (default " << d.max_clip_seconds << ")\n"
       "  --lr LR              peak learning rate (default " << d.adamw.lr << ")\n"
       "  --warmup N           linear warm-up steps from 0 (default: 10% of --steps), then cosine decay\n"
       "  --final-lr LR        learning rate reached at the last step (default 0)\n"
       "  --weight-decay W     AdamW decoupled weight decay on weight matrices (default " << d.adamw.weight_decay << ")\n"
       "  --beta2 B            AdamW second-moment decay (default " << d.adamw.beta2 << "; beta1 0.9)\n"
       "  --clip-grad G        clip the global gradient norm to G (default " << d.max_grad_norm << "; 0: no clipping)\n"
       "  --mask-ratio R       share of each clip's patches masked (default " << d.mlp.masking.mask_ratio << ")\n"
       "  --seed S             seeds the fresh model, predictor and tokenizer, data order, crops, masks, dropout\n"
       "                       (default 0)\n\n"
       "Running:\n"
       "  --log-every N        a progress line every N steps (default " << d.log_every << "): step/total, loss and masked\n"
       "                       accuracy averaged since the last line, learning rate, clips/s, elapsed, time left,\n"
       "                       share of time spent waiting for data\n"
       "  --save-every N       checkpoint every N steps (default " << d.save_every << ") and at the end\n"
       "  --threads N          compute threads (default: OpenMP's; OMP_NUM_THREADS)\n"
       "  --workers N          background loading threads (default " << d.loader_workers << ")\n"
       "  --cache DIR          fbank cache folder (reused across epochs and runs)\n"
       "  --force              start over even when RUN_DIR holds a finished run or one with other options\n"
       "  --stop-after N       stop after N steps of this session with a checkpoint (exit 130), e.g. to train in\n"
       "                       slices on a machine with a time limit; the same command resumes\n\n"
       "Data-parallel: mpirun -np N sonar pretrain ... splits every batch of --batch clips across N processes\n"
       "(--batch a multiple of N): the same clips, crops and masks as one process, gradients summed with\n"
       "MPI_Allreduce; process 0 writes the run folder. A run resumes with the same N. See docs/distributed.md.\n\n"
       << sonar::method::sonar_flags_help() << "\n"
       "Every run folder also gets metrics.jsonl: one JSON object per progress line (loss terms, masked accuracy,\n"
       "learning rate, gradient norm, codebook health, replay share).\n\n"
       "Resuming: run the same command again. The run continues from checkpoint.safetensors and takes exactly the\n"
       "steps it would have taken without the interruption; an interrupted run loses at most --save-every steps.\n"
       "Ctrl-C saves a checkpoint before exiting (status 130). A finished run is refused unless --force.\n";
  return u.str();
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

int run(int argc, char** argv) {
  std::set<std::string> options = {"data", "splits", "out", "init", "preset", "tokenizer", "codes", "steps", "batch",
                                   "crop-seconds", "max-clip-seconds", "lr", "warmup", "final-lr", "weight-decay",
                                   "beta2", "clip-grad", "mask-ratio", "seed", "log-every", "save-every", "threads",
                                   "workers", "cache", "stop-after"};
  for (const auto& f : sonar::method::sonar_flag_names()) options.insert(f);
  sonar::app::Args args(argc, argv, options, {"force", "fresh-predictor"});
  if (args.help()) {
    std::printf("%s", usage().c_str());
    return 0;
  }
  SONAR_CHECK(args.positional().empty(), "unexpected argument '", args.positional().empty() ? "" : args.positional()[0],
              "' (see --help)");
  SONAR_CHECK(!(args.has("init") && args.has("preset")), "give either --init or --preset, not both");
  sonar::method::PretrainOptions o;
  o.data = args.require("data");
  o.out_dir = args.require("out");
  o.splits = split_list(args.get("splits"));
  o.init = args.get("init");
  o.preset = args.get("preset", o.preset);
  o.tokenizer = args.get("tokenizer");
  o.codes = args.get_int("codes", 0);
  SONAR_CHECK(!(args.has("codes") && args.has("tokenizer")), "--codes sizes a fresh random-projection tokenizer; "
              "it cannot be combined with --tokenizer");
  o.reuse_predictor = !args.has("fresh-predictor");
  o.steps = args.get_int("steps", o.steps);
  o.batch_size = args.get_int("batch", o.batch_size);
  o.crop_seconds = args.get_double("crop-seconds", o.crop_seconds);
  o.max_clip_seconds = args.get_double("max-clip-seconds", std::max(o.max_clip_seconds, o.crop_seconds));
  o.adamw.lr = static_cast<float>(args.get_double("lr", o.adamw.lr));
  o.warmup_steps = args.get_int("warmup", -1);
  SONAR_CHECK(!args.has("warmup") || o.warmup_steps >= 0, "--warmup must be >= 0, got ", o.warmup_steps);
  o.final_lr = args.get_double("final-lr", 0.0);
  o.adamw.weight_decay = static_cast<float>(args.get_double("weight-decay", o.adamw.weight_decay));
  o.adamw.beta2 = static_cast<float>(args.get_double("beta2", o.adamw.beta2));
  SONAR_CHECK(o.adamw.beta2 > 0 && o.adamw.beta2 < 1, "--beta2 must be in (0, 1), got ", o.adamw.beta2);
  o.max_grad_norm = static_cast<float>(args.get_double("clip-grad", o.max_grad_norm));
  SONAR_CHECK(o.max_grad_norm >= 0, "--clip-grad must be >= 0, got ", o.max_grad_norm);
  o.mlp.masking.mask_ratio = args.get_double("mask-ratio", o.mlp.masking.mask_ratio);
  const long long seed = args.get_int("seed", 0);
  SONAR_CHECK(seed >= 0, "--seed must be >= 0, got ", seed);
  o.seed = static_cast<uint64_t>(seed);
  o.log_every = args.get_int("log-every", o.log_every);
  o.save_every = args.get_int("save-every", o.save_every);
  o.num_threads = static_cast<int>(args.get_int("threads", 0));
  o.loader_workers = static_cast<int>(args.get_int("workers", o.loader_workers));
  o.cache_dir = args.get("cache");
  o.force = args.has("force");
  o.stop_after = args.get_int("stop-after", -1);
  SONAR_CHECK(!args.has("stop-after") || o.stop_after > 0, "--stop-after must be positive, got ", o.stop_after);

  std::map<std::string, std::string> sonar_flags;
  for (const auto& f : sonar::method::sonar_flag_names())
    if (args.has(f)) sonar_flags[f] = args.get(f);
  const sonar::method::SonarOptions so = sonar::method::sonar_options_from_flags(sonar_flags);

  g_stop.store(false);
  o.stop = &g_stop;
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  sonar::method::PretrainResult r = sonar::method::pretrain(o, sonar::method::make_extensions(so, o.seed));
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  return r.stopped ? 130 : 0;
}

}  // namespace

SONAR_COMMAND("pretrain", "continual pre-training of a BEATs model on unlabelled audio: DCPT or SONAR (--method)",
              usage(), run);
