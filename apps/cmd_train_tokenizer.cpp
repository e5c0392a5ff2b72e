// `sonar train-tokenizer`: the BEATs tokenizer iteration as a resumable run. A frozen BEATs teacher's last-layer
// features are distilled into a BEATs tokenizer through an estimator (cosine + commitment loss, EMA codebook with
// k-means init), with progress lines, atomic checkpoints and exact resume. Thin: parses flags and calls
// sonar/tokenizer_trainer.h. Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a checkpoint and exits
// with status 130; the same command then resumes. Not the model's pre-training (`sonar pretrain`).
#include <cstdio>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "apps/command.h"
#include "apps/run_flags.h"
#include "sonar/tokenizer_trainer.h"
#include "tensor/error.h"

namespace {

std::string usage() {
  const sonar::method::TokenizerTrainOptions d;
  std::ostringstream u;
  u << "usage: sonar train-tokenizer --teacher MODEL --data MANIFEST|DIR|LIST --out RUN_DIR\n"
       "                             [--init TOKENIZER_CKPT | --preset tiny|small|base] [--steps N] [--batch B]\n"
       "                             [--crop-seconds S] [--lr LR] [--warmup N] [--codes K] [--commitment W]\n"
       "                             [--estimator-layers N] [--seed S] [--log-every N] [--save-every N]\n"
       "                             [--threads N] [--workers N] [--cache DIR] [--force] [more flags below]\n\n"
       "Trains a BEATs acoustic tokenizer by distilling a frozen BEATs model (the teacher): the tokenizer encodes\n"
       "every patch, its codebook quantises it, and a small transformer (the estimator) maps the codes back to the\n"
       "teacher's last-layer features. Loss: 1 - cosine(estimate, teacher) + W x commitment; AdamW with linear\n"
       "warm-up and cosine decay, gradient clipping; the codebook follows an EMA of its assigned features (decay\n"
       "0.99) and a fresh codebook is set by k-means on the first batch. The result, RUN_DIR/tokenizer.safetensors,\n"
       "gives the targets of `sonar pretrain --tokenizer` (the BEATs loop: model -> tokenizer -> model).\n\n"
       "Teacher, data and tokenizer:\n"
       "  --teacher MODEL      BEATs model checkpoint whose last layer is distilled (official .pt or project\n"
       "                       safetensors, pre-trained or fine-tuned; e.g. a `sonar pretrain` model.safetensors)\n"
       "  --data SRC           training audio: a CSV/TSV manifest, a folder (searched recursively) or a text file\n"
       "                       listing one audio file per line; labels, if any, are ignored\n"
       "  --splits A,B         use only the manifest rows whose split/fold is one of these (e.g. train)\n"
       "  --out RUN_DIR        run folder: checkpoint.safetensors, run.json, metrics.jsonl and, at the end,\n"
       "                       tokenizer.safetensors (created)\n"
       "  --init CKPT          continue training this BEATs tokenizer (official Tokenizer_*.pt or safetensors; its\n"
       "                       codebook is kept). Without it, a fresh tokenizer of --preset\n"
       "  --preset NAME        tiny (2 blocks, 64 wide, 256 x 32 codebook), small (4 blocks, 256 wide, 512 x 64)\n"
       "                       or base (BEATs base, 1024 x 256 codebook); default tiny\n"
       "  --codes K            codebook size of the fresh tokenizer (default: the preset's: 256, 512, 1024)\n"
       "  --commitment W       weight of the commitment term (default " << d.commitment_weight << ")\n"
       "  --estimator-layers N transformer blocks of the estimator (default " << d.estimator_layers << ", as BEATs)\n\n"
       "Training:\n"
       "  --steps N            optimiser steps (default " << d.steps << ")\n"
       "  --batch B            clips per batch (default " << d.batch_size << ")\n"
       "  --crop-seconds S     random window per clip, shorter clips padded (default " << d.crop_seconds << ")\n"
       "  --max-clip-seconds S longer files are read up to this length (default " << d.max_clip_seconds << ")\n"
       "  --lr LR              peak learning rate (default " << d.adamw.lr << ")\n"
       "  --warmup N           linear warm-up steps from 0 (default: 10% of --steps), then cosine decay\n"
       "  --final-lr LR        learning rate reached at the last step (default 0)\n"
       "  --weight-decay W     AdamW decoupled weight decay on weight matrices (default " << d.adamw.weight_decay << ")\n"
       "  --clip-grad G        clip the global gradient norm to G (default " << d.max_grad_norm << "; 0: no clipping)\n"
       "  --seed S             seeds the fresh tokenizer and estimator, data order, crops, dropout and the k-means\n"
       "                       initialisation (default 0)\n\n"
       "Running:\n"
       "  --log-every N        a progress line every N steps (default " << d.log_every << "): step/total, loss and cosine\n"
       "                       loss averaged since the last line, codes used and codebook perplexity over those\n"
       "                       steps, learning rate, clips/s, elapsed, time left, share of time waiting for data\n"
       "  --save-every N       checkpoint every N steps (default " << d.save_every << ") and at the end\n"
       "  --threads N          compute threads (default: OpenMP's; OMP_NUM_THREADS)\n"
       "  --precision P        f32 (default) or bf16: matrix products with bfloat16 operands and float32\n"
       "                       accumulation (needs AVX512-BF16; weights, optimiser and losses stay float32)\n"
       "  --workers N          background loading threads (default " << d.loader_workers << ")\n"
       "  --cache DIR          fbank cache folder (reused across epochs and runs)\n"
       "  --force              start over even when RUN_DIR holds a finished run or one with other options\n\n"
       "Resuming: run the same command again. The run continues from checkpoint.safetensors and takes exactly the\n"
       "steps it would have taken without the interruption; an interrupted run loses at most --save-every steps.\n"
       "Ctrl-C saves a checkpoint before exiting (status 130). A finished run is refused unless --force.\n";
  return u.str();
}

int run(int argc, char** argv) {
  std::set<std::string> options = {"teacher", "data",  "splits",     "out",              "init",
                                   "preset",  "codes", "commitment", "estimator-layers"};
  options.insert(sonar::app::run_flag_names().begin(), sonar::app::run_flag_names().end());
  sonar::app::Args args(argc, argv, options, {"force"});
  if (args.help()) {
    std::printf("%s", usage().c_str());
    return 0;
  }
  SONAR_CHECK(args.positional().empty(), "unexpected argument '", args.positional().empty() ? "" : args.positional()[0],
              "' (see --help)");
  SONAR_CHECK(!(args.has("init") && args.has("preset")), "give either --init or --preset, not both");
  SONAR_CHECK(!(args.has("init") && args.has("codes")), "--codes sizes a fresh tokenizer's codebook; it cannot be "
              "combined with --init (whose codebook is kept)");
  sonar::method::TokenizerTrainOptions o;
  o.teacher = args.require("teacher");
  o.data = args.require("data");
  o.out_dir = args.require("out");
  o.splits = sonar::app::split_list(args.get("splits"));
  o.init = args.get("init");
  o.preset = args.get("preset", o.preset);
  o.codes = args.get_int("codes", 0);
  SONAR_CHECK(!args.has("codes") || o.codes >= 2, "--codes must be at least 2, got ", o.codes);
  o.commitment_weight = static_cast<float>(args.get_double("commitment", o.commitment_weight));
  o.estimator_layers = args.get_int("estimator-layers", o.estimator_layers);
  sonar::app::read_run_flags(args, o);

  sonar::app::StopOnSignal stop_on_signal("sonar train-tokenizer");
  o.stop = stop_on_signal.flag();
  sonar::method::TokenizerTrainResult r = sonar::method::train_tokenizer(o);
  return r.stopped ? 130 : 0;
}

}  // namespace

SONAR_COMMAND("train-tokenizer", "train a BEATs tokenizer by distilling a BEATs model (the tokenizer iteration)",
              usage(), run);
