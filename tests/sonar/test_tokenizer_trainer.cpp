// Tests of the tokenizer-training run (sonar/tokenizer_trainer.h) with a tiny teacher (a fresh tiny BEATs saved
// with save_beats) on a tiny synthetic corpus: the code-usage statistics against a hand count and the progress
// line's format; a run interrupted without saving and resumed equals a straight run bit for bit; the distillation
// loss falls, the codebook is k-means-initialised on the first batch and used, metrics.jsonl has one line per
// logged step, and the finished tokenizer loads as a label tokenizer and serves as `pretrain`'s targets; the stop
// flag saves and a resume continues; finished or different runs are refused naming the option; bad input fails
// before anything is written; official .pt checkpoints serve as teacher and --init. Not tested here: the command line (tests/apps/test_cmd_train_tokenizer.cpp) or the
// distillation loss itself (tests/nn/test_beats_pretrain.cpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "audio/synth_corpus.h"
#include "nn/beats/checkpoint.h"
#include "sonar/tokenizer_trainer.h"
#include "sonar/trainer.h"
#include "tensor/io.h"
#include "tensor/random.h"
#include "tests/sonar/sonar_test_util.h"

namespace fs = std::filesystem;
using namespace sonar;
using namespace sonar::method;
using namespace sonar::testutil;

namespace {

// A resumed run must reproduce the straight run exactly (same machine and thread count): zero means bit-identical.
constexpr float kResumeTolerance = 0.0f;
// Distillation loss over kFallSteps steps at lr 2e-3: the mean of the last 5 steps at least this far below the
// mean of the first 5 (relative). Measured on AMD EPYC (Zen 5), 2 threads: 1.007 -> 0.305, a drop of 0.70.
constexpr int kFallSteps = 40;
constexpr double kMinLossDrop = 0.5;
// Codebook of the test runs, and the share of it the first batch (192 real patches) must reach after the
// k-means initialisation on that batch (measured: 32 of 32).
constexpr int64_t kCodes = 32;
constexpr double kMinFirstBatchUsage = 0.75;
// Distinct codes over each logged 10-step interval, after the usage has settled (measured: 12 or more; the
// EMA codebook of a fast-moving encoder loses codes, see docs/training.md).
constexpr int64_t kMinCodesUsed = 4;
constexpr double kUnitNormTol = 1e-5;  // |‖code‖ - 1| of every code after EMA updates (renormalised each step)
constexpr double kPerplexityTol = 1e-12;
// --init's codebook after 3 steps: the smallest cosine between a code and its start (EMA decay 0.99 moves a
// code by a few percent per step at most; measured 0.9997).
constexpr double kKeptCodeMinCosine = 0.9;

// This program's scratch folder (created on first use; removed at the end).
fs::path scratch() {
  static const fs::path dir = [] {
    fs::path p = fs::temp_directory_path() / ("sonar_test_toktrainer_" + std::to_string(::getpid()));
    fs::create_directories(p);
    return p;
  }();
  return dir;
}

// 16 clips per domain, 8 prior clips, seed 5.
std::string corpus_dir() {
  static const std::string dir = build_tiny_corpus(scratch() / "corpus", 8, 5);
  return dir;
}

// The teacher: a fresh tiny BEATs (2 blocks, 64 wide), seeded, saved as a project safetensors model.
std::string teacher_path() {
  static const std::string path = [] {
    Generator gen(77);
    beats::BeatsModel m(preset_config("tiny"), &gen);
    const std::string p = (scratch() / "teacher.safetensors").string();
    beats::save_beats(p, m);
    return p;
  }();
  return path;
}

const ::testing::Environment* const kCleanup = remove_after_all_tests({scratch()});

std::string run_dir(const std::string& name) {
  fs::path p = scratch() / ("run_" + name);
  fs::remove_all(p);
  return p.string();
}

// A fresh tiny tokenizer with 32 codes on 1-second crops of the 16 music clips, batches of 4, seed 11.
TokenizerTrainOptions tiny_options(const std::string& out, int64_t steps) {
  TokenizerTrainOptions o = tiny_run_options<TokenizerTrainOptions>(corpus_dir() + "/music.csv", out, steps, 11);
  o.teacher = teacher_path();
  o.codes = kCodes;
  return o;
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  for (std::string l; std::getline(in, l);) out.push_back(nlohmann::json::parse(l));
  return out;
}

}  // namespace

TEST(TokenizerTrainer, CodeUsageMatchesAHandCount) {
  // 8 patches: 4 on code 0, 2 on code 2, 2 on code 3. H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2, so exp(H) = 2^1.5.
  CodeUsage u = code_usage({4, 0, 2, 2});
  EXPECT_EQ(u.codes_used, 3);
  EXPECT_NEAR(u.perplexity, std::pow(2.0, 1.5), kPerplexityTol);
  u = code_usage({5, 5, 5, 5});  // uniform: perplexity = K
  EXPECT_EQ(u.codes_used, 4);
  EXPECT_NEAR(u.perplexity, 4.0, kPerplexityTol);
  u = code_usage({0, 9, 0});  // collapse: perplexity 1
  EXPECT_EQ(u.codes_used, 1);
  EXPECT_NEAR(u.perplexity, 1.0, kPerplexityTol);
  u = code_usage({0, 0});
  EXPECT_EQ(u.codes_used, 0);
  EXPECT_EQ(u.perplexity, 0.0);
}

TEST(TokenizerTrainer, ProgressLineFormat) {
  TokenizerProgress p;
  p.step = 20;
  p.total = 300;
  p.loss = 0.61234;
  p.cosine_loss = 0.58712;
  p.codes_used = 187;
  p.codes = 256;
  p.perplexity = 152.34;
  p.lr = 2e-4;
  p.clips_per_second = 52.14;
  p.elapsed_seconds = 12.4;
  p.eta_seconds = 3723.0;
  p.data_wait = 0.013;
  EXPECT_EQ(format_tokenizer_progress(p),
            "step 20/300 | loss 0.6123 | cosine 0.5871 | codes 187/256 | perplexity 152.3 | lr 2.00e-04 | "
            "52.1 clips/s | elapsed 0:00:12 | left 1:02:03 | wait 1%");
}

TEST(TokenizerTrainer, InterruptedAndResumedRunEqualsStraightRun) {
  const std::string straight = run_dir("straight"), resumed = run_dir("resumed");
  TokenizerTrainResult a = train_tokenizer(tiny_options(straight, 6));
  ASSERT_TRUE(a.finished);
  ASSERT_EQ(a.history.size(), 6u);

  // Killed after step 4: the checkpoint of step 3 survives, step 4 is lost and redone.
  TokenizerTrainOptions ob = tiny_options(resumed, 6);
  ob.halt_after = 4;
  TokenizerTrainResult b1 = train_tokenizer(ob);
  EXPECT_FALSE(b1.finished);
  EXPECT_TRUE(b1.stopped);
  EXPECT_EQ(b1.steps_done, 4);
  EXPECT_FALSE(fs::exists(resumed + "/tokenizer.safetensors"));  // only written at the end
  ob.halt_after = -1;
  TokenizerTrainResult b2 = train_tokenizer(ob);
  EXPECT_TRUE(b2.resumed);
  EXPECT_EQ(b2.start_step, 3);
  ASSERT_TRUE(b2.finished);
  ASSERT_EQ(b2.history.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(b2.history[i].step, a.history[3 + i].step);
    EXPECT_EQ(b2.history[i].loss, a.history[3 + i].loss) << "step " << b2.history[i].step;
    EXPECT_EQ(b2.history[i].cosine_loss, a.history[3 + i].cosine_loss);
    EXPECT_EQ(b2.history[i].codes_used, a.history[3 + i].codes_used);
    EXPECT_EQ(b2.history[i].lr, a.history[3 + i].lr);
  }
  EXPECT_EQ(b1.history[3].loss, a.history[3].loss);  // the lost step 4 was redone identically
  expect_same_checkpoint(straight + "/checkpoint.safetensors", resumed + "/checkpoint.safetensors", kResumeTolerance);
  expect_same_checkpoint(straight + "/tokenizer.safetensors", resumed + "/tokenizer.safetensors", kResumeTolerance);
  // metrics.jsonl was cut back to step 3 on resume and continued: steps 2, 4, 6 once each.
  std::vector<int64_t> logged;
  for (const auto& j : read_jsonl(resumed + "/metrics.jsonl")) logged.push_back(j.at("step").get<int64_t>());
  EXPECT_EQ(logged, (std::vector<int64_t>{2, 4, 6}));
  fs::remove_all(straight);
  fs::remove_all(resumed);
}

TEST(TokenizerTrainer, LossFallsCodebookIsUsedAndTheTokenizerServesPretraining) {
  TokenizerTrainOptions o = tiny_options(run_dir("falls"), kFallSteps);
  o.batch_size = 4;
  o.warmup_steps = 4;
  o.log_every = 10;
  o.save_every = 100;
  std::vector<std::string> lines;
  o.log = [&](const std::string& l) { lines.push_back(l); };
  TokenizerTrainResult r = train_tokenizer(o);
  ASSERT_TRUE(r.finished);
  ASSERT_EQ(r.history.size(), static_cast<size_t>(kFallSteps));
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) {
    first += r.history[i].loss / 5;
    last += r.history[kFallSteps - 5 + i].loss / 5;
  }
  EXPECT_LT(last, first * (1.0 - kMinLossDrop)) << "first " << first << " last " << last;
  // Every patch of a 1 s crop is real (98 frames -> 6 x 8 patches): 4 clips give 192 patches a step.
  EXPECT_EQ(r.history[0].real_patches, 192);
  // The first batch's k-means spreads that batch over the codebook.
  EXPECT_GE(r.history[0].codes_used, static_cast<int64_t>(kMinFirstBatchUsage * kCodes)) << r.history[0].codes_used;
  for (const auto& h : r.history) EXPECT_LE(h.lr, o.adamw.lr * (1 + 1e-6));
  EXPECT_EQ(r.history[0].lr, 0.0);

  // Progress lines: a header, one line per 10 steps, the end.
  const std::regex re(
      R"(step (\d+)/40 \| loss \d+\.\d{4} \| cosine \d+\.\d{4} \| codes (\d+)/32 \| perplexity \d+\.\d \| )"
      R"(lr \d\.\d{2}e[-+]\d{2} \| \d+\.\d clips/s \| elapsed \d+:\d\d:\d\d \| left \d+:\d\d:\d\d \| wait \d+%)");
  std::vector<int> steps;
  for (const auto& l : lines) {
    std::smatch m;
    if (std::regex_match(l, m, re)) steps.push_back(std::stoi(m[1]));
  }
  EXPECT_EQ(steps, (std::vector<int>{10, 20, 30, 40}));
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.front().rfind("starting ", 0), 0u) << lines.front();
  EXPECT_EQ(lines.back().rfind("finished: ", 0), 0u) << lines.back();

  // metrics.jsonl: one object per logged step with the codebook's health.
  const auto metrics = read_jsonl(o.out_dir + "/metrics.jsonl");
  ASSERT_EQ(metrics.size(), 4u);
  for (const auto& j : metrics) {
    for (const char* k : {"loss", "cosine_loss", "commitment", "codes_used", "perplexity", "lr", "grad_norm"})
      EXPECT_TRUE(j.contains(k)) << k;
    EXPECT_GE(j.at("codes_used").get<int64_t>(), kMinCodesUsed);
    EXPECT_LE(j.at("codes_used").get<int64_t>(), kCodes);
    EXPECT_GE(j.at("perplexity").get<double>(), 1.0);
    EXPECT_LE(j.at("perplexity").get<double>(), j.at("codes_used").get<double>() + 1e-9);
  }
  // The averaged loss of the first line is the mean of steps 1-10.
  double mean10 = 0;
  for (int i = 0; i < 10; ++i) mean10 += r.history[i].loss / 10;
  EXPECT_NEAR(metrics[0].at("loss").get<double>(), mean10, 1e-12 * std::fabs(mean10) + 1e-15);

  // The finished tokenizer: initialised, unit-norm codes, loads as labels for pre-training.
  auto tok = beats::load_tokenizer(r.tokenizer);
  EXPECT_TRUE(tok->quantize->initialised());
  ASSERT_EQ(tok->quantize->num_codes(), kCodes);
  const Tensor cb = tok->quantize->codebook().contiguous();
  for (int64_t k = 0; k < kCodes; ++k) {
    double n2 = 0;
    for (int64_t d = 0; d < cb.size(1); ++d) n2 += double(cb.data<float>()[k * cb.size(1) + d]) * cb.data<float>()[k * cb.size(1) + d];
    EXPECT_NEAR(std::sqrt(n2), 1.0, kUnitNormTol) << "code " << k;
  }
  LabelTokenizer lt = LabelTokenizer::load(r.tokenizer);
  EXPECT_EQ(lt.kind(), "tokenizer");
  EXPECT_EQ(lt.num_codes(), kCodes);
  Generator fgen(3);
  const Tensor fbank = randn({2, 98, 128}, fgen);
  const Tensor labels = lt.labels(fbank, Tensor());
  ASSERT_EQ(labels.shape(), (Shape{2, 48}));
  std::set<int64_t> distinct;
  for (int64_t v : labels.to_vector<int64_t>()) {
    EXPECT_GE(v, 0);
    EXPECT_LT(v, kCodes);
    distinct.insert(v);
  }
  EXPECT_GT(distinct.size(), 1u);

  // The model's pre-training takes it as its targets.
  PretrainOptions po;
  po.data = corpus_dir() + "/music.csv";
  po.out_dir = run_dir("pretrain");
  po.tokenizer = r.tokenizer;
  po.preset = "tiny";
  po.crop_seconds = 1.0;
  po.max_clip_seconds = 2.0;
  po.batch_size = 4;
  po.steps = 2;
  po.log = [](const std::string&) {};
  PretrainResult pr = pretrain(po);
  EXPECT_TRUE(pr.finished);
  EXPECT_EQ(LabelTokenizer::load(po.out_dir + "/tokenizer.safetensors").fingerprint(), lt.fingerprint());
  fs::remove_all(po.out_dir);
  fs::remove_all(o.out_dir);
}

TEST(TokenizerTrainer, StopFlagSavesAndTheRunResumes) {
  const std::string dir = run_dir("stop");
  std::atomic<bool> stop{true};  // as if Ctrl-C came during the first step
  TokenizerTrainOptions o = tiny_options(dir, 4);
  o.stop = &stop;
  TokenizerTrainResult r = train_tokenizer(o);
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.steps_done, 1);
  auto c = beats::read_checkpoint(dir + "/checkpoint.safetensors");
  EXPECT_EQ(c.metadata.at("trainer.step"), "1");
  EXPECT_EQ(c.kind, beats::ModelKind::Tokenizer);  // the checkpoint is a loadable tokenizer too
  o.stop = nullptr;
  TokenizerTrainResult r2 = train_tokenizer(o);
  EXPECT_TRUE(r2.resumed);
  EXPECT_EQ(r2.start_step, 1);
  EXPECT_TRUE(r2.finished);
  fs::remove_all(dir);
}

TEST(TokenizerTrainer, RefusesFinishedOrDifferentRunsUnlessForced) {
  const std::string dir = run_dir("refuse");
  train_tokenizer(tiny_options(dir, 2));
  const auto stamp = fs::last_write_time(dir + "/tokenizer.safetensors");
  try {
    train_tokenizer(tiny_options(dir, 2));
    FAIL() << "a finished run was overwritten";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("finished run (2 steps)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--force"), std::string::npos) << e.what();
  }
  EXPECT_EQ(fs::last_write_time(dir + "/tokenizer.safetensors"), stamp);

  TokenizerTrainOptions f = tiny_options(dir, 2);
  f.force = true;
  TokenizerTrainResult r = train_tokenizer(f);
  EXPECT_FALSE(r.resumed);
  EXPECT_TRUE(r.finished);

  // An unfinished run resumed with another option: refused, naming it.
  TokenizerTrainOptions h = tiny_options(dir, 6);
  h.force = true;
  h.halt_after = 3;
  train_tokenizer(h);
  EXPECT_FALSE(fs::exists(dir + "/tokenizer.safetensors"));  // --force removed the finished run's output
  TokenizerTrainOptions other = tiny_options(dir, 6);
  other.commitment_weight = 0.5f;
  try {
    train_tokenizer(other);
    FAIL() << "a run with other options was resumed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("commitment: 1.0 there, 0.5 now"), std::string::npos) << e.what();
  }
  // Another teacher (other weights under the same name) is another option too.
  {
    Generator gen(78);
    beats::BeatsModel m(preset_config("tiny"), &gen);
    const std::string t2 = (scratch() / "teacher2.safetensors").string();
    beats::save_beats(t2, m);
    TokenizerTrainOptions t = tiny_options(dir, 6);
    t.teacher = t2;
    try {
      train_tokenizer(t);
      FAIL() << "a run with another teacher was resumed";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("(teacher: "), std::string::npos) << e.what();
    }
  }
  // A `sonar pretrain` run folder is not resumed as a tokenizer run.
  const std::string pdir = run_dir("pretrain_folder");
  PretrainOptions po;
  po.data = corpus_dir() + "/music.csv";
  po.out_dir = pdir;
  po.codes = kCodes;
  po.crop_seconds = 1.0;
  po.max_clip_seconds = 2.0;
  po.batch_size = 4;
  po.steps = 2;
  po.halt_after = 1;
  po.save_every = 1;
  po.log = [](const std::string&) {};
  pretrain(po);
  try {
    train_tokenizer(tiny_options(pdir, 2));
    FAIL() << "a pretrain checkpoint was resumed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("format 'sonar-trainer-1'"), std::string::npos) << e.what();
  }
  fs::remove_all(pdir);
  fs::remove_all(dir);
}

TEST(TokenizerTrainer, BadInputFailsBeforeWritingAnything) {
  const std::string dir = run_dir("bad");
  auto expect_error = [&](TokenizerTrainOptions o, const std::string& needle) {
    try {
      train_tokenizer(o);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir)) << needle;
  };
  // A tokenizer checkpoint as the teacher.
  const std::string tok = (scratch() / "a_tokenizer.safetensors").string();
  {
    Generator gen(5);
    beats::BeatsConfig cfg = preset_config("tiny");
    cfg.quant_n = kCodes;
    beats::BeatsTokenizer t(cfg, &gen);
    beats::save_tokenizer(tok, t);
  }
  TokenizerTrainOptions o = tiny_options(dir, 3);
  o.teacher = tok;
  expect_error(o, "a_tokenizer.safetensors: this is a tokenizer checkpoint, not a BEATs model (--teacher)");
  o = tiny_options(dir, 3);
  o.teacher = (scratch() / "missing.pt").string();
  expect_error(o, "missing.pt");
  o = tiny_options(dir, 3);
  o.teacher = corpus_dir() + "/music.csv";
  expect_error(o, "neither a PyTorch .pt");
  // A model as --init.
  o = tiny_options(dir, 3);
  o.codes = 0;
  o.init = teacher_path();
  expect_error(o, "this is a pretrained checkpoint, not a BEATs tokenizer (--init)");
  o = tiny_options(dir, 3);
  o.init = tok;
  expect_error(o, "cannot be combined with --init");
  o = tiny_options(dir, 3);
  o.codes = 1;
  expect_error(o, "--codes must be at least 2, got 1");
  o = tiny_options(dir, 3);
  o.data = corpus_dir() + "/missing.csv";
  expect_error(o, "missing.csv");
  o = tiny_options(dir, 3);
  o.preset = "huge";
  expect_error(o, "unknown model preset 'huge'");
  o = tiny_options(dir, 3);
  o.commitment_weight = -1.0f;
  expect_error(o, "--commitment must be");
  o = tiny_options(dir, 3);
  o.estimator_layers = 0;
  expect_error(o, "--estimator-layers must be in [1, 48], got 0");
  o = tiny_options(dir, 3);
  o.crop_seconds = 0.1;
  o.max_clip_seconds = 1.0;
  expect_error(o, "shorter than one 16-frame patch");
  // Files that exist but are not audio: every clip of the epoch is skipped, an error, not a hang.
  const fs::path junk = scratch() / "junk";
  fs::create_directories(junk);
  for (const char* f : {"a.wav", "b.wav"}) std::ofstream(junk / f) << "not audio";
  std::ofstream(junk / "list.txt") << "a.wav\nb.wav\n";
  o = tiny_options(dir, 3);
  o.data = (junk / "list.txt").string();
  expect_error(o, "clips of an epoch were skipped");

  // Continuing a tokenizer checkpoint works (its codebook size is kept; not yet initialised: k-means).
  o = tiny_options(dir, 2);
  o.codes = 0;
  o.init = tok;
  TokenizerTrainResult r = train_tokenizer(o);
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(beats::load_tokenizer(r.tokenizer)->quantize->num_codes(), kCodes);
  fs::remove_all(dir);
}

TEST(TokenizerTrainer, OfficialCheckpointsAsTeacherAndInit) {
  // The official .pt formats (tiny fixtures written by the official code): a fine-tuned BEATs as the teacher (its
  // encoder's last layer; the classifier head is not used) and a tokenizer whose codebook is kept.
  const std::string fixtures = std::string(SONAR_FIXTURES_DIR) + "/beats_tiny";
  const auto start = beats::load_tokenizer(fixtures + "/tokenizer.pt");
  TokenizerTrainOptions o = tiny_options(run_dir("official"), 3);
  o.teacher = fixtures + "/beats_finetuned.pt";
  o.init = fixtures + "/tokenizer.pt";
  o.codes = 0;
  TokenizerTrainResult r = train_tokenizer(o);
  ASSERT_TRUE(r.finished);
  for (const auto& h : r.history) EXPECT_TRUE(std::isfinite(h.loss));
  const auto tok = beats::load_tokenizer(r.tokenizer);
  EXPECT_EQ(tok->quantize->num_codes(), start->quantize->num_codes());
  EXPECT_EQ(tok->cfg.encoder_embed_dim, start->cfg.encoder_embed_dim);
  // The codebook was kept (no k-means) and moved by EMA from there: it changed, yet every code stays close to
  // where it started (3 EMA steps of decay 0.99), which a re-initialisation would not give.
  EXPECT_GT(max_abs_diff_nan_aware(tok->quantize->codebook(), start->quantize->codebook()), 0.0f);
  const Tensor a = tok->quantize->codebook().contiguous(), b = start->quantize->codebook().contiguous();
  const int64_t K = a.size(0), D = a.size(1);
  double min_cos = 1.0;
  for (int64_t k = 0; k < K; ++k) {
    double dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += double(a.data<float>()[k * D + d]) * b.data<float>()[k * D + d];
    min_cos = std::min(min_cos, dot);  // both rows unit-norm
  }
  EXPECT_GT(min_cos, kKeptCodeMinCosine) << min_cos;
  fs::remove_all(o.out_dir);
}
