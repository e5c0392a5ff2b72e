// Tests of the continual pre-training loop (sonar/trainer.h) on a tiny synthetic corpus: a run interrupted
// without saving and resumed gives the same weights, optimiser state and losses as a straight run; the progress
// line's format; the masked-label loss falls on a tiny model; finished or different runs are refused (and
// --force starts over); a corrupted checkpoint is reported clearly; extension hooks are called and their state
// survives a resume; bad options fail before anything is written. Not tested here: the command line
// (tests/apps/test_cmd_pretrain.cpp) or the pre-training objective itself (tests/nn/test_beats_pretrain.cpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "audio/dataset.h"
#include "audio/synth_corpus.h"
#include "autograd/ops.h"
#include "nn/beats/checkpoint.h"
#include "sonar/trainer.h"
#include "tensor/io.h"
#include "tests/sonar/sonar_test_util.h"

namespace fs = std::filesystem;
using namespace sonar;
using namespace sonar::method;
using namespace sonar::testutil;

namespace {

// A resumed run must reproduce the straight run exactly: same batches, crops, masks, dropout and optimiser
// state, on the same machine and thread count. Zero means bit-identical.
constexpr float kResumeTolerance = 0.0f;
// The masked-label loss of a tiny model over 40 steps: the mean of the last 5 steps at least this far below the
// mean of the first 5 (relative).
constexpr double kMinLossDrop = 0.15;
// Extension test: the extra term is this multiple of the masked-label loss.
constexpr float kExtraWeight = 0.5f;
constexpr double kLossRelTol = 1e-6;  // relative: a float32 sum vs. the same sum recomputed in double

fs::path corpus_path() { return fs::temp_directory_path() / ("sonar_test_trainer_corpus_" + std::to_string(::getpid())); }

// 16 clips per domain, 8 prior clips, seed 5; removed after the last test.
std::string corpus_dir() {
  static const std::string dir = build_tiny_corpus(corpus_path(), 8, 5);
  return dir;
}
const ::testing::Environment* const kCleanup = remove_after_all_tests({corpus_path()});

std::string run_dir(const std::string& name) { return fresh_tmp_path("sonar_test_trainer_", name); }

// The tiny preset on 1-second crops of the 16 music clips, batches of 4 (4 batches per epoch), seed 11.
PretrainOptions tiny_options(const std::string& out, int64_t steps) {
  return tiny_run_options<PretrainOptions>(corpus_dir() + "/music.csv", out, steps, 11);
}

}  // namespace

TEST(Trainer, InterruptedAndResumedRunEqualsStraightRun) {
  const std::string straight = run_dir("straight"), resumed = run_dir("resumed");
  PretrainResult a = pretrain(tiny_options(straight, 6));
  ASSERT_TRUE(a.finished);
  ASSERT_EQ(a.history.size(), 6u);

  // Killed after step 4: the checkpoint of step 3 survives, step 4 is lost and redone.
  PretrainOptions ob = tiny_options(resumed, 6);
  ob.halt_after = 4;
  PretrainResult b1 = pretrain(ob);
  EXPECT_FALSE(b1.finished);
  EXPECT_TRUE(b1.stopped);
  EXPECT_EQ(b1.steps_done, 4);
  ob.halt_after = -1;
  PretrainResult b2 = pretrain(ob);
  EXPECT_TRUE(b2.resumed);
  EXPECT_EQ(b2.start_step, 3);
  ASSERT_TRUE(b2.finished);
  ASSERT_EQ(b2.history.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(b2.history[i].step, a.history[3 + i].step);
    EXPECT_EQ(b2.history[i].loss, a.history[3 + i].loss) << "step " << b2.history[i].step;
    EXPECT_EQ(b2.history[i].accuracy, a.history[3 + i].accuracy);
    EXPECT_EQ(b2.history[i].lr, a.history[3 + i].lr);
  }
  // The lost step 4 was redone identically.
  EXPECT_EQ(b1.history[3].loss, a.history[3].loss);
  expect_same_checkpoint(straight + "/checkpoint.safetensors", resumed + "/checkpoint.safetensors", kResumeTolerance);
  expect_same_checkpoint(straight + "/model.safetensors", resumed + "/model.safetensors", kResumeTolerance);
  // The finished model loads as a plain BEATs model.
  auto m = beats::load_beats(resumed + "/model.safetensors");
  EXPECT_EQ(m->cfg.encoder_layers, 2);
  fs::remove_all(straight);
  fs::remove_all(resumed);
}

TEST(Trainer, ProgressLineFormat) {
  Progress p;
  p.step = 20;
  p.total = 300;
  p.loss = 5.23126;
  p.accuracy = 0.0412;
  p.lr = 2e-4;
  p.clips_per_second = 52.14;
  p.elapsed_seconds = 12.4;
  p.eta_seconds = 3723.0;
  p.data_wait = 0.013;
  EXPECT_EQ(format_progress(p), "step 20/300 | loss 5.2313 | acc 0.041 | lr 2.00e-04 | 52.1 clips/s | elapsed 0:00:12 "
                                "| left 1:02:03 | wait 1%");
  p.extra = {{"distill", 0.5}};
  EXPECT_EQ(format_progress(p).substr(format_progress(p).size() - 17), " | distill 0.5000");
  p.extra = {{"codebook_size", 1027.0}};  // a count: no decimals
  EXPECT_EQ(format_progress(p).substr(format_progress(p).size() - 21), " | codebook_size 1027");
  EXPECT_EQ(format_duration(-1.0), "?");
  EXPECT_EQ(format_duration(59.6), "0:01:00");

  // The lines a run prints: a header, one progress line per log_every steps, the end.
  std::vector<std::string> lines;
  PretrainOptions o = tiny_options(run_dir("progress"), 4);
  o.log = [&](const std::string& l) { lines.push_back(l); };
  pretrain(o);
  const std::regex re(
      R"(step (\d+)/4 \| loss \d+\.\d{4} \| acc [01]\.\d{3} \| lr \d\.\d{2}e[-+]\d{2} \| \d+\.\d clips/s \| )"
      R"(elapsed \d+:\d\d:\d\d \| left \d+:\d\d:\d\d \| wait \d+%)");
  std::vector<int> steps;
  for (const auto& l : lines) {
    std::smatch m;
    if (std::regex_match(l, m, re)) steps.push_back(std::stoi(m[1]));
  }
  EXPECT_EQ(steps, (std::vector<int>{2, 4}));
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.front().rfind("model: fresh 'tiny'", 0), 0u) << lines.front();
  EXPECT_EQ(lines.back().rfind("finished: ", 0), 0u) << lines.back();
  fs::remove_all(o.out_dir);
}

TEST(Trainer, LossFallsOnATinyModel) {
  PretrainOptions o = tiny_options(run_dir("falls"), 40);
  o.batch_size = 8;
  o.warmup_steps = 4;
  o.save_every = 100;
  PretrainResult r = pretrain(o);
  ASSERT_EQ(r.history.size(), 40u);
  double first = 0, last = 0, acc_first = 0, acc_last = 0;
  for (int i = 0; i < 5; ++i) {
    first += r.history[i].loss / 5;
    last += r.history[35 + i].loss / 5;
    acc_first += r.history[i].accuracy / 5;
    acc_last += r.history[35 + i].accuracy / 5;
  }
  EXPECT_LT(last, first * (1.0 - kMinLossDrop)) << "first " << first << " last " << last;
  EXPECT_GT(acc_last, acc_first);
  for (const auto& h : r.history) EXPECT_LE(h.lr, o.adamw.lr * (1 + 1e-6));
  EXPECT_EQ(r.history[0].lr, 0.0);                      // warm-up starts at 0
  EXPECT_NEAR(r.history[4].lr, o.adamw.lr, 1e-9);       // peak after 4 warm-up steps
  EXPECT_LT(r.history[39].lr, o.adamw.lr * 0.01);       // cosine down to ~0
  fs::remove_all(o.out_dir);
}

TEST(Trainer, RefusesFinishedOrDifferentRunsUnlessForced) {
  const std::string dir = run_dir("refuse");
  pretrain(tiny_options(dir, 2));
  const auto stamp = fs::last_write_time(dir + "/model.safetensors");
  try {
    pretrain(tiny_options(dir, 2));
    FAIL() << "a finished run was overwritten";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("finished run (2 steps)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--force"), std::string::npos) << e.what();
  }
  EXPECT_EQ(fs::last_write_time(dir + "/model.safetensors"), stamp);

  PretrainOptions f = tiny_options(dir, 2);
  f.force = true;
  PretrainResult r = pretrain(f);
  EXPECT_FALSE(r.resumed);
  EXPECT_EQ(r.start_step, 0);
  EXPECT_TRUE(r.finished);

  // An unfinished run started with other options.
  PretrainOptions h = tiny_options(dir, 6);
  h.force = true;
  h.halt_after = 3;
  pretrain(h);
  PretrainOptions other = tiny_options(dir, 6);
  other.batch_size = 2;
  try {
    pretrain(other);
    FAIL() << "a run with other options was resumed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("batch: 4 there, 2 now"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(Trainer, CorruptedCheckpointIsAClearError) {
  const std::string dir = run_dir("corrupt");
  PretrainOptions o = tiny_options(dir, 6);
  o.halt_after = 3;
  pretrain(o);
  const std::string ckpt = dir + "/checkpoint.safetensors";
  ASSERT_TRUE(fs::exists(ckpt));
  // Cut the file in half, as a full disk might have (the trainer itself writes through a rename).
  const std::string bytes = read_file(ckpt);
  {
    std::ofstream f(ckpt, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  o.halt_after = -1;
  try {
    pretrain(o);
    FAIL() << "a truncated checkpoint was accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cannot resume from " + ckpt), std::string::npos) << msg;
    EXPECT_NE(msg.find("--force"), std::string::npos) << msg;
  }
  // Not a trainer checkpoint: a plain model file under the checkpoint's name.
  fs::copy_file(corpus_dir() + "/music.csv", ckpt, fs::copy_options::overwrite_existing);
  try {
    pretrain(o);
    FAIL() << "a CSV file was accepted as a checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("neither a PyTorch .pt"), std::string::npos) << e.what();
  }
  o.force = true;
  EXPECT_TRUE(pretrain(o).finished);
  fs::remove_all(dir);
}

namespace {

// Adds kExtraWeight x the masked-label loss, records what it saw, and keeps a step counter in the checkpoint.
class CountingExtension : public TrainerExtension {
 public:
  std::string name() const override { return "count"; }
  nlohmann::json config() const override { return {{"weight", kExtraWeight}}; }
  void attach(Trainer& t) override { attached = t.model() != nullptr && t.optimizer().num_params() > 0; }
  void on_batch(StepBatch& b) override { ++batches; }
  ag::Var extra_loss(const StepBatch&, const beats::MlpOutput& out) override {
    return ag::mul(out.loss, kExtraWeight);
  }
  void after_step(const StepBatch&, const beats::MlpOutput& out) override {
    mlp_losses.push_back(out.loss.value().item_double());
    ++counter;
  }
  std::vector<std::pair<std::string, double>> progress() override { return {{"count", double(counter)}}; }
  void save_state(std::map<std::string, Tensor>& t, std::map<std::string, std::string>& m) const override {
    m["counter"] = std::to_string(counter);
    t["marker"] = from_vector(std::vector<float>{static_cast<float>(counter)}, {1});
  }
  void load_state(const std::map<std::string, Tensor>& t, const std::map<std::string, std::string>& m) override {
    counter = std::stoll(m.at("counter"));
    loaded_marker = t.at("marker").item<float>();
  }
  bool attached = false;
  int64_t batches = 0, counter = 0;
  float loaded_marker = -1;
  std::vector<double> mlp_losses;
};

}  // namespace

TEST(Trainer, ExtensionHooksAndStateSurviveResume) {
  const std::string dir = run_dir("ext");
  auto ext = std::make_shared<CountingExtension>();
  PretrainOptions o = tiny_options(dir, 5);
  o.halt_after = 4;  // saved at 3
  std::vector<std::string> lines;
  o.log = [&](const std::string& l) { lines.push_back(l); };
  PretrainResult r = Trainer(o, {ext}).run();
  EXPECT_TRUE(ext->attached);
  EXPECT_EQ(ext->batches, 4);
  ASSERT_EQ(ext->mlp_losses.size(), 4u);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_NEAR(r.history[i].loss, (1.0 + kExtraWeight) * ext->mlp_losses[i], kLossRelTol * r.history[i].loss);
  bool saw_field = false;
  for (const auto& l : lines) saw_field = saw_field || l.find(" | count 2") != std::string::npos;
  EXPECT_TRUE(saw_field);

  auto ext2 = std::make_shared<CountingExtension>();
  o.halt_after = -1;
  PretrainResult r2 = Trainer(o, {ext2}).run();
  EXPECT_EQ(r2.start_step, 3);
  EXPECT_EQ(ext2->loaded_marker, 3.0f);
  EXPECT_EQ(ext2->counter, 5);  // 3 restored + 2 new steps
  // A resume without the extension is a run with other options.
  PretrainOptions o3 = tiny_options(dir, 5);
  o3.force = true;
  o3.halt_after = 4;  // checkpoint at step 3
  Trainer(o3, {std::make_shared<CountingExtension>()}).run();
  o3.force = false;
  try {
    pretrain(o3);
    FAIL() << "resumed without the extension";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("extension count"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

// A clip too short to train on is skipped every epoch that draws it, but reported once, and counted at the end.
TEST(Trainer, ASkippedClipIsReportedOnceAndCounted) {
  const std::string dir = run_dir("skips");
  const fs::path data = fs::path(run_dir("skips_data"));
  fs::create_directories(data);
  // 15 of the music clips and one 0.05 s blip: 16 clips, 4 batches of 4, so every epoch draws the blip.
  const audio::Dataset music = audio::read_manifest(corpus_dir() + "/music.csv");
  ASSERT_GE(music.size(), 15);
  std::ofstream out(data / "data.csv");
  out << "path\n";
  for (int n = 0; n < 15; ++n) out << fs::absolute(music.items[static_cast<size_t>(n)].path).string() << "\n";
  audio::synth_write_wav((data / "blip.wav").string(), std::vector<float>(800, 0.1f), 16000, false);
  out << (data / "blip.wav").string() << "\n";
  out.close();
  PretrainOptions o = tiny_options(dir, 12);  // 3 epochs
  o.data = (data / "data.csv").string();
  std::vector<std::string> lines;
  o.log = [&](const std::string& s) { lines.push_back(s); };
  ASSERT_TRUE(pretrain(o).finished);
  int reported = 0;
  for (const auto& l : lines) reported += l.rfind("skipping " + (data / "blip.wav").string() + ": too short", 0) == 0;
  EXPECT_EQ(reported, 1);
  EXPECT_NE(std::find(lines.begin(), lines.end(),
                      "skipped 1 clip that could not be used, drawn 3 times in this session (each listed above when "
                      "first drawn)"),
            lines.end());
  fs::remove_all(dir);
  fs::remove_all(data);
}

TEST(Trainer, BadOptionsFailBeforeWritingAnything) {
  const std::string dir = run_dir("bad");
  auto expect_error = [&](PretrainOptions o, const std::string& needle) {
    try {
      pretrain(o);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir)) << needle;
  };
  PretrainOptions o = tiny_options(dir, 3);
  o.steps = 0;
  expect_error(o, "--steps must be positive");
  o = tiny_options(dir, 3);
  o.preset = "huge";
  expect_error(o, "unknown model preset 'huge'");
  o = tiny_options(dir, 3);
  o.data = corpus_dir() + "/missing.csv";
  expect_error(o, "missing.csv");
  o = tiny_options(dir, 3);
  o.init = corpus_dir() + "/music.csv";
  expect_error(o, "neither a PyTorch .pt");
  o = tiny_options(dir, 3);
  o.crop_seconds = 0.1;
  o.max_clip_seconds = 1.0;
  expect_error(o, "shorter than one 16-frame patch");
  o = tiny_options(dir, 3);
  o.splits = {"nonexistent"};
  expect_error(o, "no audio clips in the selected splits");
  // Files that exist but are not audio: every clip of the epoch is skipped, which is an error, not a hang.
  const fs::path junk = fs::path(run_dir("junk"));
  fs::create_directories(junk);
  for (const char* f : {"a.wav", "b.wav"}) std::ofstream(junk / f) << "not audio";
  std::ofstream(junk / "list.txt") << "a.wav\nb.wav\n";
  o = tiny_options(dir, 3);
  o.data = (junk / "list.txt").string();
  expect_error(o, "clips of an epoch were skipped");
  fs::remove_all(junk);
}
