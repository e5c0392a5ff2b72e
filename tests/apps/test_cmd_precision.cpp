// `--precision` on the commands that take it (features, probe, profile): bf16 features of the official tiny
// fixture stay within the bf16 band of the official float32 reference (and are not bit-identical to it:
// bf16 really ran), float32 stays the default and exact to the fixture tolerance, and a bad value or a CPU
// without AVX512-BF16 (simulated by capping oneDNN with DNNL_MAX_CPU_ISA) fails with one line and no output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "tensor/ops.h"
#include "tensor/precision.h"
#include "tests/test_util.h"

namespace sonar {
namespace {

const std::string kDir = std::string(SONAR_FIXTURES_DIR) + "/beats_tiny/";
constexpr double kFeatureTol = 1e-4;       // float32: the fixtures README's tolerance
constexpr double kBf16FeatureBand = 2e-2;  // bf16: max |diff| / max |ref| (tests/nn/test_beats_bf16.cpp's band)

double rel_err(const Tensor& got, const Tensor& ref) {
  EXPECT_EQ(shape_str(got.shape()), shape_str(ref.shape()));
  if (got.shape() != ref.shape()) return 1e30;
  return testutil::max_abs_diff(got, ref) / max_all(abs(ref)).item<double>();
}

std::string features_cmd(const std::string& out, const std::string& extra) {
  return "features --checkpoint " + kDir + "beats.pt --input " + kDir + "wave.npy --padding-mask " + kDir +
         "padding_mask.npy --output " + out + " " + extra;
}

TEST(CmdPrecision, FeaturesInBf16StayWithinTheBand) {
  if (!bf16_unsupported_reason().empty()) GTEST_SKIP() << bf16_unsupported_reason();
  testutil::TempDir dir;
  auto r = testutil::run_sonar(features_cmd(dir.file("f32.npy"), ""));
  ASSERT_EQ(r.code, 0) << r.out;
  r = testutil::run_sonar(features_cmd(dir.file("bf16.npy"), "--precision bf16"));
  ASSERT_EQ(r.code, 0) << r.out;
  const Tensor ref = load_npy(kDir + "features_batch.npy");
  const double e32 = rel_err(load_npy(dir.file("f32.npy")), ref), e16 = rel_err(load_npy(dir.file("bf16.npy")), ref);
  std::printf("  features vs official float32: f32 %.3g, bf16 %.3g (relative to the largest value)\n", e32, e16);
  EXPECT_LT(e32, kFeatureTol);
  EXPECT_LT(e16, kBf16FeatureBand);
  EXPECT_GT(e16, kFeatureTol);  // bf16 really changed the products
}

// One line of output (the error), a failing exit code, and no output file.
void expect_one_line(const testutil::Run& r, const std::string& needle, const std::string& out) {
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_NE(r.out.find(needle), std::string::npos) << r.out;
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(CmdPrecision, BadValueOrMissingInstructionSetFailsWithOneLine) {
  testutil::TempDir dir;
  const std::string out = dir.file("x.npy");
  expect_one_line(testutil::run_sonar(features_cmd(out, "--precision half")), "half", out);
  expect_one_line(testutil::run_sonar("probe --preset tiny --data " + dir.file("m.csv") + " --precision f64"), "f64",
                  out);
  // A CPU without AVX512-BF16, as oneDNN sees it: the children inherit the capped ISA.
  ::setenv("DNNL_MAX_CPU_ISA", "AVX512_CORE", 1);
  const testutil::Run r = testutil::run_sonar(features_cmd(out, "--precision bf16"));
  const testutil::Run p = testutil::run_sonar("probe --preset tiny --data " + dir.file("m.csv") + " --precision bf16");
  ::unsetenv("DNNL_MAX_CPU_ISA");
  expect_one_line(r, "AVX512-BF16", out);
  expect_one_line(p, "AVX512-BF16", out);
}

}  // namespace
}  // namespace sonar
