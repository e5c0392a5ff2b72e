// Flags and Ctrl-C handling shared by the commands that run a resumable training loop (`sonar pretrain`,
// `sonar train-tokenizer`): the schedule/running flags both take, read into either options struct the same way,
// and the stop-on-signal guard. Not the commands' own flags or help text (each command documents its flags).
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "apps/command.h"
#include "tensor/error.h"
#include "tensor/precision.h"

namespace sonar::app {

// The value-taking flags read by read_run_flags: steps, batch, crop-seconds, max-clip-seconds, lr, warmup,
// final-lr, weight-decay, clip-grad, seed, log-every, save-every, threads, workers, cache, precision. (The switch
// --force is read too; the command lists it among its switches.)
const std::set<std::string>& run_flag_names();

// "a,b,,c" -> {"a", "b", "c"}.
std::vector<std::string> split_list(const std::string& s);

// Reads the run flags into `o` (PretrainOptions or TokenizerTrainOptions), each option's default kept when its
// flag is absent; a bad value is one error line naming the flag.
template <class RunOptions>
void read_run_flags(const Args& args, RunOptions& o) {
  o.steps = args.get_int("steps", o.steps);
  o.batch_size = args.get_int("batch", o.batch_size);
  o.crop_seconds = args.get_double("crop-seconds", o.crop_seconds);
  o.max_clip_seconds = args.get_double("max-clip-seconds", std::max(o.max_clip_seconds, o.crop_seconds));
  o.adamw.lr = static_cast<float>(args.get_double("lr", o.adamw.lr));
  o.warmup_steps = args.get_int("warmup", -1);
  SONAR_CHECK(!args.has("warmup") || o.warmup_steps >= 0, "--warmup must be >= 0, got ", o.warmup_steps);
  o.final_lr = args.get_double("final-lr", 0.0);
  o.adamw.weight_decay = static_cast<float>(args.get_double("weight-decay", o.adamw.weight_decay));
  o.max_grad_norm = static_cast<float>(args.get_double("clip-grad", o.max_grad_norm));
  SONAR_CHECK(o.max_grad_norm >= 0, "--clip-grad must be >= 0, got ", o.max_grad_norm);
  const long long seed = args.get_int("seed", 0);
  SONAR_CHECK(seed >= 0, "--seed must be >= 0, got ", seed);
  o.seed = static_cast<uint64_t>(seed);
  o.log_every = args.get_int("log-every", o.log_every);
  o.save_every = args.get_int("save-every", o.save_every);
  o.num_threads = static_cast<int>(args.get_int("threads", 0));
  o.loader_workers = static_cast<int>(args.get_int("workers", o.loader_workers));
  o.cache_dir = args.get("cache");
  o.force = args.has("force");
  o.precision = parse_precision(args.get("precision", "f32"));
  require_precision_supported(o.precision);
}

// While alive, SIGINT and SIGTERM ask the run to stop: the first signal sets flag() (the run finishes its step,
// saves a checkpoint and returns stopped) and prints "<command>: stopping after this step ..." on stderr; a
// second one ends the process at once (exit status 128 + signal). The signals are taken by a thread of the
// guard's own (sigwait), never by a computing thread: construct the guard before the run starts its threads.
// The destructor restores the default actions and the signal mask. One at a time per process.
class StopOnSignal {
 public:
  explicit StopOnSignal(const std::string& command);
  ~StopOnSignal();
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;
  std::atomic<bool>* flag();
};

}  // namespace sonar::app
