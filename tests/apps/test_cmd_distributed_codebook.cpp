// Data-parallel online codebook (sonar/codebook.h under sonar/distributed.h), run as a user would:
// `mpirun -np 2 sonar pretrain --method sonar --replay none --codebook online --tokenizer T ...` (1 thread per
// process) against the same command in one process. The tokenizer (32 codes, k-means on its own features of the
// corpus's prior pool) is made here; the run trains on the music clips, a different domain, with settings that
// re-initialise and grow the codebook from step 3. Checked: the same codebook sizes and re-initialised/added
// counts on every logged line, the adapted codebook, usage and predictor head, the model weights, and the logged
// losses; a stopped two-process run resumes bit-identically.
// Not tested here: the codebook's own rules (tests/sonar/test_codebook.cpp), the other parts under MPI
// (tests/apps/test_cmd_distributed.cpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "nn/beats/checkpoint.h"
#include "sonar/codebook.h"
#include "sonar/trainer.h"
#include "tensor/creation.h"
#include "tensor/index.h"
#include "tensor/io.h"
#include "tensor/random.h"
#include "tests/sonar/sonar_test_util.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace sonar;
using namespace sonar::method;

namespace {

// The decisions (which codes are dead, which features are anchors or new codes) must be the same in both runs:
// the settings keep them off their thresholds (see kRunArgs). The float state then differs only by summation
// orders (the gradient all-reduce, the codebook's partial sums, smaller matrix products):
// - codebook vectors (unit rows) and usage: the EMA sums differ in the last bits; labels (nearest codes) are
//   the same when no feature sits within float noise of two codes.
constexpr double kCodebookAbsTol = 1e-4;
constexpr double kUsageRelTol = 1e-4;  // relative to the largest usage
// - trained weights (BEATs encoder and the label predictor, its grown head included), as in
//   test_cmd_distributed.cpp: relative to the largest magnitude of the tensor, plus an absolute floor for
//   weights whose true gradient is zero (they move by AdamW-normalised float noise only).
constexpr double kWeightRelTol = 2e-2;
constexpr double kNoiseFloor = 1e-4;
constexpr double kMeanAbsTol = 2e-4;
// - logged losses: the global loss of two processes is the one-process loss.
constexpr double kLossRelTol = 1e-3;

constexpr int64_t kTokenizerCodes = 32;

// The corpus and start model every data-parallel test of tests/apps uses (test_cmd_distributed*.cpp).
constexpr int64_t kPriorClips = 8;
constexpr uint64_t kCorpusSeed = 21;
constexpr uint64_t kStartModelSeed = 5;

fs::path base() { return fs::temp_directory_path() / ("sonar_test_dpcb_" + std::to_string(::getpid())); }

// The shared tiny synthetic corpus (tests/sonar/sonar_test_util.h) with kPriorClips prior clips.
const std::string& corpus() {
  static const std::string dir = testutil::build_tiny_corpus(base() / "corpus", kPriorClips, kCorpusSeed);
  return dir;
}

// Dropout off: then one and two processes do the same computation up to float summation order.
const std::string& start_model() {
  static const std::string path = [] {
    const fs::path p = base() / "start.safetensors";
    testutil::save_dropout_free_tiny_model(p, kStartModelSeed);
    return p.string();
  }();
  return path;
}

// Keeps the crops a short DCPT run sees.
class CropCapture : public TrainerExtension {
 public:
  std::string name() const override { return "capture"; }
  void relabel(StepBatch& b) override { crops.push_back(b); }
  std::vector<StepBatch> crops;
};

// A trained tiny tokenizer: k-means (kTokenizerCodes codes) on the tokenizer's own features of two batches of
// the prior pool (another domain than the music clips the runs train on, so codes die and features are novel).
const std::string& tokenizer() {
  static const std::string path = [] {
    auto cap = std::make_shared<CropCapture>();
    PretrainOptions o;
    o.data = corpus() + "/prior.csv";
    o.out_dir = (base() / "capture").string();
    o.preset = "tiny";
    o.codes = kTokenizerCodes;
    o.crop_seconds = 1.0;
    o.max_clip_seconds = 2.0;
    o.batch_size = 4;
    o.steps = 3;
    o.halt_after = 2;
    o.seed = 9;
    o.loader_workers = 1;
    o.log = [](const std::string&) {};
    Trainer(o, {cap}).run();
    beats::BeatsConfig cfg = preset_config("tiny");
    cfg.quant_n = kTokenizerCodes;
    Generator gen(13);
    auto tok = std::make_shared<beats::BeatsTokenizer>(cfg, &gen);
    tok->eval();
    LabelTokenizer lt;
    lt.beats = tok;
    std::vector<Tensor> feats;
    for (const StepBatch& b : cap->crops) {
      const Tensor f = lt.features(b.fbank, b.frame_mask);
      feats.push_back(f.reshape({-1, f.size(2)}));
    }
    tok->quantize->init_kmeans(cat(feats, 0), gen);
    const std::string p = (base() / "tokenizer.safetensors").string();
    beats::save_tokenizer(p, *tok);
    return p;
  }();
  return path;
}

const ::testing::Environment* const kCleanup = testutil::remove_after_all_tests({base()});

// 16 steps of batches of 8 one-second crops (48 patches a clip, 384 a step). Events from step 3 (warm-up 2):
// --dead-usage 0.5 declares dead every code under half the mean share (codes of the prior domain the music
// rarely hits); --novelty-cos 0.9 makes many music features novel, far more than --novelty-share 0.05 of a
// batch, so the codebook grows by 4 a step until the cap of 48 (seen: 7 re-initialised, 16 added). A decision
// can flip between the runs only where an input sits within float noise of a tie or threshold (a feature
// equally near two codes, a usage share at dead_usage / K, a k-means++ draw at a bucket edge). The features
// come from the frozen tokenizer (no gradient all-reduce involved) and the EMA sums are exact in double here,
// so with 1 thread per process on this machine the adapted codebook comes out bit-identical (seen: 0
// difference), and a flip would show as a differing count on a named step.
std::string run_args(const std::string& out) {
  return "pretrain --data " + corpus() + "/music.csv --init " + start_model() + " --tokenizer " + tokenizer() +
         " --batch 8 --steps 16 --crop-seconds 1 --max-clip-seconds 2 --lr 2e-3 --warmup 2 --seed 3 --log-every 2"
         " --save-every 16 --workers 1 --method sonar --replay none --codebook online --codebook-warmup 2"
         " --dead-usage 0.5 --novelty-cos 0.9 --grow-per-step 4 --max-codes 48 --out " +
         out;
}

std::vector<nlohmann::json> metrics(const std::string& dir) {
  std::vector<nlohmann::json> v;
  std::istringstream in(read_file(dir + "/metrics.jsonl"));
  std::string l;
  while (std::getline(in, l)) v.push_back(nlohmann::json::parse(l));
  return v;
}

// Every tensor of `b` within the weight tolerance of `a`'s (same names and shapes), names containing `skip`
// left out. Returns the largest share of its tolerance a tensor used (max |diff| / (rel tol x max |w| + floor)).
double expect_close_tensors(const std::string& a, const std::string& b, const std::string& skip) {
  SafeTensorsFile fa = load_safetensors(a), fb = load_safetensors(b);
  EXPECT_EQ(fa.tensors.size(), fb.tensors.size());
  double sum_abs = 0.0, worst = 0.0;
  int64_t count = 0;
  for (const auto& [name, t] : fa.tensors) {
    if (!skip.empty() && name.find(skip) != std::string::npos) continue;
    EXPECT_TRUE(fb.tensors.count(name)) << name;
    if (!fb.tensors.count(name)) continue;
    const Tensor x = t.to(DType::Float32).contiguous(), y = fb.tensors.at(name).to(DType::Float32).contiguous();
    EXPECT_EQ(x.shape(), y.shape()) << name;
    if (x.shape() != y.shape()) continue;
    double mag = 0.0, diff = 0.0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      mag = std::max(mag, std::fabs(double(x.data<float>()[i])));
      const double d = std::fabs(double(x.data<float>()[i]) - y.data<float>()[i]);
      diff = std::max(diff, d);
      sum_abs += d;
    }
    count += x.numel();
    worst = std::max(worst, diff / (kWeightRelTol * mag + kNoiseFloor));
    EXPECT_LE(diff, kWeightRelTol * mag + kNoiseFloor) << name << ": max |diff| " << diff << ", max |w| " << mag;
  }
  EXPECT_GT(count, 0);
  EXPECT_LE(sum_abs / static_cast<double>(std::max<int64_t>(count, 1)), kMeanAbsTol);
  return worst;
}

}  // namespace

TEST(DistributedCodebook, TwoProcessesMatchOneProcess) {
  const std::string one = (base() / "one").string(), two = (base() / "two").string();
  const testutil::Run a = testutil::run_sonar_with_prefix("OMP_NUM_THREADS=1 ", run_args(one));
  ASSERT_EQ(a.code, 0) << a.out;
  const testutil::Run b = testutil::run_sonar_mpi(2, run_args(two));
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_NE(b.out.find("in each of 2 processes (4 clips each per batch)"), std::string::npos) << b.out;
  EXPECT_EQ(b.out.find("finished"), b.out.rfind("finished")) << b.out;  // process 0 alone speaks

  // Same decisions: codebook size, re-initialised and added codes on every logged line; the run did both.
  const auto la = metrics(one), lb = metrics(two);
  ASSERT_EQ(la.size(), lb.size());
  ASSERT_EQ(la.size(), 8u);
  int64_t reinit = 0, added = 0;
  double worst_loss = 0.0;
  for (size_t i = 0; i < la.size(); ++i) {
    for (const char* k : {"codebook_size", "reinit", "added", "dead"})
      EXPECT_EQ(la[i].at(k).get<double>(), lb[i].at(k).get<double>()) << k << " at step " << la[i].at("step");
    for (const char* k : {"loss", "mlp_loss", "masked_accuracy", "perplexity"}) {
      const double x = la[i].at(k).get<double>(), y = lb[i].at(k).get<double>();
      EXPECT_NEAR(x, y, kLossRelTol * std::max(1.0, std::fabs(x))) << k << " at step " << la[i].at("step");
      if (std::string(k) != "perplexity") worst_loss = std::max(worst_loss, std::fabs(x - y));
    }
    reinit += static_cast<int64_t>(la[i].at("reinit").get<double>());
    added += static_cast<int64_t>(la[i].at("added").get<double>());
  }
  EXPECT_GT(reinit, 0);
  EXPECT_GT(added, 0);
  std::printf("[ codebook ] one process: %lld re-initialised, %lld added, final size %g; largest |loss or accuracy "
              "difference| on a logged line %.3g\n",
              static_cast<long long>(reinit), static_cast<long long>(added),
              la.back().at("codebook_size").get<double>(), worst_loss);

  // The adapted tokenizer (written by process 0 only): same codebook and usage.
  SafeTensorsFile ta = load_safetensors(one + "/" + kAdaptedTokenizerFile);
  SafeTensorsFile tb = load_safetensors(two + "/" + kAdaptedTokenizerFile);
  for (const char* name : {"quantize.embedding.weight", "quantize.embedding.embed_avg"}) {
    ASSERT_TRUE(ta.tensors.count(name) && tb.tensors.count(name)) << name;
    const double d = testutil::max_abs_diff(ta.tensors.at(name), tb.tensors.at(name));
    EXPECT_LE(d, kCodebookAbsTol) << name;
    std::printf("[ codebook ] %s: max |one - two| = %.3g\n", name, d);
  }
  {
    const Tensor ua = ta.tensors.at("quantize.cluster_size").to(DType::Float32);
    const Tensor ub = tb.tensors.at("quantize.cluster_size").to(DType::Float32);
    double mag = 0.0;
    for (float v : ua.to_vector<float>()) mag = std::max(mag, std::fabs(double(v)));
    const double d = testutil::max_abs_diff(ua, ub);
    EXPECT_LE(d, kUsageRelTol * mag);
    std::printf("[ codebook ] usage: max |one - two| = %.3g of max %.3g\n", d, mag);
  }
  // The model, the label predictor with its grown head and the codebook state in the checkpoint (AdamW's
  // moments left out: a near-zero second moment amplifies float noise).
  const double wm = expect_close_tensors(one + "/model.safetensors", two + "/model.safetensors", "");
  const double wc =
      expect_close_tensors(one + "/checkpoint.safetensors", two + "/checkpoint.safetensors", "optimizer.");
  std::printf("[ codebook ] weights: largest share of the tolerance used by a tensor: model %.3g, checkpoint %.3g\n",
              wm, wc);
}

TEST(DistributedCodebook, StoppedTwoProcessRunResumesBitIdentically) {
  // Every process restores the codebook from the checkpoint process 0 wrote (a grown one: events from step 3).
  const std::string straight = (base() / "straight").string(), sliced = (base() / "sliced").string();
  auto steps8 = [](std::string args) { return args.replace(args.find("--steps 16"), 10, "--steps 8 "); };
  const testutil::Run s0 = testutil::run_sonar_mpi(2, steps8(run_args(straight)));
  ASSERT_EQ(s0.code, 0) << s0.out;
  const testutil::Run s1 = testutil::run_sonar_mpi(2, steps8(run_args(sliced)) + " --stop-after 5");
  ASSERT_EQ(s1.code, 130) << s1.out;
  const testutil::Run s2 = testutil::run_sonar_mpi(2, steps8(run_args(sliced)));
  ASSERT_EQ(s2.code, 0) << s2.out;
  EXPECT_NE(s2.out.find("resuming"), std::string::npos) << s2.out;
  SafeTensorsFile fa = load_safetensors(straight + "/checkpoint.safetensors");
  SafeTensorsFile fb = load_safetensors(sliced + "/checkpoint.safetensors");
  ASSERT_EQ(fa.tensors.size(), fb.tensors.size());
  for (const auto& [name, t] : fa.tensors) {
    ASSERT_TRUE(fb.tensors.count(name)) << name;
    EXPECT_EQ(testutil::max_abs_diff(t.to(DType::Float32), fb.tensors.at(name).to(DType::Float32)), 0.0) << name;
  }
  EXPECT_EQ(read_file(straight + "/" + kAdaptedTokenizerFile), read_file(sliced + "/" + kAdaptedTokenizerFile));
}
