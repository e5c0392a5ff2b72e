// `sonar info` on the hostile checkpoints of issue 12 (tests/fixtures/hostile/): a pickle nested 10^6
// deep (used to crash with a segmentation fault) and a storage record that claims to inflate to 1 GiB (used
// to be inflated first). Each must exit 1 with exactly one line that names the file. Not here: the reader
// tests with the limits in detail (tests/nn/test_checkpoint_hostile.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "tests/test_util.h"

using sonar::testutil::run_sonar;

static const std::string kHostile = std::string(SONAR_FIXTURES_DIR) + "/hostile/";

TEST(CmdHostile, InfoRefusesHostileCheckpointsWithOneLine) {
  struct Case {
    const char* file;
    const char* why;
  };
  for (const Case& c : {Case{"deep_lists.pt", "kMaxPickleStack"}, Case{"inflation_bomb.pt", "kMaxDeflateRatio"}}) {
    const auto r = run_sonar("info " + kHostile + c.file);
    EXPECT_EQ(r.code, 1) << c.file << ": " << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << c.file << ": " << r.out;
    EXPECT_NE(r.out.find(std::string("error: ")), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(kHostile + c.file), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(c.why), std::string::npos) << r.out;
  }
}
