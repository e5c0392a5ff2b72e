// Tests of the `sonar synth-corpus` command as a user runs it: the built program is started with flags, its
// exit code, printed counts and written manifests are checked. The generator itself is tested in
// tests/audio/test_synth_corpus.cpp.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {

using sonar::testutil::Run;
using sonar::testutil::run_sonar;

std::string tmp_dir(const std::string& name) { return sonar::testutil::fresh_tmp_path("sonar_test_cmd_synth_", name); }

int64_t count_lines(const fs::path& p) {
  std::ifstream f(p);
  int64_t n = 0;
  for (std::string line; std::getline(f, line);) ++n;
  return n;
}

}  // namespace

TEST(CmdSynthCorpus, BuildsPrintsCountsAndIsIdempotent) {
  auto dir = tmp_dir("build");
  auto r = run_sonar("synth-corpus --out " + dir + " --clips-per-class 3 --prior-clips 5 --seconds 0.2 --seed 9");
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* m : {"music.csv", "birds.csv", "noise.csv", "speech.csv"})
    EXPECT_EQ(count_lines(fs::path(dir) / m), 1 + 4 * 3) << m;  // header + 4 classes x 3 clips
  EXPECT_EQ(count_lines(fs::path(dir) / "prior.csv"), 1 + 5);
  EXPECT_EQ(count_lines(fs::path(dir) / "tasks.csv"), 1 + 6);
  EXPECT_EQ(count_lines(fs::path(dir) / "prior_fine.csv"), 1 + 5);
  // One line per class with one clip in each split (3 clips, 3 groups).
  EXPECT_NE(r.out.find("birds.csv  trill                1       1       1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(": 53 clips written"), std::string::npos) << r.out;
  auto again = run_sonar("synth-corpus --out " + dir + " --clips-per-class 3 --prior-clips 5 --seconds 0.2 --seed 9");
  ASSERT_EQ(again.code, 0) << again.out;
  EXPECT_NE(again.out.find("up to date"), std::string::npos) << again.out;
  EXPECT_NE(again.out.find(": 0 clips written"), std::string::npos) << again.out;
  fs::remove_all(dir);
}

TEST(CmdSynthCorpus, BadFlagsFailWithAMessageAndWriteNothing) {
  auto dir = tmp_dir("bad");
  auto r = run_sonar("synth-corpus --out " + dir + " --clips-per-class 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("clips-per-class must be >= 3"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(fs::path(dir) / "music.csv"));
  r = run_sonar("synth-corpus --out " + dir + " --seconds abc");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--seconds"), std::string::npos) << r.out;
  r = run_sonar("synth-corpus --clips-per-class 5");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--out"), std::string::npos) << r.out;
  r = run_sonar("synth-corpus --out " + dir + " --colour blue");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("unknown flag --colour"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

TEST(CmdSynthCorpus, HelpListsDomainsAndClasses) {
  auto r = run_sonar("synth-corpus --help");
  EXPECT_EQ(r.code, 0);
  for (const char* w : {"--clips-per-class", "music", "birds", "noise", "speech", "minor_chord", "whisper"})
    EXPECT_NE(r.out.find(w), std::string::npos) << w;
  auto top = run_sonar("--help");
  EXPECT_NE(top.out.find("synth-corpus"), std::string::npos) << top.out;
}
