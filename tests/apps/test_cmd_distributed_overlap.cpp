// The gradient all-reduce overlapped with the backward pass (sonar/distributed.h, OverlappedGradientSum) in
// `mpirun -np 2 sonar pretrain`, with buckets small enough (50 KB) that the tiny model's gradients fill many
// of them, so most start during the backward: the weights match one process within the data-parallel
// tolerances, and match the blocking path (`--overlap-allreduce off`, 16 MB buckets) bit for bit — with two
// processes every summed element is one float addition, a + b = b + a, whatever the bucket layout or the
// reduction algorithm. Not here: the other data-parallel behaviour (test_cmd_distributed*.cpp, which run with
// the default, overlap on).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "tensor/io.h"
#include "tests/sonar/sonar_test_util.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace sonar;
using namespace sonar::testutil;

namespace {

constexpr float kOverlapVsBlockingTolerance = 0.0f;  // two processes: bit-identical (see above)
constexpr int64_t kPriorClips = 8;
constexpr uint64_t kCorpusSeed = 21;
constexpr uint64_t kStartModelSeed = 5;

fs::path base() { return fs::temp_directory_path() / ("sonar_test_dist_overlap_" + std::to_string(::getpid())); }

const ::testing::Environment* const kCleanup = testutil::remove_after_all_tests({base()});

std::string common_args(const std::string& out) {
  static const std::string corpus = testutil::build_tiny_corpus(base() / "corpus", kPriorClips, kCorpusSeed);
  static const std::string start = [] {
    const fs::path p = base() / "start.safetensors";
    testutil::save_dropout_free_tiny_model(p, kStartModelSeed);
    return p.string();
  }();
  return "pretrain --data " + corpus + "/music.csv --init " + start + " --codes 32 --batch 8 --steps 12 "
         "--crop-seconds 1 --max-clip-seconds 2 --lr 2e-3 --warmup 2 --seed 3 --log-every 4 --save-every 12 "
         "--workers 1 --out " + out;
}

}  // namespace

TEST(DistributedOverlap, SmallBucketsMatchOneProcessAndTheBlockingPathBitForBit) {
  const std::string one = (base() / "one").string(), blocking = (base() / "blocking").string(),
                    overlapped = (base() / "overlapped").string();
  testutil::Run a = run_single(common_args(one));
  ASSERT_EQ(a.code, 0) << a.out;
  testutil::Run b = run_mpi(2, common_args(blocking) + " --overlap-allreduce off");
  ASSERT_EQ(b.code, 0) << b.out;
  testutil::Run c = run_mpi(2, common_args(overlapped) + " --overlap-allreduce on --allreduce-bucket-mb 0.05");
  ASSERT_EQ(c.code, 0) << c.out;
  expect_close_models(one + "/model.safetensors", overlapped + "/model.safetensors");
  expect_same_losses(one, overlapped);
  // Weights and AdamW moments: the checkpoints hold both.
  SafeTensorsFile fb = load_safetensors(blocking + "/checkpoint.safetensors"),
                  fc = load_safetensors(overlapped + "/checkpoint.safetensors");
  ASSERT_EQ(fb.tensors.size(), fc.tensors.size());
  for (const auto& [name, t] : fb.tensors) {
    ASSERT_TRUE(fc.tensors.count(name)) << name;
    EXPECT_LE(max_abs_diff(t.to(DType::Float32), fc.tensors.at(name).to(DType::Float32)),
              kOverlapVsBlockingTolerance)
        << name;
  }
}

TEST(DistributedOverlap, RefusesABadSetting) {
  testutil::expect_sonar_fails_in_one_line(common_args((base() / "bad").string()) + " --overlap-allreduce maybe",
                                  "--overlap-allreduce must be on or off");
  testutil::expect_sonar_fails_in_one_line(common_args((base() / "bad").string()) + " --allreduce-bucket-mb 0",
                                  "--allreduce-bucket-mb must be in (0, 1024]");
}
