// Runs the built `sonar` program: `sonar fbank` on .npy waveforms (one clip and [clips, samples]) and audio
// files, normalisation flags, --help, and bad inputs (one clear error line, non-zero exit, no output file);
// `sonar fbank-stats` over a folder, a manifest (with --split) and a file list, lenient and strict. Not the
// library tests (tests/audio/).
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "audio/decode.h"
#include "audio/fbank.h"
#include "tensor/io.h"
#include "../audio/audio_test_util.h"
#include "tests/test_util.h"

using namespace sonar;
using sonar::audio::test_util::make_sine;
using sonar::audio::test_util::TempDir;

namespace {

using testutil::max_abs_diff;

constexpr double kTorchaudioTol = 1e-3;  // as in test_fbank.cpp
constexpr double kExactTol = 0.0;        // the command must produce exactly the library's numbers
constexpr double kNormTol = 1e-6;
// fbank-stats against mean/std computed here from the library's fbanks (both in double; JSON has 9 digits).
constexpr double kStatsRelTol = 1e-6;

const std::string kSonar = std::string(SONAR_BINARY_DIR) + "/sonar";
const std::string kFix = std::string(SONAR_FIXTURES_DIR) + "/beats_tiny/";

struct Result {
  int code = -1;
  std::string out, err;
};

std::string quote(const std::string& s) { return "'" + s + "'"; }

Result run(const TempDir& dir, const std::string& args) {
  const std::string out = dir / "stdout.txt", err = dir / "stderr.txt";
  const std::string cmd = kSonar + " " + args + " > " + quote(out) + " 2> " + quote(err);
  const int status = std::system(cmd.c_str());
  Result r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = testutil::read_text_file(out);
  r.err = testutil::read_text_file(err);
  return r;
}

int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

// A bad input: exit code non-zero, one line on stderr naming `mention`, and no output file.
void expect_clean_failure(const TempDir& dir, const std::string& args, const std::string& output,
                          const std::string& mention) {
  Result r = run(dir, args);
  EXPECT_NE(r.code, 0) << args;
  EXPECT_EQ(count_lines(r.err), 1) << args << "\nstderr: " << r.err;
  EXPECT_NE(r.err.find(mention), std::string::npos) << "stderr does not mention '" << mention << "': " << r.err;
  EXPECT_FALSE(std::filesystem::exists(output)) << args;
  std::printf("%s", r.err.c_str());
}

}  // namespace

TEST(CmdFbank, HelpExplainsEveryFlag) {
  TempDir dir;
  Result r = run(dir, "fbank --help");
  EXPECT_EQ(r.code, 0);
  for (const char* flag : {"--input", "--output", "--normalize", "--mean", "--std", "--threads"})
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag;
  Result overview = run(dir, "--help");
  EXPECT_NE(overview.out.find("fbank"), std::string::npos);
}

TEST(CmdFbank, OneClipNpyMatchesTorchaudio) {
  TempDir dir;
  Tensor wave = load_npy(kFix + "wave.npy");
  save_npy(dir / "clip1.npy", wave.select(0, 1).narrow(0, 0, 11680).contiguous());
  Result r = run(dir, "fbank --input " + quote(dir / "clip1.npy") + " --output " + quote(dir / "f.npy"));
  ASSERT_EQ(r.code, 0) << r.err;
  Tensor got = load_npy(dir / "f.npy");
  ASSERT_EQ(got.shape(), (Shape{71, 128}));
  EXPECT_LE(max_abs_diff(got, load_npy(kFix + "fbank_1.npy")), kTorchaudioTol);
}

TEST(CmdFbank, ClipsArrayGivesOneFbankPerRowOnTheWholeRow) {
  TempDir dir;
  save_npy(dir / "w.npy", load_npy(kFix + "wave.npy"));
  Result r = run(dir, "fbank --input " + quote(dir / "w.npy") + " --output " + quote(dir / "f.npy"));
  ASSERT_EQ(r.code, 0) << r.err;
  Tensor got = load_npy(dir / "f.npy");
  ASSERT_EQ(got.shape(), (Shape{2, 98, 128}));
  // Row 1 is zero-padded: its fbank covers the padding too (BEATs' batch preprocessing).
  EXPECT_LE(max_abs_diff(got, audio::fbank_batch(load_npy(kFix + "wave.npy"))), kExactTol);
  EXPECT_LE(max_abs_diff(got.select(0, 0).contiguous(), load_npy(kFix + "fbank_0.npy")), kTorchaudioTol);
}

TEST(CmdFbank, AudioFileAndNormalisation) {
  TempDir dir;
  const auto tone = make_sine(44100, 1000.0, 0.5, 44100.0);
  audio::write_audio(dir / "tone.flac", tone, 1, 44100, audio::SampleFormat::PCM24);
  Result r = run(dir, "fbank --input " + quote(dir / "tone.flac") + " --output " + quote(dir / "raw.npy"));
  ASSERT_EQ(r.code, 0) << r.err;
  Tensor raw = load_npy(dir / "raw.npy");
  ASSERT_EQ(raw.shape(), (Shape{98, 128}));
  EXPECT_LE(max_abs_diff(raw, audio::fbank(audio::load_audio(dir / "tone.flac"))), kExactTol);

  r = run(dir, "fbank --input " + quote(dir / "tone.flac") + " --output " + quote(dir / "n.npy") + " --normalize");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_LE(max_abs_diff(load_npy(dir / "n.npy"), audio::normalize_fbank(raw)), kNormTol);

  r = run(dir, "fbank --input " + quote(dir / "tone.flac") + " --output " + quote(dir / "m.npy") +
                   " --mean 3 --std 0.5 --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_LE(max_abs_diff(load_npy(dir / "m.npy"), audio::normalize_fbank(raw, 3.0, 0.5)), kNormTol);
}

TEST(CmdFbank, BadInputsFailCleanly) {
  TempDir dir;
  const std::string out = dir / "out.npy";
  expect_clean_failure(dir, "fbank --input " + quote(dir / "missing.wav") + " --output " + quote(out),
                       out, dir / "missing.wav");
  audio::test_util::write_bytes(dir / "corrupt.wav", "RIFF garbage garbage garbage garbage");
  expect_clean_failure(dir, "fbank --input " + quote(dir / "corrupt.wav") + " --output " + quote(out), out,
                       dir / "corrupt.wav");
  audio::test_util::write_bytes(dir / "empty.flac", "");
  expect_clean_failure(dir, "fbank --input " + quote(dir / "empty.flac") + " --output " + quote(out), out,
                       dir / "empty.flac");
  save_npy(dir / "short.npy", from_vector(make_sine(399, 440.0, 0.5, 16000.0), {399}));
  expect_clean_failure(dir, "fbank --input " + quote(dir / "short.npy") + " --output " + quote(out), out,
                       "shorter than one");
  auto w = make_sine(1600, 440.0, 0.5, 16000.0);
  w[9] = NAN;
  save_npy(dir / "nan.npy", from_vector(w, {1600}));
  expect_clean_failure(dir, "fbank --input " + quote(dir / "nan.npy") + " --output " + quote(out), out, "NaN");
  save_npy(dir / "ints.npy", from_vector(std::vector<int64_t>(800, 1), {800}));
  expect_clean_failure(dir, "fbank --input " + quote(dir / "ints.npy") + " --output " + quote(out), out, "float32");
  expect_clean_failure(dir, "fbank --input " + quote(dir / "ints.npy"), out, "--output");
  expect_clean_failure(dir, "fbank --input " + quote(dir / "ints.npy") + " --output " + quote(out) + " --bogus", out,
                       "--bogus");
  save_npy(dir / "ok.npy", from_vector(make_sine(1600, 440.0, 0.5, 16000.0), {1600}));
  expect_clean_failure(dir, "fbank --input " + quote(dir / "ok.npy") + " --output " + quote(out) + " --std 0", out,
                       "--std");
  expect_clean_failure(dir, "fbank --input " + quote(dir / "ok.npy") + " --output " + quote(dir / "out.txt"),
                       dir / "out.txt", ".npy");
  // An output folder that does not exist: the error names it and nothing is created.
  expect_clean_failure(dir, "fbank --input " + quote(dir / "ok.npy") + " --output " + quote(dir / "no/such/o.npy"),
                       dir / "no/such/o.npy", "no/such");
}

namespace {

struct Stats {
  double mean = 0, std = 0;
  long long clips = 0, frames = 0, skipped = 0;
};

Stats read_stats_json(const std::string& path) {
  Stats s;
  const std::string j = testutil::read_text_file(path);
  EXPECT_EQ(std::sscanf(j.c_str(), "{\"mean\": %lf, \"std\": %lf, \"clips\": %lld, \"frames\": %lld, \"skipped\": %lld}",
                        &s.mean, &s.std, &s.clips, &s.frames, &s.skipped),
            5)
      << j;
  return s;
}

// Mean and std of all fbank values of these files, computed directly with the library.
Stats reference_stats(const std::vector<std::string>& files) {
  double sum = 0, sum2 = 0, n = 0;
  Stats s;
  for (const auto& f : files) {
    for (float v : audio::fbank(audio::load_audio(f)).to_vector<float>()) sum += v, sum2 += double(v) * v, n += 1;
    s.frames += audio::fbank_num_frames(audio::load_audio(f).numel());
    s.clips++;
  }
  s.mean = sum / n;
  s.std = std::sqrt(sum2 / n - s.mean * s.mean);
  return s;
}

void write_stats_corpus(const TempDir& dir) {
  std::filesystem::create_directories(dir / "data/a");
  std::filesystem::create_directories(dir / "data/b");
  audio::write_audio(dir / "data/a/x.wav", make_sine(20000, 300.0, 0.5, 16000.0), 1, 16000);
  audio::write_audio(dir / "data/a/y.flac", make_sine(30000, 1200.0, 0.1, 44100.0), 1, 44100);
  audio::write_audio(dir / "data/b/z.wav", make_sine(12000, 4000.0, 0.8, 16000.0), 1, 16000,
                     audio::SampleFormat::Float);
}

}  // namespace

TEST(CmdFbankStats, FolderManifestAndListAgreeWithTheLibrary) {
  TempDir dir;
  write_stats_corpus(dir);
  const std::vector<std::string> all = {dir / "data/a/x.wav", dir / "data/a/y.flac", dir / "data/b/z.wav"};
  const Stats want = reference_stats(all);

  Result r = run(dir, "fbank-stats --source " + quote(dir / "data") + " --output " + quote(dir / "s.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  std::printf("%s", r.out.c_str());
  EXPECT_NE(r.out.find("--mean"), std::string::npos);
  Stats got = read_stats_json(dir / "s.json");
  EXPECT_NEAR(got.mean, want.mean, kStatsRelTol * std::abs(want.mean));
  EXPECT_NEAR(got.std, want.std, kStatsRelTol * want.std);
  EXPECT_EQ(got.clips, 3);
  EXPECT_EQ(got.frames, want.frames);
  EXPECT_EQ(got.skipped, 0);

  audio::test_util::write_bytes(dir / "data/list.txt", "a/x.wav\n# comment\nb/z.wav\n");
  r = run(dir, "fbank-stats --source " + quote(dir / "data/list.txt") + " --output " + quote(dir / "l.json") +
                   " --workers 0");
  ASSERT_EQ(r.code, 0) << r.err;
  const Stats want2 = reference_stats({all[0], all[2]});
  got = read_stats_json(dir / "l.json");
  EXPECT_NEAR(got.mean, want2.mean, kStatsRelTol * std::abs(want2.mean));
  EXPECT_NEAR(got.std, want2.std, kStatsRelTol * want2.std);

  audio::test_util::write_bytes(dir / "data/m.csv",
                                "path,label,split,group,source,license\n"
                                "a/x.wav,a,train,g1,synth,CC0\n"
                                "a/y.flac,a,test,g2,synth,CC0\n"
                                "b/z.wav,b,train,g3,synth,CC0\n");
  r = run(dir, "fbank-stats --source " + quote(dir / "data/m.csv") + " --split train --output " +
                   quote(dir / "m.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  got = read_stats_json(dir / "m.json");
  EXPECT_NEAR(got.mean, want2.mean, kStatsRelTol * std::abs(want2.mean));
  EXPECT_EQ(got.clips, 2);

  r = run(dir, "fbank-stats --help");
  EXPECT_EQ(r.code, 0);
  for (const char* flag : {"--source", "--split", "--max-seconds", "--limit", "--strict", "--output", "--path-column"})
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag;
}

TEST(CmdFbankStats, BadFilesAreReportedAndSkippedOrStopTheRun) {
  TempDir dir;
  write_stats_corpus(dir);
  audio::test_util::write_bytes(dir / "data/b/broken.wav", "RIFF not really");
  Result r = run(dir, "fbank-stats --source " + quote(dir / "data") + " --output " + quote(dir / "s.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find(dir / "data/b/broken.wav"), std::string::npos) << r.err;
  const Stats got = read_stats_json(dir / "s.json");
  EXPECT_EQ(got.skipped, 1);
  EXPECT_EQ(got.clips, 3);

  expect_clean_failure(dir, "fbank-stats --strict --source " + quote(dir / "data") + " --output " + quote(dir / "t.json"),
                       dir / "t.json", dir / "data/b/broken.wav");
  expect_clean_failure(dir, "fbank-stats --source " + quote(dir / "nothing"), dir / "none.json", dir / "nothing");
  expect_clean_failure(dir, "fbank-stats --source " + quote(dir / "data") + " --split nope", dir / "none.json",
                       "no audio files");
}
