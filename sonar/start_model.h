// The start model of a continual pre-training experiment: BEATs' own pre-training chain run on a prior pool,
// in three stages, each an ordinary run folder under the output folder:
//   1-random-projection   a fresh model of the preset, trained on a random-projection tokenizer's labels
//   2-tokenizer           a tokenizer of the preset distilled from the stage-1 model (`sonar train-tokenizer`)
//   3-tokenizer-targets   the stage-1 model trained further on the stage-2 tokenizer's labels
// The stage-3 checkpoint and tokenizer are the `start` of an experiment plan (sonar/experiment.h). A finished
// stage is reused and an interrupted one resumes, so the same call finishes an interrupted chain and a finished
// one costs nothing. `sonar start-model` and `sonar experiment --preset demo` call it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace sonar::method {

struct StartModelOptions {
  std::string data;                                   // the prior pool (manifest, folder or list)
  std::vector<std::string> splits = {"train", "val"}; // rows trained on (the test split is kept for probes)
  std::string out_dir;
  std::string preset = "tiny";                        // model and tokenizer preset (sonar/trainer.h)
  int64_t projection_steps = 800;                     // stage 1
  double projection_lr = 1e-3;
  int64_t tokenizer_steps = 200;                      // stage 2
  int64_t steps = 700;                                // stage 3
  double lr = 3e-3;
  int64_t batch_size = 16;                            // all stages
  double crop_seconds = 2.0;
  uint64_t seed = 0;
  int64_t log_every = 50;
  int64_t save_every = 100;
  int num_threads = 0;                                // 0: OpenMP's
  std::function<void(const std::string&)> log;        // progress lines (default: stdout)
  const std::atomic<bool>* stop = nullptr;            // the running stage saves a checkpoint and returns
};

struct StartModelResult {
  bool finished = false;   // all three stages done (false: stopped by the flag, resumable)
  std::string model;       // <out>/3-tokenizer-targets/checkpoint.safetensors
  std::string tokenizer;   // <out>/3-tokenizer-targets/tokenizer.safetensors
  int64_t stages_reused = 0;
  double seconds = 0.0;    // wall time of this call
};

// The stage folders' names, in order.
const std::vector<std::string>& start_model_stages();

// Runs (or resumes, or reuses) the chain. <out>/start-model.json holds the settings from the start (a folder
// made with other settings is refused, never silently reused) and, when finished, the two files a plan's
// `start` names and each stage's steps and training time. Throws on bad options or data.
StartModelResult make_start_model(const StartModelOptions& o);

}  // namespace sonar::method
