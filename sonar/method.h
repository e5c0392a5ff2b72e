// The SONAR method assembled from its three parts, and the flags that choose it: `sonar pretrain --method
// dcpt|sonar` and every ablation. DCPT (direct continual pre-training) is the trainer with no extension;
// SONAR is DCPT plus task-relevant stratified replay (sonar/replay.h), dual-source self-distillation
// (sonar/distill.h) and the online clustered codebook (sonar/codebook.h), each switchable on its own.
//
// Flags (names without the leading dashes; all take a value):
//   method              dcpt | sonar
//   prior, prior-splits, replay (stratified|uniform|none), strata (labels|K|auto), replay-ratio, replay-floor,
//   replay-temperature, replay-layer, embed-cache
//   distill-model W, distill-layers L1,L2, distill-loss (cosine|mse), distill-tokenizer W
//   codebook (online|frozen), codebook-decay, dead-usage, novelty-cos, novelty-share, grow-per-step,
//   max-codes, codebook-warmup, new-rows (nearest|fresh)
// A SONAR flag with --method dcpt is an error (DCPT has none of the parts).
//
// Named variants for experiment grids (method_flags): dcpt, sonar, sonar-no-replay, sonar-uniform-replay,
// sonar-no-model-distill, sonar-no-tokenizer-distill, sonar-frozen-codebook.
//
// Not here: the loop (sonar/trainer.h), the command line program (apps/cmd_pretrain.cpp).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sonar/codebook.h"
#include "sonar/distill.h"
#include "sonar/replay.h"
#include "sonar/trainer.h"

namespace sonar::method {

struct SonarOptions {
  std::string method = "dcpt";  // dcpt | sonar
  ReplayOptions replay;
  SelfDistillOptions distill;
  CodebookOptions codebook;
};

// The SONAR flags (each takes a value), in the order --help lists them.
const std::vector<std::string>& sonar_flag_names();
// One or two lines of --help per flag, with its default.
std::string sonar_flags_help();
// Options from flags (name -> value, names from sonar_flag_names; others are ignored). Throws one line naming
// the flag on a bad value, on a SONAR flag given with method dcpt, and on missing --prior for replay.
SonarOptions sonar_options_from_flags(const std::map<std::string, std::string>& flags);

// The extensions of a method (empty for dcpt); seed: the run's seed (mixed into replay and codebook draws).
std::vector<std::shared_ptr<TrainerExtension>> make_extensions(const SonarOptions& o, uint64_t seed);

// Named variants for experiments: the flags (besides --prior and the run's own) that define each.
const std::vector<std::string>& method_names();
std::map<std::string, std::string> method_flags(const std::string& name);  // throws naming an unknown name

}  // namespace sonar::method
