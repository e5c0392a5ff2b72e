// Tests of the `sonar pretrain` and `sonar probe` commands as a user runs them: a tiny synthetic corpus is
// generated with `sonar synth-corpus` into a temporary folder, a tiny model is pre-trained for a few steps, the
// finished run is refused without --force, the model is probed and the metrics file checked; bad input fails
// with one line and writes nothing; --help documents every flag. The library behaviour (resume exactness,
// metrics) is tested in tests/sonar/.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {

using sonar::testutil::count_lines_with;
using sonar::testutil::Run;
using sonar::testutil::run_sonar;

std::string tmp_dir(const std::string& name) {
  return sonar::testutil::fresh_tmp_path("sonar_test_cmd_pretrain_", name);
}

}  // namespace

TEST(CmdPretrain, PretrainsResumesRefusesAndProbes) {
  const std::string root = tmp_dir("main");
  auto c = run_sonar("synth-corpus --out " + root + "/corpus --clips-per-class 4 --prior-clips 6 --seconds 1 --seed 2");
  ASSERT_EQ(c.code, 0) << c.out;
  const std::string data = root + "/corpus/speech.csv", run = root + "/run";
  const std::string flags = "pretrain --data " + data + " --out " + run +
                            " --preset tiny --codes 32 --steps 4 --batch 4 --crop-seconds 1 --lr 2e-3 --warmup 1"
                            " --log-every 2 --save-every 2 --seed 3 --threads 2";
  auto r = run_sonar(flags);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(count_lines_with(r.out, "step 2/4 | loss "), 1) << r.out;
  EXPECT_EQ(count_lines_with(r.out, "step 4/4 | loss "), 1) << r.out;
  EXPECT_NE(r.out.find("finished: "), std::string::npos) << r.out;
  for (const char* f : {"checkpoint.safetensors", "model.safetensors", "tokenizer.safetensors", "run.json"})
    EXPECT_TRUE(fs::exists(fs::path(run) / f)) << f;

  // A finished run is refused, and nothing is touched.
  const auto stamp = fs::last_write_time(fs::path(run) / "checkpoint.safetensors");
  auto again = run_sonar(flags);
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.out.find("holds a finished run (4 steps)"), std::string::npos) << again.out;
  EXPECT_EQ(count_lines_with(again.out, "error"), 1) << again.out;
  EXPECT_EQ(fs::last_write_time(fs::path(run) / "checkpoint.safetensors"), stamp);

  // Continual pre-training from the finished run on another domain, same tokenizer: the predictor is reused.
  auto cont = run_sonar("pretrain --data " + root + "/corpus/birds.csv --splits train --out " + root + "/cont --init " +
                        run + "/checkpoint.safetensors --tokenizer " + run + "/tokenizer.safetensors --steps 2 --batch 4"
                        " --crop-seconds 1 --log-every 1 --threads 2");
  ASSERT_EQ(cont.code, 0) << cont.out;
  EXPECT_NE(cont.out.find("label predictor: from "), std::string::npos) << cont.out;

  // Probe the model; metrics land in a JSON file.
  const std::string metrics = root + "/metrics.json";
  auto p = run_sonar("probe --checkpoint " + run + "/model.safetensors --data " + data + " --epochs 50 --output " +
                     metrics + " --threads 2");
  ASSERT_EQ(p.code, 0) << p.out;
  EXPECT_NE(p.out.find("test: accuracy "), std::string::npos) << p.out;
  nlohmann::json j;
  {
    std::ifstream in(metrics);
    ASSERT_TRUE(in.good());
    in >> j;
  }
  EXPECT_EQ(j.at("task"), "single-label");
  EXPECT_EQ(j.at("classes").size(), 4u);
  const double acc = j.at("test_accuracy").get<double>();
  EXPECT_GE(acc, 0.0);
  EXPECT_LE(acc, 1.0);
  EXPECT_EQ(j.at("folds").size(), 1u);
  fs::remove_all(root);
}

TEST(CmdPretrain, BadInputFailsWithOneLineAndWritesNothing) {
  const std::string root = tmp_dir("bad");
  fs::create_directories(root);
  struct Case {
    std::string args, needle;
  };
  const std::vector<Case> cases = {
      {"pretrain --data " + root + "/missing.csv --out " + root + "/r", "missing.csv"},
      {"pretrain --out " + root + "/r", "missing required flag --data"},
      {"pretrain --data " + root + " --out " + root + "/r --steps 0", "--steps must be positive"},
      {"pretrain --data " + root + " --out " + root + "/r --preset huge", "unknown model preset 'huge'"},
      {"pretrain --data " + root + " --out " + root + "/r --init a.pt --preset tiny", "either --init or --preset"},
      {"pretrain --data " + root + " --out " + root + "/r --lr abc", "--lr: expected a number"},
      {"pretrain --data " + root + " --out " + root + "/r --bogus 1", "unknown flag --bogus"},
      {"probe --data " + root + "/missing.csv --preset tiny --output " + root + "/m.json", "missing.csv"},
      {"probe --data x.csv", "either --checkpoint or --preset"},
      {"probe --checkpoint " + root + "/none.pt --data x.csv --output " + root + "/m.json", "x.csv"},
  };
  for (const auto& c : cases) sonar::testutil::expect_sonar_fails_in_one_line(c.args, c.needle);
  EXPECT_FALSE(fs::exists(root + "/r"));
  EXPECT_FALSE(fs::exists(root + "/m.json"));
  fs::remove_all(root);
}

// `sonar probe --tasks`: every task of a corpus's tasks.csv, each scored exactly as `--data` scores it alone,
// a summary table, one metrics file; a bad tasks file fails in one line before anything is probed.
TEST(CmdProbe, EveryTaskOfACorpus) {
  const std::string root = tmp_dir("tasks");
  auto c = run_sonar("synth-corpus --out " + root + "/corpus --clips-per-class 4 --prior-clips 6 --seconds 1 --seed 4");
  ASSERT_EQ(c.code, 0) << c.out;
  const std::string common = "probe --preset tiny --epochs 20 --threads 2";
  auto all = run_sonar(common + " --tasks " + root + "/corpus/tasks.csv --output " + root + "/all.json");
  ASSERT_EQ(all.code, 0) << all.out;
  EXPECT_NE(all.out.find("| task | test score | test accuracy | test clips |"), std::string::npos) << all.out;
  std::ifstream in(root + "/all.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  const std::vector<std::string> names = {"music", "birds", "noise", "speech", "prior", "prior_fine"};
  ASSERT_EQ(j.at("tasks").size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const nlohmann::json& t = j.at("tasks")[i];
    EXPECT_EQ(t.at("name"), names[i]);
    EXPECT_EQ(count_lines_with(all.out, "| " + names[i] + " | "), 1) << names[i];
  }
  // The same numbers as one task alone: the noise task (single-label) and the prior pool (multi-label).
  for (const std::string name : {"noise", "prior"}) {
    auto one = run_sonar(common + " --data " + root + "/corpus/" + name + ".csv --output " + root + "/" + name + ".json");
    ASSERT_EQ(one.code, 0) << one.out;
    std::ifstream oi(root + "/" + name + ".json");
    const nlohmann::json o = nlohmann::json::parse(oi);
    const size_t k = std::find(names.begin(), names.end(), name) - names.begin();
    const nlohmann::json& t = j.at("tasks")[k];
    const char* key = name == "prior" ? "test_mAP" : "test_macro_f1";
    EXPECT_EQ(t.at(key).get<double>(), o.at(key).get<double>()) << name;
    EXPECT_EQ(t.at("task"), o.at("task")) << name;
  }

  // Bad tasks files: one line naming the problem, no metrics file.
  struct Case {
    std::string text, needle;
  };
  const std::vector<Case> cases = {
      {"task,file,type\nnoise,noise.csv,multiclass\n", "needs the columns task, manifest and type"},
      {"task,manifest,type\nnoise,noise.csv,regression\n", "type 'regression'"},
      {"task,manifest,type\nnoise,noise.csv,multiclass\nnoise,birds.csv,multiclass\n", "'noise' appears twice"},
      {"task,manifest,type\nnoise,gone.csv,multiclass\n", "gone.csv"},
      {"task,manifest,type\nnoise,noise.csv\n", "2 fields, the header has 3"},
      {"task,manifest,type\n", "no tasks"},
  };
  for (const auto& bad : cases) {
    std::ofstream(root + "/corpus/bad_tasks.csv") << bad.text;
    sonar::testutil::expect_sonar_fails_in_one_line(
        common + " --tasks " + root + "/corpus/bad_tasks.csv --output " + root + "/bad.json", bad.needle);
    EXPECT_FALSE(fs::exists(root + "/bad.json")) << bad.text;
  }
  sonar::testutil::expect_sonar_fails_in_one_line(common + " --data x.csv --tasks y.csv", "either --data or --tasks");
  sonar::testutil::expect_sonar_fails_in_one_line(
      common + " --tasks " + root + "/corpus/tasks.csv --task single", "--task does not go with --tasks");
  fs::remove_all(root);
}

TEST(CmdPretrain, HelpExplainsEveryFlag) {
  auto r = run_sonar("pretrain --help");
  ASSERT_EQ(r.code, 0);
  for (const char* f : {"--data", "--splits", "--out", "--init", "--preset", "--tokenizer", "--codes",
                        "--fresh-predictor", "--steps", "--batch", "--crop-seconds", "--max-clip-seconds", "--lr",
                        "--warmup", "--final-lr", "--weight-decay", "--beta2", "--clip-grad", "--mask-ratio", "--seed",
                        "--log-every", "--save-every", "--threads", "--workers", "--cache", "--force"})
    EXPECT_EQ(count_lines_with(r.out, std::string("  ") + f + " "), 1) << f;
  auto p = run_sonar("probe --help");
  ASSERT_EQ(p.code, 0);
  for (const char* f : {"--checkpoint", "--preset", "--model-seed", "--data", "--task", "--layer", "--max-seconds",
                        "--batch", "--epochs", "--patience", "--lr", "--weight-decay", "--val-fraction", "--seed",
                        "--output", "--threads", "--workers", "--cache", "--tasks", "--group-folds"})
    EXPECT_EQ(count_lines_with(p.out, std::string("  ") + f + " "), 1) << f;
}
