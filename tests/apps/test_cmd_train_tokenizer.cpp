// Tests of the `sonar train-tokenizer` command as a user runs it: a synthetic corpus from `sonar synth-corpus`, a
// tiny teacher pre-trained for two steps by `sonar pretrain`, then a tokenizer trained for a few steps; the
// finished run is refused without --force; the tokenizer labels a clip with `sonar tokenize` and is taken by
// `sonar pretrain --tokenizer` (the BEATs loop model -> tokenizer -> model); Ctrl-C saves, exits 130 and the same
// command resumes; bad input fails with one line and writes nothing; --help documents every flag. The library
// behaviour (exact resume, loss, codebook) is tested in tests/sonar/test_tokenizer_trainer.cpp.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "nn/beats/checkpoint.h"
#include "tensor/io.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {

using sonar::testutil::count_lines_with;
using sonar::testutil::read_text_file;
using sonar::testutil::run_sonar;

// How long the Ctrl-C test waits for the first progress line before giving up (a loaded machine is slow).
constexpr int kFirstLineTimeoutSeconds = 120;

std::string tmp_dir(const std::string& name) {
  return sonar::testutil::fresh_tmp_path("sonar_test_cmd_train_tokenizer_", name);
}

// A corpus and a tiny teacher model, shared by the tests of this program (built on first use).
struct SharedRun {
  std::string root, corpus, teacher;
};
const SharedRun& setup() {
  static const SharedRun s = [] {
    SharedRun x;
    x.root = tmp_dir("shared");
    x.corpus = x.root + "/corpus";
    auto c = run_sonar("synth-corpus --out " + x.corpus + " --clips-per-class 4 --prior-clips 6 --seconds 1 --seed 2");
    EXPECT_EQ(c.code, 0) << c.out;
    auto p = run_sonar("pretrain --data " + x.corpus + "/speech.csv --out " + x.root + "/teacher --preset tiny"
                       " --codes 32 --steps 2 --batch 4 --crop-seconds 1 --seed 3 --threads 2");
    EXPECT_EQ(p.code, 0) << p.out;
    x.teacher = x.root + "/teacher/model.safetensors";
    return x;
  }();
  return s;
}

class SharedRunCleanup : public ::testing::Environment {
 public:
  void TearDown() override { fs::remove_all(tmp_dir("shared")); }
};
const ::testing::Environment* const kCleanup = ::testing::AddGlobalTestEnvironment(new SharedRunCleanup);

}  // namespace

TEST(CmdTrainTokenizer, TrainsRefusesAndFeedsTokenizeAndPretrain) {
  const SharedRun& s = setup();
  const std::string run = tmp_dir("run");
  const std::string flags = "train-tokenizer --teacher " + s.teacher + " --data " + s.corpus + "/speech.csv --out " +
                            run + " --codes 16 --steps 4 --batch 4 --crop-seconds 1 --lr 2e-3 --warmup 1"
                            " --log-every 2 --save-every 2 --seed 3 --threads 2";
  auto r = run_sonar(flags);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(count_lines_with(r.out, "step 2/4 | loss "), 1) << r.out;
  EXPECT_EQ(count_lines_with(r.out, "step 4/4 | loss "), 1) << r.out;
  EXPECT_EQ(count_lines_with(r.out, " | codes "), 2) << r.out;
  EXPECT_NE(r.out.find("finished: "), std::string::npos) << r.out;
  for (const char* f : {"checkpoint.safetensors", "tokenizer.safetensors", "run.json", "metrics.jsonl"})
    EXPECT_TRUE(fs::exists(fs::path(run) / f)) << f;
  EXPECT_EQ(count_lines_with(read_text_file(run + "/metrics.jsonl"), "\"perplexity\""), 2);

  // A finished run is refused, and nothing is touched.
  const auto stamp = fs::last_write_time(fs::path(run) / "tokenizer.safetensors");
  auto again = run_sonar(flags);
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.out.find("holds a finished run (4 steps)"), std::string::npos) << again.out;
  EXPECT_EQ(std::count(again.out.begin(), again.out.end(), '\n'), 1) << again.out;
  EXPECT_EQ(fs::last_write_time(fs::path(run) / "tokenizer.safetensors"), stamp);

  // `sonar info` and `sonar tokenize` read the tokenizer: labels of one clip, all in [0, 16).
  auto info = run_sonar("info " + run + "/tokenizer.safetensors");
  ASSERT_EQ(info.code, 0) << info.out;
  EXPECT_NE(info.out.find("kind: tokenizer"), std::string::npos) << info.out;
  std::string clip;
  for (const auto& e : fs::recursive_directory_iterator(s.corpus))
    if (e.path().extension() == ".wav") {
      clip = e.path().string();
      break;
    }
  ASSERT_FALSE(clip.empty());
  const std::string labels_npy = run + "/labels.npy";
  auto tok = run_sonar("tokenize --tokenizer " + run + "/tokenizer.safetensors --input " + clip + " --output " +
                       labels_npy);
  ASSERT_EQ(tok.code, 0) << tok.out;
  const sonar::Tensor labels = sonar::load_npy(labels_npy);
  ASSERT_GT(labels.numel(), 0);
  for (int64_t v : labels.to(sonar::DType::Int64).to_vector<int64_t>()) {
    EXPECT_GE(v, 0);
    EXPECT_LT(v, 16);
  }

  // The next model iteration pre-trains on the new tokenizer's labels.
  auto pre = run_sonar("pretrain --data " + s.corpus + "/speech.csv --out " + run + "/next --init " + s.teacher +
                       " --tokenizer " + run + "/tokenizer.safetensors --steps 2 --batch 4 --crop-seconds 1"
                       " --log-every 1 --threads 2");
  ASSERT_EQ(pre.code, 0) << pre.out;
  EXPECT_NE(pre.out.find("tokenizer tokenizer (16 codes)"), std::string::npos) << pre.out;
  fs::remove_all(run);
}

namespace {

struct Interrupted {
  bool started = false;  // the awaited line appeared before the timeout
  int status = -1;       // waitpid status
  std::string out;       // stdout and stderr together
};

// Runs `sonar args...`, waits until its output contains `wait_for`, sends SIGINT as Ctrl-C does, and waits for
// the process to end.
Interrupted run_and_interrupt(const std::vector<std::string>& args, const std::string& log,
                              const std::string& wait_for) {
  Interrupted r;
  const pid_t pid = fork();
  if (pid < 0) return r;
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv((std::string(SONAR_BINARY_DIR) + "/sonar").c_str(), argv.data());
    _exit(127);
  }
  for (int i = 0; i < kFirstLineTimeoutSeconds * 10 && !r.started; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    r.started = read_text_file(log).find(wait_for) != std::string::npos;
  }
  kill(pid, SIGINT);
  waitpid(pid, &r.status, 0);
  r.out = read_text_file(log);
  return r;
}

}  // namespace

TEST(CmdTrainTokenizer, CtrlCSavesExits130AndTheCommandResumes) {
  const SharedRun& s = setup();
  const std::string run = tmp_dir("ctrlc");
  const std::string log = run + ".log";
  const std::vector<std::string> args = {"sonar", "train-tokenizer", "--teacher", s.teacher, "--data",
                                         s.corpus + "/speech.csv", "--out", run, "--codes", "16", "--steps",
                                         "100000", "--batch", "4", "--crop-seconds", "1", "--log-every", "1",
                                         "--save-every", "1000", "--threads", "2"};
  auto saved_step = [&]() {
    const sonar::beats::CheckpointData c = sonar::beats::read_checkpoint(run + "/checkpoint.safetensors");
    EXPECT_EQ(c.metadata.at("trainer.finished"), "0");
    return std::stoll(c.metadata.at("trainer.step"));
  };
  // Interrupted after its first step: the step in progress is finished and saved, exit status 130.
  const Interrupted a = run_and_interrupt(args, log, "step 1/100000");
  ASSERT_TRUE(a.started) << a.out;
  ASSERT_TRUE(WIFEXITED(a.status)) << a.out;
  EXPECT_EQ(WEXITSTATUS(a.status), 130) << a.out;
  EXPECT_NE(a.out.find("stopping after this step"), std::string::npos) << a.out;
  const int64_t first = saved_step();
  EXPECT_GE(first, 1);
  EXPECT_NE(a.out.find("stopped at step " + std::to_string(first) + "/100000"), std::string::npos) << a.out;

  // The same command resumes from there, and is interrupted again one step later.
  const std::string next = "step " + std::to_string(first + 1) + "/100000";
  const Interrupted b = run_and_interrupt(args, log, next);
  ASSERT_TRUE(b.started) << b.out;
  ASSERT_TRUE(WIFEXITED(b.status)) << b.out;
  EXPECT_EQ(WEXITSTATUS(b.status), 130) << b.out;
  EXPECT_NE(b.out.find("resuming " + run), std::string::npos) << b.out;
  EXPECT_NE(b.out.find("; at step " + std::to_string(first) + "/100000"), std::string::npos) << b.out;
  EXPECT_GT(saved_step(), first);

  // A resume with a changed option is refused, naming it.
  std::string cmd;
  for (size_t i = 1; i < args.size(); ++i) cmd += (args[i] == "100000" ? std::string("50") : args[i]) + " ";
  auto changed = run_sonar(cmd);
  EXPECT_NE(changed.code, 0);
  EXPECT_NE(changed.out.find("(steps: 100000 there, 50 now)"), std::string::npos) << changed.out;
  EXPECT_EQ(std::count(changed.out.begin(), changed.out.end(), '\n'), 1) << changed.out;
  fs::remove_all(run);
  fs::remove(log);
}

TEST(CmdTrainTokenizer, BadInputFailsWithOneLineAndWritesNothing) {
  const SharedRun& s = setup();
  const std::string root = tmp_dir("bad");
  fs::create_directories(root);
  const std::string base = "train-tokenizer --data " + s.corpus + "/speech.csv --out " + root + "/r ";
  const std::string tok = s.root + "/teacher/tokenizer.safetensors";  // a random-projection tokenizer
  struct Case {
    std::string args, needle;
  };
  const std::vector<Case> cases = {
      {base + "--teacher " + tok, "this is a random_projection_tokenizer checkpoint, not a BEATs model (--teacher)"},
      {base + "--teacher " + root + "/missing.pt", "missing.pt"},
      {base + "--teacher " + s.corpus + "/speech.csv", "neither a PyTorch .pt"},
      {"train-tokenizer --data " + s.corpus + "/speech.csv --out " + root + "/r", "missing required flag --teacher"},
      {"train-tokenizer --teacher " + s.teacher + " --data " + root + "/missing.csv --out " + root + "/r",
       "missing.csv"},
      {base + "--teacher " + s.teacher + " --codes 1", "--codes must be at least 2, got 1"},
      {base + "--teacher " + s.teacher + " --init " + s.teacher, "not a BEATs tokenizer (--init)"},
      {base + "--teacher " + s.teacher + " --init " + tok + " --codes 8", "cannot be combined with --init"},
      {base + "--teacher " + s.teacher + " --init " + tok + " --preset tiny", "either --init or --preset"},
      {base + "--teacher " + s.teacher + " --steps 0", "--steps must be positive"},
      {base + "--teacher " + s.teacher + " --preset huge", "unknown model preset 'huge'"},
      {base + "--teacher " + s.teacher + " --estimator-layers 0", "--estimator-layers must be in [1, 48]"},
      {base + "--teacher " + s.teacher + " --commitment -1", "--commitment must be"},
      {base + "--teacher " + s.teacher + " --bogus 1", "unknown flag --bogus"},
  };
  for (const auto& c : cases) sonar::testutil::expect_sonar_fails_in_one_line(c.args, c.needle);
  EXPECT_FALSE(fs::exists(root + "/r"));
  fs::remove_all(root);
}

TEST(CmdTrainTokenizer, HelpExplainsEveryFlag) {
  auto r = run_sonar("train-tokenizer --help");
  ASSERT_EQ(r.code, 0);
  for (const char* f : {"--teacher", "--data", "--splits", "--out", "--init", "--preset", "--codes", "--commitment",
                        "--estimator-layers", "--steps", "--batch", "--crop-seconds", "--max-clip-seconds", "--lr",
                        "--warmup", "--final-lr", "--weight-decay", "--clip-grad", "--seed", "--log-every",
                        "--save-every", "--threads", "--workers", "--cache", "--force"})
    EXPECT_EQ(count_lines_with(r.out, std::string("  ") + f + " "), 1) << f;
  auto all = run_sonar("--help");
  EXPECT_NE(all.out.find("train-tokenizer"), std::string::npos) << all.out;
}
