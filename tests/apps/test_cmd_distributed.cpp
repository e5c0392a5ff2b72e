// Data-parallel `sonar pretrain` under Open MPI (sonar/distributed.h), run as a user would: `mpirun -np 2
// sonar pretrain --batch 8 ...` (1 thread per process) against `sonar pretrain --batch 8` in one process
// (1 thread). Same clips, crops and masks, gradients summed across the two processes: the weights after 20 steps
// agree within a float tolerance (only summation orders differ), for DCPT and for SONAR with self-distillation;
// a 2-process run stopped and resumed ends bit-identical to a straight 2-process run; a 2-process checkpoint is
// refused by a single process with one line; a batch that does not split evenly is refused.
// A part that does not run data-parallel is refused by name (the online codebook's own test:
// test_cmd_distributed_codebook.cpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "audio/synth_corpus.h"
#include "nn/beats/checkpoint.h"
#include "sonar/trainer.h"
#include "tensor/io.h"
#include "tensor/random.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace sonar;
using namespace sonar::testutil;

namespace {

// 20 AdamW steps from the same start, one process vs two: every weight within this distance of the
// one-process weight, relative to the largest magnitude of its tensor. Float sums in another order
// (the gradient all-reduce, smaller matrix products) move a weight by ~1e-6 relative per step; AdamW's
// normalised update can turn a near-zero gradient component's sign, which moves it by up to lr per step.
constexpr double kWeightRelTol = 2e-2;
// ...and the mean absolute difference over all weights stays far smaller.
constexpr double kMeanAbsTol = 2e-4;
// Absolute floor: the key projections' biases have an exactly zero true gradient (a shift of every key's score
// by the same q.b leaves the softmax unchanged), so they move only by AdamW-normalised float noise, which
// differs between the runs (seen: 2e-5 after 20 steps at lr 2e-3).
constexpr double kNoiseFloor = 1e-4;
constexpr float kResumeTolerance = 0.0f;  // same process count and threads: bit-identical

fs::path base() { return fs::temp_directory_path() / ("sonar_test_dist_" + std::to_string(::getpid())); }

const std::string& corpus() {
  static const std::string dir = [] {
    audio::SynthCorpusOptions o;
    o.clips_per_class = 4;
    o.prior_clips = 8;
    o.seconds = 1.5;
    o.seed = 21;
    const std::string d = (base() / "corpus").string();
    audio::build_synth_corpus(d, o);
    return d;
  }();
  return dir;
}

const std::string& start_model() {
  static const std::string path = [] {
    beats::BeatsConfig c = method::preset_config("tiny");
    c.dropout = c.attention_dropout = c.activation_dropout = c.encoder_layerdrop = 0.0;
    Generator g(5);
    beats::BeatsModel m(c, &g);
    fs::create_directories(base());
    const std::string p = (base() / "start.safetensors").string();
    beats::save_beats(p, m);
    return p;
  }();
  return path;
}

class Cleanup : public ::testing::Environment {
 public:
  void TearDown() override { fs::remove_all(base()); }
};
const ::testing::Environment* const kCleanup = ::testing::AddGlobalTestEnvironment(new Cleanup);

std::string common_args(const std::string& out, int steps) {
  return "pretrain --data " + corpus() + "/music.csv --init " + start_model() + " --codes 32 --batch 8 --steps " +
         std::to_string(steps) + " --crop-seconds 1 --max-clip-seconds 2 --lr 2e-3 --warmup 2 --seed 3 --log-every 5 "
         "--save-every 10 --workers 1 --out " + out;
}

// `mpirun -np N` of the built sonar program (as root in CI: --allow-run-as-root; 2 processes on 2 cores or
// fewer: --oversubscribe), 1 thread each.
testutil::Run run_mpi(int n, const std::string& args) { return run_sonar_mpi(n, args); }
testutil::Run run_single(const std::string& args) { return run_sonar_with_prefix("OMP_NUM_THREADS=1 ", args); }

// Compares the BEATs weights (not the optimiser moments) of two model files.
void expect_close_models(const std::string& a, const std::string& b) {
  SafeTensorsFile fa = load_safetensors(a), fb = load_safetensors(b);
  ASSERT_EQ(fa.tensors.size(), fb.tensors.size());
  double sum_abs = 0.0;
  int64_t count = 0;
  for (const auto& [name, t] : fa.tensors) {
    ASSERT_TRUE(fb.tensors.count(name)) << name;
    const Tensor x = t.to(DType::Float32).contiguous(), y = fb.tensors.at(name).to(DType::Float32).contiguous();
    ASSERT_EQ(x.shape(), y.shape()) << name;
    double mag = 0.0, diff = 0.0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      mag = std::max(mag, std::fabs(double(x.data<float>()[i])));
      const double d = std::fabs(double(x.data<float>()[i]) - y.data<float>()[i]);
      diff = std::max(diff, d);
      sum_abs += d;
    }
    count += x.numel();
    EXPECT_LE(diff, kWeightRelTol * mag + kNoiseFloor) << name << ": max |diff| " << diff << ", max |w| " << mag;
  }
  EXPECT_LE(sum_abs / static_cast<double>(count), kMeanAbsTol);
}

// The logged loss terms of both runs (metrics.jsonl) agree: the global loss of two processes is the one-process
// loss, so a wrong share of the global mean (which AdamW's scale invariance would hide in the weights) shows.
constexpr double kLossRelTol = 1e-3;
void expect_same_losses(const std::string& a, const std::string& b) {
  auto lines = [](const std::string& dir) {
    std::vector<nlohmann::json> v;
    std::istringstream in(read_file(dir + "/metrics.jsonl"));
    std::string l;
    while (std::getline(in, l)) v.push_back(nlohmann::json::parse(l));
    return v;
  };
  const auto la = lines(a), lb = lines(b);
  ASSERT_EQ(la.size(), lb.size());
  ASSERT_FALSE(la.empty());
  for (size_t i = 0; i < la.size(); ++i)
    for (const char* k : {"loss", "mlp_loss", "masked_accuracy"}) {
      const double x = la[i].at(k).get<double>(), y = lb[i].at(k).get<double>();
      EXPECT_NEAR(x, y, kLossRelTol * std::max(1.0, std::fabs(x))) << k << " at step " << la[i].at("step");
    }
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

TEST(Distributed, RefusesUnevenBatchesAndPartsThatAreNotDataParallel) {
  testutil::Run uneven = run_mpi(2, common_args((base() / "uneven").string(), 4).replace(
                              common_args((base() / "uneven").string(), 4).find("--batch 8"), 9, "--batch 7"));
  EXPECT_NE(uneven.code, 0);
  EXPECT_NE(uneven.out.find("multiple of the process count"), std::string::npos) << uneven.out;
  testutil::Run replay = run_mpi(2, common_args((base() / "replay").string(), 4) + " --method sonar --prior " + corpus() +
                              "/prior.csv --codebook frozen");
  EXPECT_NE(replay.code, 0);
  EXPECT_NE(replay.out.find("'replay' part does not run data-parallel"), std::string::npos) << replay.out;
  EXPECT_FALSE(fs::exists(base() / "replay" / "checkpoint.safetensors"));
}
