// The start model's three-stage pre-training chain on a prior pool (sonar/start_model.h): random-projection
// targets -> model -> distilled tokenizer -> model. Each stage is an ordinary `sonar pretrain` or
// `sonar train-tokenizer` run folder, so resuming and reusing are theirs.
#include "sonar/start_model.h"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "sonar/experiment.h"
#include "sonar/run_folder.h"
#include "sonar/tokenizer_trainer.h"
#include "sonar/trainer.h"
#include "tensor/error.h"
#include "tensor/io.h"

namespace sonar::method {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

void emit(const StartModelOptions& o, const std::string& line) { (o.log ? o.log : default_log)(line); }

// A stage whose final file exists is reused as it is (its run folder writes that file only when finished).
bool reused_stage(const StartModelOptions& o, const fs::path& dir, const char* final_file, bool* reused) {
  if (!fs::exists(dir / final_file)) return false;
  emit(o, "  " + dir.string() + ": finished earlier, reused");
  *reused = true;
  return true;
}

// What every stage's run options share (PretrainOptions and TokenizerTrainOptions alike): the pool, its
// splits, the folder, the preset, the steps, batch, crop, seed, logging, threads and the stop flag.
template <class RunOptions>
RunOptions stage_options(const StartModelOptions& o, const fs::path& dir, int64_t steps) {
  RunOptions r;
  r.data = o.data;
  r.splits = o.splits;
  r.out_dir = dir.string();
  r.preset = o.preset;
  r.steps = steps;
  r.batch_size = o.batch_size;
  r.crop_seconds = o.crop_seconds;
  r.seed = o.seed;
  r.log_every = o.log_every;
  r.num_threads = o.num_threads;
  r.stop = o.stop;
  r.log = [&o](const std::string& l) { emit(o, "  " + l); };
  return r;
}

// The training time a finished stage's metrics.jsonl records (its last line's elapsed_seconds; earlier
// sessions of a resumed stage included), or -1 when it has none.
double stage_seconds(const fs::path& dir) {
  const fs::path m = dir / kMetricsFile;
  if (!fs::exists(m)) return -1.0;
  const MetricsLog log = read_metrics(m.string());
  const auto it = log.values.find("elapsed_seconds");
  return it == log.values.end() || it->second.empty() ? -1.0 : it->second.back();
}

// Stages 1 and 3: a pre-training run; a finished one (model file written) is reused. False when stopped.
bool pretrain_stage(const StartModelOptions& o, const fs::path& dir, const std::string& init,
                    const std::string& tokenizer, int64_t steps, double lr, bool* reused) {
  if (reused_stage(o, dir, kModelFile, reused)) return true;
  PretrainOptions p = stage_options<PretrainOptions>(o, dir, steps);
  p.init = init;
  p.tokenizer = tokenizer;
  p.adamw.lr = static_cast<float>(lr);
  p.save_every = o.save_every;
  return pretrain(p).finished;
}

// Stage 2: a tokenizer of the preset distilled from the stage-1 model; a finished one is reused.
bool tokenizer_stage(const StartModelOptions& o, const fs::path& dir, const std::string& teacher, bool* reused) {
  if (reused_stage(o, dir, kTokenizerFile, reused)) return true;
  TokenizerTrainOptions t = stage_options<TokenizerTrainOptions>(o, dir, o.tokenizer_steps);
  t.teacher = teacher;
  const TokenizerTrainResult r = train_tokenizer(t);
  if (!r.finished) return false;
  SONAR_CHECK(fs::exists(dir / kTokenizerFile), "sonar train-tokenizer finished without writing ",
              (dir / kTokenizerFile).string());
  return true;
}

// The settings that define a start model; a folder made with other ones is refused, not silently reused.
json settings_of(const StartModelOptions& o) {
  json j;
  j["data"] = fs::weakly_canonical(fs::absolute(o.data)).string();
  j["splits"] = o.splits;
  j["preset"] = o.preset;
  j["projection_steps"] = o.projection_steps;
  j["projection_lr"] = o.projection_lr;
  j["tokenizer_steps"] = o.tokenizer_steps;
  j["steps"] = o.steps;
  j["lr"] = o.lr;
  j["batch"] = o.batch_size;
  j["crop_seconds"] = o.crop_seconds;
  j["seed"] = o.seed;
  return j;
}

}  // namespace

const std::vector<std::string>& start_model_stages() {
  static const std::vector<std::string> names = {"1-random-projection", "2-tokenizer", "3-tokenizer-targets"};
  return names;
}

StartModelResult make_start_model(const StartModelOptions& o) {
  SONAR_CHECK(!o.data.empty(), "start model: no prior pool given (data)");
  SONAR_CHECK(!o.out_dir.empty(), "start model: no output folder given");
  SONAR_CHECK(fs::exists(o.data), "start model: the prior pool ", o.data, " does not exist");
  preset_config(o.preset);  // throws naming an unknown preset
  for (const int64_t s : {o.projection_steps, o.tokenizer_steps, o.steps})
    SONAR_CHECK(s > 0, "start model: every stage needs a positive number of steps, got ", s);
  SONAR_CHECK(o.projection_lr > 0 && o.lr > 0, "start model: learning rates must be positive");
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path out = fs::path(o.out_dir);
  const fs::path record = out / "start-model.json";
  const json settings = settings_of(o);
  if (fs::exists(record)) {
    json old;
    try {
      old = json::parse(read_file(record.string())).at("settings");
    } catch (const std::exception& e) {
      SONAR_FAIL(record.string(), ": not a start-model record (", e.what(), "); delete the folder or choose another");
    }
    for (const auto& [k, v] : settings.items())
      SONAR_CHECK(old.contains(k) && old[k] == v, o.out_dir, " holds a start model made with other settings (", k,
                  ": ", old.contains(k) ? old[k].dump() : "none", " there, ", v.dump(),
                  " now); choose another folder or delete it");
  } else {
    const bool has_stage = fs::exists(out) && std::any_of(start_model_stages().begin(), start_model_stages().end(),
                                                          [&](const std::string& n) { return fs::exists(out / n); });
    SONAR_CHECK(!has_stage, o.out_dir, " holds stage folders but no start-model.json (made by an older sonar, or "
                "by hand), so its settings are unknown; choose another folder or delete it");
  }
  fs::create_directories(out);
  json j;
  j["format"] = "sonar-start-model-1";
  j["settings"] = settings;
  j["finished"] = false;
  write_file_atomic(record.string(), j.dump(2) + "\n");
  const auto& names = start_model_stages();
  const fs::path s1 = out / names[0], s2 = out / names[1], s3 = out / names[2];
  StartModelResult r;
  bool reused[3] = {false, false, false};

  emit(o, "start model, stage 1 of 3: a fresh '" + o.preset + "' BEATs, random-projection targets -> " + s1.string());
  if (!pretrain_stage(o, s1, "", "", o.projection_steps, o.projection_lr, &reused[0])) return r;
  emit(o, "start model, stage 2 of 3: a '" + o.preset + "' tokenizer distilled from the stage-1 model -> " +
              s2.string());
  if (!tokenizer_stage(o, s2, (s1 / kModelFile).string(), &reused[1])) return r;
  emit(o, "start model, stage 3 of 3: the stage-1 model trained on the stage-2 tokenizer's labels -> " + s3.string());
  if (!pretrain_stage(o, s3, (s1 / kCheckpointFile).string(), (s2 / kTokenizerFile).string(), o.steps, o.lr,
                      &reused[2]))
    return r;

  r.finished = true;
  r.model = (s3 / kCheckpointFile).string();
  r.tokenizer = (s3 / kTokenizerFile).string();
  for (bool b : reused) r.stages_reused += b;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  json stages = json::array();
  const int64_t steps[3] = {o.projection_steps, o.tokenizer_steps, o.steps};
  double total = 0.0;
  for (int i = 0; i < 3; ++i) {
    const double sec = stage_seconds(out / names[i]);
    total += sec > 0 ? sec : 0.0;
    stages.push_back({{"dir", names[i]}, {"steps", steps[i]}, {"training_seconds", sec}});
  }
  j["finished"] = true;
  j["stages"] = stages;
  j["training_seconds"] = total;
  // What an experiment plan's "start" entry names (paths relative to this file's folder).
  j["start"] = {{"model", names[2] + "/" + kCheckpointFile}, {"tokenizer", names[2] + "/" + kTokenizerFile}};
  write_file_atomic(record.string(), j.dump(2) + "\n");
  emit(o, "start model: " + r.model + " with " + r.tokenizer + " (training " + format_duration(total) + ")");
  return r;
}

}  // namespace sonar::method
