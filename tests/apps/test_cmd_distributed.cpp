// Data-parallel `sonar pretrain` under Open MPI (sonar/distributed.h), run as a user would: `mpirun -np 2
// sonar pretrain --batch 8 ...` (1 thread per process) against `sonar pretrain --batch 8` in one process
// (1 thread). Same clips, crops and masks, gradients summed across the two processes: the weights after 20 steps
// agree within a float tolerance (only summation orders differ), for DCPT and for SONAR with self-distillation;
// a 2-process run stopped and resumed ends bit-identical to a straight 2-process run; a 2-process checkpoint is
// refused by a single process with one line; a batch that does not split evenly is refused.
// Replay and the online codebook have their own data-parallel tests (test_cmd_distributed_replay.cpp,
// test_cmd_distributed_codebook.cpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
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

fs::path base() { return fs::temp_directory_path() / ("sonar_test_dist_" + std::to_string(::getpid())); }

// The shared tiny synthetic corpus (tests/sonar/sonar_test_util.h) with kPriorClips prior clips.
const std::string& corpus() {
  static const std::string dir = testutil::build_tiny_corpus(base() / "corpus", kPriorClips, kCorpusSeed);
  return dir;
}

const std::string& start_model() {
  static const std::string path = [] {
    const fs::path p = base() / "start.safetensors";
    testutil::save_dropout_free_tiny_model(p, kStartModelSeed);
    return p.string();
  }();
  return path;
}

const ::testing::Environment* const kCleanup = testutil::remove_after_all_tests({base()});

std::string common_args(const std::string& out, int steps) {
  return "pretrain --data " + corpus() + "/music.csv --init " + start_model() + " --codes 32 --batch 8 --steps " +
         std::to_string(steps) + " --crop-seconds 1 --max-clip-seconds 2 --lr 2e-3 --warmup 2 --seed 3 --log-every 5 "
         "--save-every 10 --workers 1 --out " + out;
}

void expect_identical(const std::string& a, const std::string& b) {
  SafeTensorsFile fa = load_safetensors(a), fb = load_safetensors(b);
  ASSERT_EQ(fa.tensors.size(), fb.tensors.size());
  for (const auto& [name, t] : fa.tensors) {
    ASSERT_TRUE(fb.tensors.count(name)) << name;
    EXPECT_LE(max_abs_diff(t.to(DType::Float32), fb.tensors.at(name).to(DType::Float32)), kResumeTolerance) << name;
  }
}

}  // namespace

TEST(Distributed, TwoProcessesMatchOneProcessForDcpt) {
  const std::string one = (base() / "dcpt1").string(), two = (base() / "dcpt2").string();
  testutil::Run a = run_single(common_args(one, 20));
  ASSERT_EQ(a.code, 0) << a.out;
  testutil::Run b = run_mpi(2, common_args(two, 20));
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_NE(b.out.find("in each of 2 processes (4 clips each per batch)"), std::string::npos) << b.out;
  // One process speaks for the group: one "finished" line.
  EXPECT_EQ(b.out.find("finished"), b.out.rfind("finished")) << b.out;
  expect_close_models(one + "/model.safetensors", two + "/model.safetensors");
  expect_same_losses(one, two);
}

TEST(Distributed, TwoProcessesMatchOneProcessForSonarWithDistillation) {
  const std::string one = (base() / "sonar1").string(), two = (base() / "sonar2").string();
  const std::string extra = " --method sonar --replay none --codebook frozen --distill-model 1 --distill-tokenizer 1";
  testutil::Run a = run_single(common_args(one, 20) + extra);
  ASSERT_EQ(a.code, 0) << a.out;
  testutil::Run b = run_mpi(2, common_args(two, 20) + extra);
  ASSERT_EQ(b.code, 0) << b.out;
  expect_close_models(one + "/model.safetensors", two + "/model.safetensors");
  expect_same_losses(one, two);
}

TEST(Distributed, StoppedTwoProcessRunResumesBitIdenticallyAndOnlyWithTwo) {
  const std::string straight = (base() / "straight").string(), sliced = (base() / "sliced").string();
  ASSERT_EQ(run_mpi(2, common_args(straight, 12)).code, 0);
  testutil::Run s1 = run_mpi(2, common_args(sliced, 12) + " --stop-after 7");
  EXPECT_EQ(s1.code, 130) << s1.out;
  // A single process refuses the two-process checkpoint, naming the count, and writes nothing.
  testutil::Run refused = run_single(common_args(sliced, 12));
  EXPECT_NE(refused.code, 0);
  EXPECT_NE(refused.out.find("run of 2 processes"), std::string::npos) << refused.out;
  testutil::Run s2 = run_mpi(2, common_args(sliced, 12));
  ASSERT_EQ(s2.code, 0) << s2.out;
  EXPECT_NE(s2.out.find("resuming"), std::string::npos) << s2.out;
  expect_identical(straight + "/checkpoint.safetensors", sliced + "/checkpoint.safetensors");
}

TEST(Distributed, RefusesABatchThatDoesNotSplitEvenly) {
  testutil::Run uneven = run_mpi(2, common_args((base() / "uneven").string(), 4).replace(
                              common_args((base() / "uneven").string(), 4).find("--batch 8"), 9, "--batch 7"));
  EXPECT_NE(uneven.code, 0);
  EXPECT_NE(uneven.out.find("multiple of the process count"), std::string::npos) << uneven.out;
}
