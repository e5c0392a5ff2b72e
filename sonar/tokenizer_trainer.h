// The BEATs tokenizer iteration as a resumable run: what `sonar train-tokenizer` runs. A frozen teacher (a BEATs
// model checkpoint, eval mode) gives the last-layer features of every patch; a BEATs-shaped tokenizer (a fresh
// preset with a codebook of K codes, k-means-initialised on the first batch as the official code does, or a
// tokenizer checkpoint to continue) quantises the patches, and a tokenizer estimator maps the straight-through
// codes back to the teacher's features. Loss: nn/beats/pretrain.h TokenizerDistillation (1 - cosine to the
// teacher + commitment); AdamW with warm-up, cosine decay and gradient clipping (TrainStep) on the tokenizer's
// encoder, quantize_layer and the estimator; the codebook moves by EMA (decay 0.99) inside the forward pass.
// With `sonar pretrain --tokenizer`, this closes the BEATs loop: random projection -> model -> tokenizer -> model.
//
// A run lives in one output folder, with the rules of sonar/trainer.h (`sonar pretrain`):
//   run.json                 the options, the teacher, the data, the tokenizer configuration (for people)
//   checkpoint.safetensors   the latest training checkpoint: the tokenizer (loadable as a tokenizer by
//                            load_tokenizer, LabelTokenizer::load and `sonar tokenize`), and under "train." the
//                            estimator and AdamW's moments, plus metadata with the step, schedule, RNG state,
//                            data-order position and options ("trainer.*" keys, format sonar-tokenizer-trainer-1)
//   tokenizer.safetensors    the final tokenizer alone, written when the last step is done
//   metrics.jsonl            one JSON object per logged step (loss, cosine loss, commitment, codes used,
//                            codebook perplexity, learning rate, gradient norm, clips/s), cut back on resume
// Checkpoints are written atomically every save_every steps and at the end; the same options and folder resume
// bit-identically (same batches, crops, dropout draws, codebook and optimiser state); a finished run or a run
// with other options is refused (naming the option) unless `force`; bad input fails before anything is written.
//
// Not here: the distillation loss and the quantizer (nn/beats/pretrain.h, nn/beats/quantizer.h), the model's
// pre-training (sonar/trainer.h), the command line (apps/cmd_train_tokenizer.cpp).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "autograd/optim.h"

namespace sonar::method {

struct TokenizerTrainOptions {
  std::string teacher;  // BEATs model checkpoint (pre-trained or fine-tuned; .pt or safetensors): the targets
  // data: a manifest (.csv/.tsv), a folder or a file list (audio::read_source); labels are ignored.
  std::string data;
  std::vector<std::string> splits;  // keep only items whose split/fold is one of these (empty: all)
  std::string out_dir;              // the run folder (created)

  // The tokenizer: a BEATs tokenizer checkpoint to continue from (its codebook is kept), or, when empty, a
  // fresh tokenizer of `preset` with `codes` codes (0: the preset's quant_n), k-means-initialised on the first
  // batch.
  std::string init;
  std::string preset = "tiny";
  int64_t codes = 0;
  float commitment_weight = 1.0f;  // weight of the commitment term
  int64_t estimator_layers = 3;    // transformer blocks of the estimator (BEATs: 3)

  double crop_seconds = 10.0;      // training window per clip (shorter clips are padded)
  double max_clip_seconds = 60.0;  // clips are read up to this length; windows are drawn inside it
  int64_t batch_size = 8;
  int64_t steps = 1000;
  ag::AdamWOptions adamw{5e-4f, 0.9f, 0.98f, 1e-8f, 0.01f};
  int64_t warmup_steps = -1;   // -1: 10% of the steps
  double final_lr = 0.0;       // floor of the cosine decay
  float max_grad_norm = 1.0f;  // <= 0: no clipping
  uint64_t seed = 0;           // fresh tokenizer and estimator, data order, crops, dropout, k-means

  int64_t log_every = 10;
  int64_t save_every = 100;
  int num_threads = 0;     // OpenMP threads (0: leave as is)
  int loader_workers = 1;  // background loading threads
  int prefetch_batches = 4;
  std::string cache_dir;   // fbank cache folder ("" = none)
  bool force = false;      // start over even if the folder holds a finished or different run

  // Progress lines (default: stdout). Called from the training thread.
  std::function<void(const std::string&)> log;
  // Set from another thread or a signal handler: the loop finishes its step, saves a checkpoint and returns.
  const std::atomic<bool>* stop = nullptr;
  // Tests: return after this many steps of this session WITHOUT saving, as a killed process would (-1: off).
  int64_t halt_after = -1;
};

// Codebook usage over some steps: how many codes the real patches went to, and the perplexity exp(H) of the
// assignment histogram (H in nats; K when every code is used equally, 1 when one code takes everything).
struct CodeUsage {
  int64_t codes_used = 0;
  double perplexity = 0.0;
};
// counts[k] = patches assigned to code k.
CodeUsage code_usage(const std::vector<int64_t>& counts);

struct TokenizerProgress {
  int64_t step = 0, total = 0;    // steps done, of total
  double loss = 0.0;              // mean over the steps since the last line
  double cosine_loss = 0.0;       // same steps: mean of 1 - cos(estimate, teacher)
  int64_t codes_used = 0, codes = 0;
  double perplexity = 0.0;        // of the code assignments of the same steps
  double lr = 0.0;                // learning rate of the last step
  double clips_per_second = 0.0;  // same steps, wall time
  double elapsed_seconds = 0.0;   // whole run, earlier sessions included
  double eta_seconds = 0.0;       // time left at this session's pace
  double data_wait = 0.0;         // share of this interval spent waiting for the loader
};
// "step 20/300 | loss 0.6123 | cosine 0.5871 | codes 187/256 | perplexity 152.3 | lr 2.00e-04 | 52.1 clips/s |
//  elapsed 0:00:12 | left 0:02:55 | wait 1%"
std::string format_tokenizer_progress(const TokenizerProgress& p);

struct TokenizerStepRecord {
  int64_t step = 0;  // 1-based: the number of steps done after it
  double loss = 0.0, cosine_loss = 0.0, commitment = 0.0, lr = 0.0, grad_norm = 0.0;
  int64_t codes_used = 0;  // distinct codes of this step's real patches
  int64_t real_patches = 0;
};

struct TokenizerTrainResult {
  int64_t start_step = 0;  // steps already done when this session started (0 = fresh)
  int64_t steps_done = 0;  // steps done when it returned
  int64_t total_steps = 0;
  bool resumed = false;
  bool finished = false;  // every step done, the final checkpoint and tokenizer written
  bool stopped = false;   // stopped early by the stop flag (checkpoint written) or halt_after (not written)
  std::vector<TokenizerStepRecord> history;  // this session's steps
  std::string checkpoint;  // path of checkpoint.safetensors
  std::string tokenizer;   // path of tokenizer.safetensors (written when finished)
};

constexpr const char* kTokenizerTrainerFormat = "sonar-tokenizer-trainer-1";

// Validates the options (one-line errors naming the option), then sets up (fresh, resumed or refused) and trains
// to the end, the stop flag or halt_after. Nothing is written before the teacher, the tokenizer, the data and
// the first batch have been read.
TokenizerTrainResult train_tokenizer(const TokenizerTrainOptions& opts);

}  // namespace sonar::method
