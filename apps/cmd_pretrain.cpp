// `sonar pretrain`: continual self-supervised pre-training of a BEATs model on unlabelled audio by masked label
// prediction: DCPT (--method dcpt, the baseline) or SONAR (--method sonar: replay, self-distillation, online
// codebook; sonar/method.h), with progress lines, metrics.jsonl, atomic checkpoints and exact resume.
// Thin: parses flags and calls sonar/trainer.h and sonar/method.h. Ctrl-C (SIGINT) or SIGTERM finishes the
// current step, saves a checkpoint and exits with status 130; the same command then resumes.
#include <algorithm>
#include <cstdio>
#include <sstream>
#include <map>
#include <set>
#include <string>

#include "apps/command.h"
#include "apps/run_flags.h"
#include "sonar/method.h"
#include "sonar/trainer.h"
#include "tensor/error.h"

namespace {

std::string usage() {
  const sonar::method::PretrainOptions d;
  std::ostringstream u;
  u << "usage: sonar pretrain --data MANIFEST|DIR|LIST --out RUN_DIR [--init CKPT | --preset tiny|small|base]\n"
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
       "  --preset NAME        tiny (2 blocks, 64 wide), small (4 blocks, 256 wide) or base (BEATs base, 12\n"
       "                       blocks, 768 wide); default tiny\n"
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
       "  --precision P        f32 (default) or bf16: matrix products with bfloat16 operands and float32\n"
       "                       accumulation (needs AVX512-BF16; weights, optimiser and losses stay float32)\n"
       "  --workers N          background loading threads (default " << d.loader_workers << ")\n"
       "  --cache DIR          fbank cache folder (reused across epochs and runs)\n"
       "  --force              start over even when RUN_DIR holds a finished run or one with other options\n"
       "  --stop-after N       stop after N steps of this session with a checkpoint (exit 130), e.g. to train in\n"
       "                       slices on a machine with a time limit; the same command resumes\n\n"
       "Data-parallel: mpirun -np N sonar pretrain ... splits every batch of --batch clips across N processes\n"
       "(--batch a multiple of N): the same clips, crops and masks as one process, gradients summed with\n"
       "MPI_Allreduce; process 0 writes the run folder. A run resumes with the same N. See docs/distributed.md.\n"
       "  --overlap-allreduce on|off  on (default): each 16 MB bucket of gradients starts its (non-blocking)\n"
       "                       all-reduce during the backward pass, as soon as its gradients are final; off: all\n"
       "                       buckets are summed with blocking calls after the backward. Same weights either way.\n"
       "  --allreduce-bucket-mb M  gradient megabytes per all-reduce call (default 16; fewer, larger messages\n"
       "                       pay less latency, smaller ones start earlier during the backward)\n\n"
       << sonar::method::sonar_flags_help() << "\n"
       "Every run folder also gets metrics.jsonl: one JSON object per progress line (loss terms, masked accuracy,\n"
       "learning rate, gradient norm, codebook health, replay share).\n\n"
       "Resuming: run the same command again. The run continues from checkpoint.safetensors and takes exactly the\n"
       "steps it would have taken without the interruption; an interrupted run loses at most --save-every steps.\n"
       "Ctrl-C saves a checkpoint before exiting (status 130). A finished run is refused unless --force.\n";
  return u.str();
}

int run(int argc, char** argv) {
  std::set<std::string> options = {"data", "splits", "out", "init", "preset", "tokenizer", "codes", "beta2",
                                   "mask-ratio", "stop-after", "overlap-allreduce",
                                   "allreduce-bucket-mb"};
  options.insert(sonar::app::run_flag_names().begin(), sonar::app::run_flag_names().end());
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
  o.splits = sonar::app::split_list(args.get("splits"));
  o.init = args.get("init");
  o.preset = args.get("preset", o.preset);
  o.tokenizer = args.get("tokenizer");
  o.codes = args.get_int("codes", 0);
  SONAR_CHECK(!(args.has("codes") && args.has("tokenizer")), "--codes sizes a fresh random-projection tokenizer; "
              "it cannot be combined with --tokenizer");
  o.reuse_predictor = !args.has("fresh-predictor");
  sonar::app::read_run_flags(args, o);
  o.adamw.beta2 = static_cast<float>(args.get_double("beta2", o.adamw.beta2));
  SONAR_CHECK(o.adamw.beta2 > 0 && o.adamw.beta2 < 1, "--beta2 must be in (0, 1), got ", o.adamw.beta2);
  o.mlp.masking.mask_ratio = args.get_double("mask-ratio", o.mlp.masking.mask_ratio);
  o.stop_after = args.get_int("stop-after", -1);
  const std::string overlap = args.get("overlap-allreduce", "on");
  SONAR_CHECK(overlap == "on" || overlap == "off", "--overlap-allreduce must be on or off, got '", overlap, "'");
  o.overlap_allreduce = overlap == "on";
  const double bucket_mb = args.get_double("allreduce-bucket-mb", 16.0);
  SONAR_CHECK(bucket_mb > 0 && bucket_mb <= 1024, "--allreduce-bucket-mb must be in (0, 1024], got ", bucket_mb);
  o.allreduce_bucket_bytes = std::max<int64_t>(4, static_cast<int64_t>(bucket_mb * 1024 * 1024));
  SONAR_CHECK(!args.has("stop-after") || o.stop_after > 0, "--stop-after must be positive, got ", o.stop_after);

  std::map<std::string, std::string> sonar_flags;
  for (const auto& f : sonar::method::sonar_flag_names())
    if (args.has(f)) sonar_flags[f] = args.get(f);
  const sonar::method::SonarOptions so = sonar::method::sonar_options_from_flags(sonar_flags);

  sonar::app::StopOnSignal stop_on_signal("sonar pretrain");
  o.stop = stop_on_signal.flag();
  sonar::method::PretrainResult r = sonar::method::pretrain(o, sonar::method::make_extensions(so, o.seed));
  return r.stopped ? 130 : 0;
}

}  // namespace

SONAR_COMMAND("pretrain", "continual pre-training of a BEATs model on unlabelled audio: DCPT or SONAR (--method)",
              usage(), run);
