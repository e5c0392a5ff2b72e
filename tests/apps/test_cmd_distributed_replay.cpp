// Data-parallel task-relevant replay (sonar/replay.h) under Open MPI, run as a user would: `mpirun -np 2 sonar
// pretrain --method sonar --prior prior.csv ...` (1 thread per process) against the same command in one process.
// Each process appends its rank's slots of the step's replayed clips, so the global batch is the one-process
// batch: the weights after 16 steps agree within the data-parallel tolerances (tests/test_util.h), the logged
// losses and replay share within 1e-3, and replay_plan.csv, written by process 0 alone, is the one-process plan.
// A stopped and resumed 2-process run ends bit-identical to a straight one.
// Two processes given different prior pools (so different plans) stop before training with one line naming the
// plan fingerprints. Not here: the replay draws and plan themselves (tests/sonar/test_replay.cpp), data
// parallelism without replay (tests/apps/test_cmd_distributed.cpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "sonar/trainer.h"
#include "tensor/io.h"
#include "tests/sonar/sonar_test_util.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace sonar;
using namespace sonar::testutil;

namespace {

constexpr float kResumeTolerance = 0.0f;  // same process count and threads: bit-identical

// The corpus and start model every data-parallel test of tests/apps uses (test_cmd_distributed*.cpp).
constexpr int64_t kPriorClips = 8;
constexpr uint64_t kCorpusSeed = 21;
constexpr uint64_t kStartModelSeed = 5;

fs::path base() { return fs::temp_directory_path() / ("sonar_test_dist_replay_" + std::to_string(::getpid())); }

// The shared tiny synthetic corpus (tests/sonar/sonar_test_util.h) with kPriorClips prior clips.
const std::string& corpus() {
  static const std::string dir = testutil::build_tiny_corpus(base() / "corpus", kPriorClips, kCorpusSeed);
  return dir;
}

// A dropout-free tiny start model: with dropout off two processes compute what one does (up to float sums).
const std::string& start_model() {
  static const std::string path = [] {
    const fs::path p = base() / "start.safetensors";
    testutil::save_dropout_free_tiny_model(p, kStartModelSeed);
    return p.string();
  }();
  return path;
}

const ::testing::Environment* const kCleanup = testutil::remove_after_all_tests({base()});

// Replay ratio 0.375 of a batch of 8: 3 replayed clips per step, split unevenly (process 0 slot 0, process 1
// slots 1-2). --strata 3: k-means on the start model's embeddings, so both processes must embed identically.
std::string replay_args(const std::string& out, const std::string& prior, int steps) {
  return "pretrain --data " + corpus() + "/music.csv --init " + start_model() + " --codes 32 --batch 8 --steps " +
         std::to_string(steps) + " --crop-seconds 1 --max-clip-seconds 2 --lr 2e-3 --warmup 2 --seed 3 --log-every 5 "
         "--save-every 10 --workers 1 --out " + out + " --method sonar --prior " + prior + " --strata 3 "
         "--replay-ratio 0.375 --codebook frozen --distill-model 1 --distill-tokenizer 1";
}

std::vector<nlohmann::json> metrics(const std::string& dir) {
  std::vector<nlohmann::json> v;
  std::istringstream in(read_file(dir + "/metrics.jsonl"));
  std::string l;
  while (std::getline(in, l)) v.push_back(nlohmann::json::parse(l));
  return v;
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST(DistributedReplay, TwoProcessesMatchOneProcess) {
  const std::string one = (base() / "one").string(), two = (base() / "two").string();
  const std::string prior = corpus() + "/prior.csv";
  testutil::Run a = run_single(replay_args(one, prior, 16));
  ASSERT_EQ(a.code, 0) << a.out;
  testutil::Run b = run_mpi(2, replay_args(two, prior, 16));
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_NE(b.out.find("in each of 2 processes (4 clips each per batch)"), std::string::npos) << b.out;
  EXPECT_NE(b.out.find("3 prior clips per step"), std::string::npos) << b.out;
  // One process speaks for the group: one summary line, one end line (its count: 3 clips x 16 steps, global).
  EXPECT_EQ(count_of(b.out, "replay: stratified"), 1u) << b.out;
  EXPECT_NE(b.out.find("replay: 48 prior clips replayed this session"), std::string::npos) << b.out;

  // The plan: written by process 0, the one-process plan byte for byte (same embeddings, same k-means).
  const std::string plan1 = read_file(one + "/replay_plan.csv"), plan2 = read_file(two + "/replay_plan.csv");
  EXPECT_EQ(plan1, plan2);
  EXPECT_EQ(count_of(plan2, "\ncluster-"), 3u) << plan2;
  // The default embedding cache (under the run folder) holds the same entries in both runs and no leftovers.
  auto entries = [](const std::string& dir) {
    std::vector<std::string> v;
    for (const auto& e : fs::recursive_directory_iterator(fs::path(dir) / "embeddings"))
      if (e.is_regular_file()) v.push_back(fs::relative(e.path(), fs::path(dir) / "embeddings").string());
    std::sort(v.begin(), v.end());
    return v;
  };
  const std::vector<std::string> cache1 = entries(one), cache2 = entries(two);
  EXPECT_FALSE(cache1.empty());
  EXPECT_EQ(cache1, cache2);

  expect_close_models(one + "/model.safetensors", two + "/model.safetensors");
  expect_same_losses(one, two);
  // The replay share on the progress line is global: 3 of 11 clips per step in both runs.
  const auto m1 = metrics(one), m2 = metrics(two);
  ASSERT_EQ(m1.size(), m2.size());
  for (size_t i = 0; i < m1.size(); ++i) {
    if (m1[i].at("steps_averaged").get<int64_t>() == 0) continue;
    EXPECT_NEAR(m1[i].at("replay_share").get<double>(), 3.0 / 11.0, kDataParallelLossRelTol);
    EXPECT_NEAR(m2[i].at("replay_share").get<double>(), 3.0 / 11.0, kDataParallelLossRelTol);
  }
}

TEST(DistributedReplay, StoppedTwoProcessRunResumesBitIdentically) {
  // Each process reloads its slots of the steps after the stop (its replay loader restarts at the resumed step)
  // and checks the checkpoint's plan fingerprint.
  const std::string prior = corpus() + "/prior.csv";
  const std::string straight = (base() / "straight").string(), sliced = (base() / "sliced").string();
  testutil::Run a = run_mpi(2, replay_args(straight, prior, 8));
  ASSERT_EQ(a.code, 0) << a.out;
  testutil::Run s1 = run_mpi(2, replay_args(sliced, prior, 8) + " --stop-after 3");
  EXPECT_EQ(s1.code, 130) << s1.out;
  testutil::Run s2 = run_mpi(2, replay_args(sliced, prior, 8));
  ASSERT_EQ(s2.code, 0) << s2.out;
  EXPECT_NE(s2.out.find("resuming"), std::string::npos) << s2.out;
  EXPECT_NE(s2.out.find("replay: 15 prior clips replayed this session"), std::string::npos) << s2.out;
  const SafeTensorsFile fa = load_safetensors(straight + "/model.safetensors"),
                        fb = load_safetensors(sliced + "/model.safetensors");
  ASSERT_EQ(fa.tensors.size(), fb.tensors.size());
  for (const auto& [name, t] : fa.tensors) {
    ASSERT_TRUE(fb.tensors.count(name)) << name;
    EXPECT_LE(max_abs_diff(t.to(DType::Float32), fb.tensors.at(name).to(DType::Float32)), kResumeTolerance) << name;
  }
}

TEST(DistributedReplay, ProcessesWithDifferentPlansStopWithOneLine) {
  // Process 1 gets a prior pool without its last clip: another plan. Open MPI's MPMD form runs both.
  const std::string prior = corpus() + "/prior.csv", fewer = corpus() + "/prior_fewer.csv";
  std::istringstream in(read_file(prior));
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) lines.push_back(l);
  ASSERT_GT(lines.size(), 3u);
  std::string text;
  for (size_t i = 0; i + 1 < lines.size(); ++i) text += lines[i] + "\n";
  write_file_atomic(fewer, text);
  const std::string out = (base() / "differ").string();
  testutil::Run r = run_mpi(1, replay_args(out, prior, 4) + " : -np 1 " + std::string(SONAR_BINARY_DIR) + "/sonar " +
                         replay_args(out, fewer, 4));
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("the processes built different replay plans"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(fs::path(out) / "checkpoint.safetensors"));
  EXPECT_FALSE(fs::exists(fs::path(out) / "replay_plan.csv"));
}
