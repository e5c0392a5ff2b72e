// Tests of the online clustered codebook (sonar/codebook.h) on the tiny preset with a tiny trained tokenizer
// (16 codes of width 32, k-means on its own features of real crops, made here): the EMA step equals a double
// hand computation; usage statistics and health numbers match a hand count; padded patches never count; a dead
// code is re-initialised on a far feature with its predictor row and AdamW moments reset; expansion adds codes,
// grows the predictor head and its AdamW state, and a training step on the new classes works; the cap holds; a
// run that grows its codebook, killed and resumed, ends bit-identical to a straight run; the adapted tokenizer
// file gives the adapted labels; the codebook grows beside the self-distillation's auxiliary head; bad input
// fails with one line before the run folder is written.
// Not tested here: the other SONAR parts (their own test files), the command line.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "audio/synth_corpus.h"
#include "autograd/ops.h"
#include "nn/beats/checkpoint.h"
#include "nn/beats/label_predictor.h"
#include "sonar/codebook.h"
#include "sonar/distill.h"
#include "sonar/method.h"
#include "tensor/creation.h"
#include "tensor/index.h"
#include "tensor/io.h"
#include "tensor/random.h"
#include "tests/sonar/sonar_test_util.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace sonar;
using namespace sonar::method;
using namespace sonar::testutil;

namespace {

constexpr int64_t kCodes = 16;  // the test tokenizer's codebook
constexpr int64_t kDim = 32;    // the tiny preset's quant_dim
// The codebook's float32 arithmetic (double accumulation, float storage) against the double hand computation.
constexpr double kEmaTol = 2e-6;
// Usage is float32 state updated step by step; relative to the double hand count.
constexpr double kUsageRelTol = 1e-5;
// A re-initialised / added code equals its anchor feature up to float rounding of a copy (exact).
constexpr float kCopyTol = 0.0f;
// A resumed run must equal the straight run bit for bit (same machine and thread count).
constexpr float kResumeTolerance = 0.0f;
// A share of a handful of features: a count over a count, up to double rounding.
constexpr double kShareTol = 1e-12;

fs::path corpus_path() {
  return fs::temp_directory_path() / ("sonar_test_codebook_corpus_" + std::to_string(::getpid()));
}

// 16 clips per domain, 8 prior clips, seed 5.
std::string corpus_dir() {
  static const std::string dir = build_tiny_corpus(corpus_path(), 8, 5);
  return dir;
}

std::string run_dir(const std::string& name) { return fresh_tmp_path("sonar_test_codebook_", name); }

// The corpus and the fixture's folder go after the last test.
const ::testing::Environment* const kCleanup = remove_after_all_tests({corpus_path(), run_dir("tokenizers")});

// The tiny preset on 1-second crops of the 16 music clips, batches of 4, seed 11.
PretrainOptions tiny_options(const std::string& out, int64_t steps) {
  return tiny_run_options<PretrainOptions>(corpus_dir() + "/music.csv", out, steps, 11);
}

// Records the crops of the batches it sees.
class CaptureExtension : public TrainerExtension {
 public:
  std::string name() const override { return "capture"; }
  void relabel(StepBatch& b) override { batches.push_back(b); }
  std::vector<StepBatch> batches;
};

// Real crops of the corpus (two batches, from a DCPT run), and two tokenizer files: a trained one (k-means on
// its own features of those crops) and one whose codebook was never initialised.
struct Fixture {
  std::vector<StepBatch> crops;
  std::string tokenizer, untrained;
};

const Fixture& fixture() {
  static const Fixture f = [] {
    Fixture fx;
    const std::string dir = run_dir("tokenizers");
    fs::create_directories(dir);
    auto cap = std::make_shared<CaptureExtension>();
    PretrainOptions o = tiny_options((fs::path(dir) / "capture").string(), 3);
    o.halt_after = 2;  // two batches, no checkpoint
    Trainer(o, {cap}).run();
    fx.crops = cap->batches;
    beats::BeatsConfig cfg = preset_config("tiny");
    cfg.quant_n = kCodes;
    Generator gen(3);
    auto tok = std::make_shared<beats::BeatsTokenizer>(cfg, &gen);
    tok->eval();
    fx.untrained = (fs::path(dir) / "untrained.safetensors").string();
    beats::save_tokenizer(fx.untrained, *tok);
    LabelTokenizer lt;
    lt.beats = tok;
    std::vector<Tensor> feats;
    for (const auto& b : fx.crops) {
      Tensor f = lt.features(b.fbank, b.frame_mask);
      feats.push_back(f.reshape({-1, kDim}));
    }
    tok->quantize->init_kmeans(cat(feats, 0), gen);
    fx.tokenizer = (fs::path(dir) / "tokenizer.safetensors").string();
    beats::save_tokenizer(fx.tokenizer, *tok);
    return fx;
  }();
  return f;
}

// The values of one key over a metrics.jsonl, line by line (lines without it skipped).
std::vector<double> metric_values(const std::string& path, const std::string& key) {
  std::vector<double> out;
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains(key)) out.push_back(j[key].get<double>());
  }
  return out;
}

PretrainOptions codebook_run(const std::string& out, int64_t steps) {
  PretrainOptions o = tiny_options(out, steps);
  o.tokenizer = fixture().tokenizer;
  return o;
}

// ---- hand-made codebooks and batches ----

using Row = std::vector<float>;

// The unit vector of sum_i v_i e_{i}, normalised in double.
Row unit(const std::vector<std::pair<int, double>>& parts) {
  std::vector<double> v(kDim, 0.0);
  for (const auto& [i, x] : parts) v[i] += x;
  double s = 0;
  for (double x : v) s += x * x;
  Row r(kDim);
  for (int j = 0; j < kDim; ++j) r[j] = static_cast<float>(v[j] / std::sqrt(s));
  return r;
}

Tensor rows_tensor(const std::vector<Row>& rows) {
  std::vector<float> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return from_vector(flat, {static_cast<int64_t>(rows.size()), kDim});
}

// Codes e_0 .. e_{K-1}.
std::vector<Row> basis_codes() {
  std::vector<Row> c;
  for (int k = 0; k < kCodes; ++k) c.push_back(unit({{k, 1.0}}));
  return c;
}

// One clip whose P patches have these features; padded[i] marks padded patches.
StepBatch hand_batch(const std::vector<Row>& feats, const std::vector<int>& padded, int64_t step) {
  StepBatch b;
  const int64_t P = static_cast<int64_t>(feats.size());
  b.token_features = rows_tensor(feats).reshape({1, P, kDim});
  std::vector<int64_t> pad(P, 0);
  for (int i : padded) pad[i] = 1;
  b.patch_padding = from_vector(pad, {1, P}).to(DType::Bool);
  b.step = step;
  b.new_clips = 1;
  return b;
}

// Sets the extension's codebook (as a checkpoint would).
void set_codebook(OnlineCodebookExtension& ext, const std::vector<Row>& codes, const std::vector<float>& usage,
                  int64_t updates) {
  const int64_t K = static_cast<int64_t>(codes.size());
  ext.load_state({{"weight", rows_tensor(codes)},
                  {"embed_avg", rows_tensor(codes)},
                  {"usage", from_vector(usage, {K})}},
                 {{"updates", std::to_string(updates)},
                  {"reinit-total", "0"},
                  {"added-total", std::to_string(K - kCodes)},
                  {"reinit-since-log", "0"},
                  {"added-since-log", "0"}});
}

std::vector<double> row_of(const Tensor& t, int64_t i) {
  const Tensor r = t.select(0, i).contiguous();
  const auto v = r.to_vector<float>();
  return std::vector<double>(v.begin(), v.end());
}

double dot(const std::vector<double>& a, const Row& b) {
  double s = 0;
  for (size_t j = 0; j < a.size(); ++j) s += a[j] * b[j];
  return s;
}

// The nearest code by cosine in double (first on ties).
int64_t hand_nearest(const std::vector<std::vector<double>>& codes, const Row& x) {
  int64_t best = 0;
  for (size_t k = 1; k < codes.size(); ++k)
    if (dot(codes[k], x) > dot(codes[best], x)) best = static_cast<int64_t>(k);
  return best;
}

std::vector<std::vector<double>> codes_of(const Tensor& w) {
  std::vector<std::vector<double>> c;
  for (int64_t k = 0; k < w.size(0); ++k) c.push_back(row_of(w, k));
  return c;
}

// The optimiser's buffer of a parameter ("exp_avg" / "exp_avg_sq"), or undefined.
Tensor moment(ag::Optimizer& opt, const ag::Var& p, const std::string& buf) {
  const auto params = opt.params();
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].same(p)) {
      const auto st = opt.save_state();
      auto it = st.tensors.find("param." + std::to_string(i) + "." + buf);
      return it == st.tensors.end() ? Tensor() : it->second;
    }
  return Tensor();
}

double test_max_abs(const std::vector<double>& a, const Row& b) {
  double m = 0;
  for (size_t j = 0; j < a.size(); ++j) m = std::max(m, std::fabs(a[j] - b[j]));
  return m;
}

bool all_zero(const Tensor& t) {
  for (float v : t.contiguous().to_vector<float>())
    if (v != 0.0f) return false;
  return true;
}

// A trainer that has taken one step with the extension (so the predictor and AdamW's moments exist); the test
// then drives the extension's hooks directly.
struct Attached {
  std::string dir;
  std::shared_ptr<OnlineCodebookExtension> ext;
  std::unique_ptr<Trainer> trainer;
  Attached(const std::string& name, CodebookOptions co) : dir(run_dir(name)) {
    ext = std::make_shared<OnlineCodebookExtension>(co);
    PretrainOptions o = codebook_run(dir, 3);
    o.halt_after = 1;
    trainer = std::make_unique<Trainer>(o, std::vector<std::shared_ptr<TrainerExtension>>{ext});
    trainer->run();
  }
  ~Attached() { fs::remove_all(dir); }
  std::shared_ptr<beats::GrowableLinear> head() const { return trainer->objective()->predictor->head; }
};

CodebookOptions no_events() {
  CodebookOptions c;
  c.warmup_steps = 1000000;  // EMA only
  return c;
}

double progress_value(OnlineCodebookExtension& ext, const std::string& name,
                      std::vector<std::pair<std::string, double>>* cache = nullptr) {
  const auto p = cache ? *cache : ext.progress();
  for (const auto& [k, v] : p)
    if (k == name) return v;
  ADD_FAILURE() << "no progress field " << name;
  return NAN;
}

}  // namespace

TEST(OnlineCodebook, EmaStepEqualsDoubleHandComputation) {
  Attached a("ema", no_events());
  const std::vector<Row> codes = basis_codes();
  std::vector<float> u0(kCodes);
  for (int k = 0; k < kCodes; ++k) u0[k] = 0.5f + 0.25f * k;
  set_codebook(*a.ext, codes, u0, /*updates=*/1);
  // Real features near codes 0, 0, 1, 2 (code 0 gets two), and a padded one sitting next to code 5.
  const std::vector<Row> x = {unit({{0, 1.0}, {20, 0.4}}), unit({{0, 1.0}, {21, -0.3}, {22, 0.2}}),
                              unit({{1, 1.0}, {1 + 16, 0.7}}), unit({{2, 0.9}, {3, 0.2}, {25, 0.5}}),
                              unit({{5, 1.0}, {30, 0.9}})};
  StepBatch b = hand_batch(x, {4}, 0);
  a.ext->relabel(b);
  const auto labels = b.labels.to_vector<int64_t>();
  EXPECT_EQ(labels[0], 0);
  EXPECT_EQ(labels[1], 0);
  EXPECT_EQ(labels[2], 1);
  EXPECT_EQ(labels[3], 2);
  a.ext->after_step(b, {});

  const double d = static_cast<double>(0.99f);
  // Hand: counts over the real rows, usage EMA, normalised mean, EMA of the code, renormalised.
  const std::vector<int> assign = {0, 0, 1, 2};
  std::vector<double> count(kCodes, 0.0);
  for (int k : assign) count[k] += 1;
  for (int k = 0; k < kCodes; ++k)
    EXPECT_NEAR(a.ext->usage().at({k}), d * u0[k] + (1 - d) * count[k], kEmaTol * (1 + u0[k])) << "usage " << k;
  for (int k = 0; k < kCodes; ++k) {
    std::vector<double> want(codes[k].begin(), codes[k].end());
    if (count[k] > 0) {
      std::vector<double> mean(kDim, 0.0);
      for (size_t n = 0; n < assign.size(); ++n)
        if (assign[n] == k)
          for (int j = 0; j < kDim; ++j) mean[j] += x[n][j] / count[k];
      double mn = 0;
      for (double v : mean) mn += v * v;
      for (int j = 0; j < kDim; ++j) want[j] = d * codes[k][j] + (1 - d) * mean[j] / std::sqrt(mn);
      double wn = 0;
      for (double v : want) wn += v * v;
      for (double& v : want) v /= std::sqrt(wn);
    }
    const auto got = row_of(a.ext->codebook(), k);
    for (int j = 0; j < kDim; ++j) ASSERT_NEAR(got[j], want[j], kEmaTol) << "code " << k << " dim " << j;
  }
  // The padded patch moved nothing: code 5 is exactly e_5, and no event happened.
  EXPECT_EQ(row_of(a.ext->codebook(), 5), std::vector<double>(codes[5].begin(), codes[5].end()));
  EXPECT_EQ(a.ext->codebook().size(0), kCodes);
  EXPECT_EQ(a.ext->reinit_total(), 0);
}

TEST(OnlineCodebook, UsageStatisticsMatchAHandCount) {
  Attached a("usage", no_events());
  // The run's own codebook after its first step; three real batches of crops go through it.
  const auto& crops = fixture().crops;
  LabelTokenizer start = LabelTokenizer::load(fixture().tokenizer);
  std::vector<double> hand;
  for (float v : a.ext->usage().to_vector<float>()) hand.push_back(v);
  const double d = static_cast<double>(0.99f);
  for (int s = 0; s < 3; ++s) {
    StepBatch b = crops[s % crops.size()];
    b.token_features = start.features(b.fbank, b.frame_mask);
    // Pad the last 5 patches of clip 0 by hand: they must not count.
    const int64_t B = b.token_features.size(0), P = b.token_features.size(1);
    std::vector<int64_t> pad(B * P, 0);
    for (int64_t p = P - 5; p < P; ++p) pad[p] = 1;
    b.patch_padding = from_vector(pad, {B, P}).to(DType::Bool);
    b.step = 10 + s;
    const auto codes = codes_of(a.ext->codebook());
    std::vector<double> count(kCodes, 0.0);
    const Tensor f = b.token_features.reshape({B * P, kDim});
    for (int64_t i = 0; i < B * P; ++i) {
      if (pad[i]) continue;
      const auto r = f.select(0, i).contiguous().to_vector<float>();
      count[hand_nearest(codes, r)] += 1;
    }
    a.ext->after_step(b, {});
    for (int k = 0; k < kCodes; ++k) hand[k] = d * hand[k] + (1 - d) * count[k];
  }
  const auto got = a.ext->usage().to_vector<float>();
  double total = 0;
  for (int k = 0; k < kCodes; ++k) {
    EXPECT_NEAR(got[k], hand[k], kUsageRelTol * std::max(1.0, hand[k])) << "code " << k;
    total += hand[k];
  }
  double h = 0;
  int dead = 0;
  for (int k = 0; k < kCodes; ++k) {
    const double p = hand[k] / total;
    if (p > 0) h -= p * std::log(p);
    dead += p < CodebookOptions().dead_usage / kCodes;
  }
  auto prog = a.ext->progress();
  EXPECT_NEAR(progress_value(*a.ext, "perplexity", &prog), std::exp(h), kUsageRelTol * std::exp(h));
  EXPECT_EQ(progress_value(*a.ext, "dead", &prog), dead);
  EXPECT_EQ(progress_value(*a.ext, "codebook_size", &prog), kCodes);
  EXPECT_EQ(progress_value(*a.ext, "reinit", &prog), 0);
  EXPECT_EQ(progress_value(*a.ext, "added", &prog), 0);
}

TEST(OnlineCodebook, FirstStepRescalesTheCarriedUsage) {
  Attached a("rescale", no_events());
  std::vector<float> u0(kCodes, 0.0f);
  u0[0] = 30.0f;
  u0[1] = 10.0f;  // shares 3/4, 1/4 of 40; the batch has 4 real features
  set_codebook(*a.ext, basis_codes(), u0, /*updates=*/0);
  StepBatch b = hand_batch({unit({{2, 1.0}}), unit({{2, 1.0}}), unit({{3, 1.0}}), unit({{3, 1.0}})}, {}, 0);
  a.ext->after_step(b, {});
  const double d = static_cast<double>(0.99f);
  EXPECT_NEAR(a.ext->usage().at({0}), d * 3.0, kEmaTol * 10);
  EXPECT_NEAR(a.ext->usage().at({1}), d * 1.0, kEmaTol * 10);
  EXPECT_NEAR(a.ext->usage().at({2}), (1 - d) * 2.0, kEmaTol * 10);
}

TEST(OnlineCodebook, PaddedPatchesNeverCount) {
  CodebookOptions co;
  co.warmup_steps = 0;
  Attached a("padded", co);
  std::vector<float> u0(kCodes, 10.0f);
  u0[3] = 0.0f;  // dead
  set_codebook(*a.ext, basis_codes(), u0, 1);
  // Real features sit exactly on codes 0..2; padded ones are far from everything (novel, and the only
  // anchors a dead code could take).
  std::vector<Row> x = {unit({{0, 1.0}}), unit({{1, 1.0}}), unit({{2, 1.0}})};
  for (int i = 0; i < 6; ++i) x.push_back(unit({{20 + i, 1.0}}));
  StepBatch b = hand_batch(x, {3, 4, 5, 6, 7, 8}, 5);
  a.ext->after_step(b, {});
  EXPECT_EQ(a.ext->codebook().size(0), kCodes);  // no growth from padded features
  EXPECT_EQ(a.ext->reinit_total(), 0);           // no anchor among them
  EXPECT_EQ(row_of(a.ext->codebook(), 3), row_of(rows_tensor(basis_codes()), 3));
  const double d = static_cast<double>(0.99f);
  for (int k = 4; k < kCodes; ++k) EXPECT_NEAR(a.ext->usage().at({k}), d * 10.0, kEmaTol * 10) << k;
  EXPECT_NEAR(a.ext->usage().at({0}), d * 10.0 + (1 - d), kEmaTol * 10);
}

TEST(OnlineCodebook, DeadCodeIsReinitialisedOnAFarFeature) {
  for (const std::string rows : {"nearest", "fresh"}) {
    SCOPED_TRACE(rows);
    CodebookOptions co;
    co.warmup_steps = 0;
    co.max_new_per_step = 0;  // re-initialisation only
    co.new_rows = rows;
    Attached a("dead_" + rows, co);
    std::vector<float> u0(kCodes, 10.0f);
    u0[3] = 0.0f;  // the only dead code
    set_codebook(*a.ext, basis_codes(), u0, 1);
    // Features on codes (distance 0: never drawn), and one far feature whose nearest code is 7.
    std::vector<Row> x;
    for (int k : {0, 1, 2, 4, 5, 6, 8, 9}) x.push_back(unit({{k, 1.0}}));
    const Row far = unit({{20, 1.0}, {21, 1.0}, {7, 0.3}});
    x.push_back(far);
    auto head = a.head();
    ag::AdamW& opt = a.trainer->optimizer();
    const Tensor w0 = head->weight.value().clone(), b0 = head->bias.value().clone();
    const Tensor m0 = moment(opt, head->weight, "exp_avg"), v0 = moment(opt, head->weight, "exp_avg_sq");
    const Tensor mb0 = moment(opt, head->bias, "exp_avg");
    ASSERT_TRUE(m0.defined() && mb0.defined());
    // A re-initialised code starts with the mean usage after this step's EMA (9 real features counted).
    const double d = static_cast<double>(0.99f);
    const double mean_usage = (d * 10.0 * (kCodes - 1) + (1 - d) * 9.0) / kCodes;
    a.ext->after_step(hand_batch(x, {}, 4), {});

    EXPECT_EQ(a.ext->reinit_total(), 1);
    EXPECT_LE(test_max_abs(row_of(a.ext->codebook(), 3), far), kCopyTol);
    EXPECT_LE(test_max_abs(row_of(a.ext->embed_avg(), 3), far), kCopyTol);
    EXPECT_NEAR(a.ext->usage().at({3}), mean_usage, kUsageRelTol * mean_usage);
    // The predictor row of code 3: code 7's (nearest) or a fresh draw; its moments zero; other rows untouched.
    const Tensor w1 = head->weight.value(), b1 = head->bias.value();
    if (rows == "nearest") {
      EXPECT_EQ(row_of(w1, 3), row_of(w0, 7));
      EXPECT_EQ(b1.at({3}), b0.at({7}));
    } else {
      for (double v : row_of(w1, 3)) EXPECT_LE(std::fabs(v), 0.04);
      EXPECT_NE(row_of(w1, 3), row_of(w0, 3));
      EXPECT_EQ(b1.at({3}), 0.0);
    }
    const Tensor m1 = moment(opt, head->weight, "exp_avg"), v1 = moment(opt, head->weight, "exp_avg_sq");
    const Tensor mb1 = moment(opt, head->bias, "exp_avg");
    EXPECT_TRUE(all_zero(m1.select(0, 3)));
    EXPECT_TRUE(all_zero(v1.select(0, 3)));
    EXPECT_EQ(mb1.at({3}), 0.0);
    for (int k = 0; k < kCodes; ++k) {
      if (k == 3) continue;
      EXPECT_EQ(row_of(w1, k), row_of(w0, k)) << k;
      EXPECT_EQ(row_of(m1, k), row_of(m0, k)) << k;
      EXPECT_EQ(row_of(v1, k), row_of(v0, k)) << k;
    }
    auto prog = a.ext->progress();
    EXPECT_EQ(progress_value(*a.ext, "reinit", &prog), 1);
    EXPECT_EQ(progress_value(*a.ext, "dead", &prog), 0);
    EXPECT_EQ(progress_value(*a.ext, "reinit", nullptr), 0);  // counted since the last call
  }
}

namespace {
// Codes e_0..e_15 (all in use) and a batch with 4 novel features at known distances: far (cos 0, nearest code 0
// by the first-index tie rule), b (best cos 0.196, code 1), c (0.371, code 2), d (0.447, code 3, but cos 0.894 to
// far: skipped), e (0.514: not novel); plus 8 features on codes.
std::vector<Row> growth_features() {
  std::vector<Row> x;
  for (int k = 4; k < 12; ++k) x.push_back(unit({{k, 1.0}}));
  x.push_back(unit({{20, 1.0}}));                 // 8: far
  x.push_back(unit({{21, 1.0}, {1, 0.2}}));       // 9: b
  x.push_back(unit({{22, 1.0}, {2, 0.4}}));       // 10: c
  x.push_back(unit({{20, 1.0}, {3, 0.5}}));       // 11: d
  x.push_back(unit({{24, 1.0}, {12, 0.6}}));      // 12: e
  return x;
}
}  // namespace

TEST(OnlineCodebook, ExpansionGrowsTheCodebookThePredictorAndItsAdamWState) {
  CodebookOptions co;
  co.warmup_steps = 0;
  co.max_new_per_step = 4;
  Attached a("grow", co);
  set_codebook(*a.ext, basis_codes(), std::vector<float>(kCodes, 10.0f), 1);
  auto head = a.head();
  ag::AdamW& opt = a.trainer->optimizer();
  const Tensor w0 = head->weight.value().clone(), b0 = head->bias.value().clone();
  const Tensor m0 = moment(opt, head->weight, "exp_avg"), v0 = moment(opt, head->weight, "exp_avg_sq");
  const Tensor mb0 = moment(opt, head->bias, "exp_avg");
  const std::vector<Row> x = growth_features();
  a.ext->after_step(hand_batch(x, {}, 7), {});

  const int64_t K = kCodes + 3;
  ASSERT_EQ(a.ext->codebook().size(0), K);
  EXPECT_EQ(a.ext->added_total(), 3);
  EXPECT_EQ(a.ext->usage().size(0), K);
  // Farthest first: far, b, c; d is close to far; e is not novel.
  EXPECT_LE(test_max_abs(row_of(a.ext->codebook(), kCodes + 0), x[8]), kCopyTol);
  EXPECT_LE(test_max_abs(row_of(a.ext->codebook(), kCodes + 1), x[9]), kCopyTol);
  EXPECT_LE(test_max_abs(row_of(a.ext->codebook(), kCodes + 2), x[10]), kCopyTol);
  // The head grew; new rows copy the rows (and biases) of the codes their anchors were assigned to: 0, 1, 2.
  ASSERT_EQ(head->out_features(), K);
  EXPECT_EQ(head->weight.shape(), (Shape{K, head->in_features()}));
  EXPECT_EQ(head->bias.shape(), (Shape{K}));
  const int64_t src[3] = {0, 1, 2};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(row_of(head->weight.value(), kCodes + i), row_of(w0, src[i])) << i;
    EXPECT_EQ(head->bias.value().at({kCodes + i}), b0.at({src[i]})) << i;
  }
  // AdamW's moments grew: zero new rows, old rows untouched.
  const Tensor m1 = moment(opt, head->weight, "exp_avg"), v1 = moment(opt, head->weight, "exp_avg_sq");
  const Tensor mb1 = moment(opt, head->bias, "exp_avg");
  ASSERT_EQ(m1.shape(), (Shape{K, head->in_features()}));
  ASSERT_EQ(v1.shape(), m1.shape());
  ASSERT_EQ(mb1.shape(), (Shape{K}));
  EXPECT_TRUE(all_zero(m1.narrow(0, kCodes, 3)));
  EXPECT_TRUE(all_zero(v1.narrow(0, kCodes, 3)));
  EXPECT_TRUE(all_zero(mb1.narrow(0, kCodes, 3)));
  EXPECT_EQ(max_abs_diff_nan_aware(m1.narrow(0, 0, kCodes), m0), 0.0f);
  EXPECT_EQ(max_abs_diff_nan_aware(v1.narrow(0, 0, kCodes), v0), 0.0f);
  EXPECT_EQ(max_abs_diff_nan_aware(mb1.narrow(0, 0, kCodes), mb0), 0.0f);
  auto prog = a.ext->progress();
  EXPECT_EQ(progress_value(*a.ext, "added", &prog), 3);
  EXPECT_EQ(progress_value(*a.ext, "codebook_size", &prog), K);
  // far, b, c and d are below novelty_cos (0.5) before the growth, e and the 8 on codes are not.
  EXPECT_NEAR(progress_value(*a.ext, "novel_share", &prog), 4.0 / 13.0, kShareTol);

  // A training step on targets that include the new classes works and trains their rows.
  const StepBatch& crop = fixture().crops[0];
  const int64_t B = crop.fbank.size(0), P = crop.token_features.size(1);
  std::vector<int64_t> labels(B * P);
  for (int64_t i = 0; i < B * P; ++i) labels[i] = i % K;
  Generator mask_gen(9);
  opt.zero_grad();
  beats::MlpOutput out = a.trainer->objective()->forward(ag::Var(crop.fbank), crop.frame_mask,
                                                        from_vector(labels, {B, P}), mask_gen);
  ASSERT_TRUE(std::isfinite(out.loss.value().item_double()));
  out.loss.backward();
  opt.set_lr(1e-3f);  // the halted run's last step had the warm-up's first rate, 0
  opt.step();
  const Tensor m2 = moment(opt, head->weight, "exp_avg");
  EXPECT_FALSE(all_zero(m2.narrow(0, kCodes, 3)));
  EXPECT_NE(row_of(head->weight.value(), kCodes), row_of(w0, 0));
}

TEST(OnlineCodebook, TheCapHolds) {
  CodebookOptions co;
  co.warmup_steps = 0;
  co.max_codes = kCodes + 1;
  Attached a("cap", co);
  set_codebook(*a.ext, basis_codes(), std::vector<float>(kCodes, 10.0f), 1);
  for (int s = 0; s < 3; ++s) a.ext->after_step(hand_batch(growth_features(), {}, 7 + s), {});
  // The novel share counts only steps that could grow: the first one (4 of 13 novel), not the two at the cap.
  auto prog = a.ext->progress();
  EXPECT_NEAR(progress_value(*a.ext, "novel_share", &prog), 4.0 / 13.0, kShareTol);
  a.ext->after_step(hand_batch(growth_features(), {}, 10), {});
  for (const auto& [k, v] : a.ext->progress()) EXPECT_NE(k, "novel_share") << "logged at the cap: " << v;
  EXPECT_EQ(a.ext->codebook().size(0), kCodes + 1);
  EXPECT_EQ(a.ext->added_total(), 1);
  EXPECT_EQ(a.head()->out_features(), kCodes + 1);
  EXPECT_EQ(a.ext->max_codes(), kCodes + 1);
  // The default cap: 1.5 x the start size.
  Attached d("cap_default", CodebookOptions());
  EXPECT_EQ(d.ext->max_codes(), kCodes + kCodes / 2);
}

namespace {

// Growth and re-initialisation early: after one step, most features count as novel.
CodebookOptions eager() {
  CodebookOptions co;
  co.warmup_steps = 1;
  co.novelty_cos = 0.97;
  co.max_new_per_step = 2;
  co.dead_usage = 0.5;
  co.seed = 77;
  return co;
}

}  // namespace

TEST(OnlineCodebook, KilledAndResumedRunWithGrowthEqualsStraightRun) {
  const std::string straight = run_dir("straight"), resumed = run_dir("resumed");
  auto ext_a = std::make_shared<OnlineCodebookExtension>(eager());
  PretrainResult ra = Trainer(codebook_run(straight, 6), {ext_a}).run();
  ASSERT_TRUE(ra.finished);
  EXPECT_GT(ext_a->added_total(), 0);
  EXPECT_GT(ext_a->reinit_total(), 0);

  PretrainOptions ob = codebook_run(resumed, 6);
  ob.halt_after = 4;  // checkpoint at step 3; step 4 is lost
  auto ext_b1 = std::make_shared<OnlineCodebookExtension>(eager());
  Trainer(ob, {ext_b1}).run();
  {
    // The checkpoint the resume starts from already holds a grown codebook and head.
    beats::CheckpointData c = beats::read_checkpoint((fs::path(resumed) / kCheckpointFile).string());
    const int64_t k = c.training_tensors.at("ext.codebook.weight").size(0);
    EXPECT_GT(k, kCodes);
    EXPECT_EQ(c.training_tensors.at("predictor.head.weight").size(0), k);
  }
  // A changed codebook flag is refused, naming it, before anything is written.
  {
    CodebookOptions other = eager();
    other.novelty_cos = 0.9;
    const std::string msg = testutil::error_of(
        [&] { Trainer(ob, {std::make_shared<OnlineCodebookExtension>(other)}).run(); });
    EXPECT_NE(msg.find("novelty-cos"), std::string::npos) << msg;
  }
  ob.halt_after = -1;
  auto ext_b2 = std::make_shared<OnlineCodebookExtension>(eager());
  PretrainResult rb = Trainer(ob, {ext_b2}).run();
  EXPECT_TRUE(rb.resumed);
  EXPECT_EQ(rb.start_step, 3);
  ASSERT_TRUE(rb.finished);
  expect_same_checkpoint(ra.checkpoint, rb.checkpoint, kResumeTolerance);
  EXPECT_EQ(ext_b2->added_total(), ext_a->added_total());
  EXPECT_EQ(ext_b2->reinit_total(), ext_a->reinit_total());
  EXPECT_TRUE(read_file((fs::path(straight) / kAdaptedTokenizerFile).string()) ==
              read_file((fs::path(resumed) / kAdaptedTokenizerFile).string()))
      << "the adapted tokenizer files differ";
  for (const auto& d : {straight, resumed}) {
    const std::string metrics = read_file((fs::path(d) / kMetricsFile).string());
    EXPECT_NE(metrics.find("\"codebook_size\""), std::string::npos);
    EXPECT_NE(metrics.find("\"perplexity\""), std::string::npos);
  }
  // The novel share's running sum travels in the checkpoint: the resumed run logs the straight run's values.
  const std::vector<double> novel_a = metric_values((fs::path(straight) / kMetricsFile).string(), "novel_share");
  const std::vector<double> novel_b = metric_values((fs::path(resumed) / kMetricsFile).string(), "novel_share");
  EXPECT_FALSE(novel_a.empty());
  EXPECT_EQ(novel_a, novel_b);

  // The adapted tokenizer: the start tokenizer's encoder with the adapted codebook, so its labels are the
  // adapted codebook's nearest codes of the start tokenizer's features.
  LabelTokenizer adapted = LabelTokenizer::load((fs::path(straight) / kAdaptedTokenizerFile).string());
  LabelTokenizer start = LabelTokenizer::load(fixture().tokenizer);
  ASSERT_EQ(adapted.num_codes(), ext_a->codebook().size(0));
  EXPECT_EQ(max_abs_diff_nan_aware(adapted.codebook(), ext_a->codebook()), 0.0f);
  EXPECT_EQ(max_abs_diff_nan_aware(adapted.beats->quantize->usage(), ext_a->usage()), 0.0f);
  for (const auto& crop : fixture().crops) {
    const Tensor feats = start.features(crop.fbank, crop.frame_mask);
    StepBatch b;
    b.token_features = feats;
    ext_a->relabel(b);
    const Tensor got = adapted.labels(crop.fbank, crop.frame_mask);
    EXPECT_EQ(got.to_vector<int64_t>(), b.labels.to_vector<int64_t>());
    EXPECT_NE(got.to_vector<int64_t>(), start.labels(crop.fbank, crop.frame_mask).to_vector<int64_t>());
  }

  // A second continual stage starts from the adapted tokenizer; reusing the grown predictor with the start
  // tokenizer is refused in one line before its folder is written.
  const std::string stage2 = run_dir("stage2");
  PretrainOptions o2 = codebook_run(stage2, 2);
  o2.init = ra.checkpoint;
  const std::string msg =
      testutil::error_of([&] { Trainer(o2, {std::make_shared<OnlineCodebookExtension>(eager())}).run(); });
  EXPECT_NE(msg.find("classes but the tokenizer's codebook " + std::to_string(kCodes) + " codes"), std::string::npos)
      << msg;
  EXPECT_FALSE(fs::exists(stage2));
  o2.tokenizer = (fs::path(straight) / kAdaptedTokenizerFile).string();
  CodebookOptions co2 = eager();
  co2.max_codes = 64;
  auto ext2 = std::make_shared<OnlineCodebookExtension>(co2);
  EXPECT_TRUE(Trainer(o2, {ext2}).run().finished);
  EXPECT_GE(ext2->codebook().size(0), ext_a->codebook().size(0));
  fs::remove_all(stage2);
  fs::remove_all(straight);
  fs::remove_all(resumed);
}

TEST(OnlineCodebook, BadInputIsOneLineAndLeavesTheFolderUntouched) {
  const std::string dir = run_dir("bad");
  auto expect_refused = [&](PretrainOptions o, CodebookOptions co, const std::string& needle) {
    const std::string msg =
        testutil::error_of([&] { Trainer(o, {std::make_shared<OnlineCodebookExtension>(co)}).run(); });
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_FALSE(fs::exists(dir)) << needle;
  };
  PretrainOptions o = tiny_options(dir, 3);  // no --tokenizer: a random projection
  expect_refused(o, CodebookOptions(), "--codebook online needs a trained BEATs tokenizer (--tokenizer)");
  o.tokenizer = fixture().untrained;
  expect_refused(o, CodebookOptions(), "never initialised");
  o.tokenizer = fixture().tokenizer;
  CodebookOptions small;
  small.max_codes = 8;
  expect_refused(o, small, "--max-codes 8 is below the codebook's 16 codes");
  // Option values are checked when the extension is made.
  CodebookOptions bad;
  bad.novelty_share = 1.5;
  EXPECT_NE(testutil::error_of([&] { OnlineCodebookExtension e(bad); }).find("--novelty-share"), std::string::npos);
  bad = CodebookOptions();
  bad.new_rows = "copy";
  EXPECT_NE(testutil::error_of([&] { OnlineCodebookExtension e(bad); }).find("--new-rows"), std::string::npos);
  bad = CodebookOptions();
  bad.mode = "frozen";
  EXPECT_NE(testutil::error_of([&] { OnlineCodebookExtension e(bad); }).find("--codebook frozen"),
            std::string::npos);
}

namespace {

// Delegates to the codebook (when set) and measures the wall time of its per-step hooks and of whole steps.
class TimedCodebook : public TrainerExtension {
 public:
  using Clock = std::chrono::steady_clock;
  explicit TimedCodebook(std::shared_ptr<OnlineCodebookExtension> c) : inner(std::move(c)) {}
  std::string name() const override { return inner ? inner->name() : "clock"; }
  nlohmann::json config() const override { return inner ? inner->config() : nlohmann::json::object(); }
  void attach(Trainer& t) override {
    if (inner) inner->attach(t);
  }
  void on_batch(StepBatch&) override {
    const auto now = Clock::now();
    if (started) steps.push_back(std::chrono::duration<double>(now - last).count());
    last = now;
    started = true;
  }
  void relabel(StepBatch& b) override {
    const auto t = Clock::now();
    if (inner) inner->relabel(b);
    hooks += std::chrono::duration<double>(Clock::now() - t).count();
  }
  void after_step(const StepBatch& b, const beats::MlpOutput& o) override {
    const auto t = Clock::now();
    if (inner) inner->after_step(b, o);
    hooks += std::chrono::duration<double>(Clock::now() - t).count();
  }
  void finish(const std::string& d) override {
    if (inner) inner->finish(d);
  }
  std::shared_ptr<OnlineCodebookExtension> inner;
  double hooks = 0;
  std::vector<double> steps;
  Clock::time_point last;
  bool started = false;
};

}  // namespace

// Not a check (timings are never asserted): prints the cost of the codebook per step on the tiny preset with the
// tiny preset's own 256-code tokenizer, batches of 8 two-second crops (768 patches a step), off / on with the
// defaults / on with eager growth and re-initialisation. Run with
//   OMP_NUM_THREADS=2 build/test_codebook --gtest_also_run_disabled_tests --gtest_filter='*StepCost*'
TEST(OnlineCodebook, DISABLED_StepCost) {
  const fs::path root = fs::path(run_dir("cost"));
  audio::SynthCorpusOptions co;
  co.clips_per_class = 6;
  co.prior_clips = 8;
  co.seconds = 3.0;
  co.seed = 5;
  audio::build_synth_corpus((root / "corpus").string(), co);
  auto options = [&](const std::string& out, int64_t steps) {
    PretrainOptions o = tiny_options((root / out).string(), steps);
    o.data = (root / "corpus" / "music.csv").string();
    o.crop_seconds = 2.0;
    o.max_clip_seconds = 3.0;
    o.batch_size = 8;
    o.log_every = 1000;
    o.save_every = 1000;
    o.force = true;
    return o;
  };
  // A 256-code tokenizer, k-means on its own features of two batches.
  auto cap = std::make_shared<CaptureExtension>();
  Trainer(options("capture", 2), {cap}).run();
  Generator gen(3);
  auto tok = std::make_shared<beats::BeatsTokenizer>(preset_config("tiny"), &gen);
  tok->eval();
  LabelTokenizer lt;
  lt.beats = tok;
  std::vector<Tensor> feats;
  for (const auto& b : cap->batches) feats.push_back(lt.features(b.fbank, b.frame_mask).reshape({-1, kDim}));
  tok->quantize->init_kmeans(cat(feats, 0), gen);
  const std::string tok_path = (root / "tokenizer.safetensors").string();
  beats::save_tokenizer(tok_path, *tok);
  constexpr int64_t kSteps = 40, kSkip = 5;
  for (const std::string mode : {"off", "defaults", "eager"}) {
    CodebookOptions c;
    c.warmup_steps = kSkip;
    if (mode == "eager") {
      c.novelty_cos = 0.97;
      c.dead_usage = 0.5;
      c.max_codes = 1024;
    }
    auto timed =
        std::make_shared<TimedCodebook>(mode == "off" ? nullptr : std::make_shared<OnlineCodebookExtension>(c));
    PretrainOptions o = options(mode, kSteps);
    o.tokenizer = tok_path;
    Trainer(o, {timed}).run();
    std::vector<double> s(timed->steps.begin() + kSkip, timed->steps.end());
    std::sort(s.begin(), s.end());
    std::printf("codebook %-8s: median step %.3f s, codebook hooks %.4f s/step", mode.c_str(), s[s.size() / 2],
                timed->hooks / kSteps);
    if (timed->inner)
      std::printf(", %lld codes (%lld added, %lld re-initialised)",
                  static_cast<long long>(timed->inner->codebook().size(0)),
                  static_cast<long long>(timed->inner->added_total()),
                  static_cast<long long>(timed->inner->reinit_total()));
    std::printf("\n");
  }

  // BEATs-base scale of the codebook work alone (the tiny model, a tokenizer with BEATs' 1024 x 256 codebook):
  // relabel + after_step on 3968 patches (8 ten-second clips), without and with events.
  beats::BeatsConfig big = preset_config("tiny");
  big.quant_n = 1024;
  big.quant_dim = 256;
  auto big_tok = std::make_shared<beats::BeatsTokenizer>(big, &gen);
  big_tok->eval();
  LabelTokenizer big_lt;
  big_lt.beats = big_tok;
  feats.clear();
  for (const auto& b : cap->batches) feats.push_back(big_lt.features(b.fbank, b.frame_mask).reshape({-1, 256}));
  big_tok->quantize->init_kmeans(cat(feats, 0), gen);
  const std::string big_path = (root / "tokenizer_1024.safetensors").string();
  beats::save_tokenizer(big_path, *big_tok);
  for (const bool events : {false, true}) {
    CodebookOptions c;
    c.warmup_steps = events ? 0 : 1000000;
    auto ext = std::make_shared<OnlineCodebookExtension>(c);
    PretrainOptions o = options(events ? "big_events" : "big", 3);
    o.tokenizer = big_path;
    o.halt_after = 1;
    Trainer t(o, {ext});
    t.run();
    constexpr int kReps = 5;
    double total = 0;
    Generator fgen(4);
    for (int r = 0; r < kReps; ++r) {
      StepBatch b;
      b.token_features = l2_normalize(randn({8, 496, 256}, fgen), -1);
      b.step = 100 + r;
      const auto t0 = std::chrono::steady_clock::now();
      ext->relabel(b);
      ext->after_step(b, {});
      total += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    std::printf("K=1024 D=256, 3968 patches, %s: codebook hooks %.3f s/step (%lld codes after)\n",
                events ? "with events" : "EMA only", total / kReps,
                static_cast<long long>(ext->codebook().size(0)));
  }

  // The optimiser round trip of an event step, for a BEATs-base-sized parameter set (12 x 8 M = 96 M).
  std::vector<ag::Var> params;
  for (int i = 0; i < 12; ++i) params.push_back(ag::Var(zeros({8000000}), true));
  ag::AdamW opt(params, {});
  for (auto& p : params) p.set_grad(full({8000000}, 0.1));
  opt.step();
  for (int r = 0; r < 3; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    ag::OptimizerState st = opt.save_state();
    opt.load_state(st);
    std::printf("AdamW save_state + load_state, 96 M parameters: %.2f s\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  fs::remove_all(root);
}

TEST(OnlineCodebook, GrowsBesideTheSelfDistillationHead) {
  // The main head grows; the auxiliary head (start tokenizer's labels) keeps the start size; training goes on.
  const std::string dir = run_dir("with_distill");
  auto cb = std::make_shared<OnlineCodebookExtension>(eager());
  auto sd = std::make_shared<SelfDistillExtension>(SelfDistillOptions());
  Trainer t(codebook_run(dir, 4), {cb, sd});
  PretrainResult r = t.run();
  ASSERT_TRUE(r.finished);
  EXPECT_GT(cb->added_total(), 0);
  auto pred = t.objective()->predictor;
  EXPECT_EQ(pred->head->out_features(), cb->codebook().size(0));
  ASSERT_NE(pred->aux_head, nullptr);
  EXPECT_EQ(pred->aux_head->out_features(), kCodes);
  for (const auto& h : r.history) EXPECT_TRUE(std::isfinite(h.loss));
  fs::remove_all(dir);
}

TEST(SonarMethod, EveryPartOnKilledAndResumedEqualsStraightRunAndAChangedFlagIsRefused) {
  // SONAR as `sonar pretrain --method sonar` builds it: replay (label strata of the prior pool), both
  // self-distillation terms and the online codebook (eager enough to grow and re-initialise in 6 steps).
  const std::map<std::string, std::string> flags = {{"method", "sonar"},
                                                    {"prior", corpus_dir() + "/prior.csv"},
                                                    {"replay-ratio", "0.5"},
                                                    {"codebook-warmup", "1"},
                                                    {"novelty-cos", "0.97"},
                                                    {"grow-per-step", "2"},
                                                    {"dead-usage", "0.5"}};
  auto parts = [&](const std::map<std::string, std::string>& f, uint64_t seed) {
    auto ext = make_extensions(sonar_options_from_flags(f), seed);
    EXPECT_EQ(ext.size(), 3u);
    return ext;
  };
  const std::string straight = run_dir("sonar_straight"), resumed = run_dir("sonar_resumed");
  PretrainOptions oa = codebook_run(straight, 6);
  PretrainResult ra = Trainer(oa, parts(flags, oa.seed)).run();
  ASSERT_TRUE(ra.finished);
  const std::string metrics = read_text_file((fs::path(straight) / kMetricsFile).string());
  for (const char* field : {"replay_share", "distill_model", "distill_tok", "codebook_size"})
    EXPECT_NE(metrics.find(field), std::string::npos) << field;
  EXPECT_TRUE(fs::exists(fs::path(straight) / "replay_plan.csv"));
  EXPECT_TRUE(fs::exists(fs::path(straight) / kAdaptedTokenizerFile));
  {
    // The codebook did grow (so the resume below crosses a growth event).
    beats::CheckpointData c = beats::read_checkpoint((fs::path(straight) / kCheckpointFile).string());
    EXPECT_GT(c.training_tensors.at("ext.codebook.weight").size(0), kCodes);
  }

  PretrainOptions ob = codebook_run(resumed, 6);
  ob.halt_after = 4;  // checkpoint at step 3; step 4 is lost
  Trainer(ob, parts(flags, ob.seed)).run();
  // A changed SONAR flag is refused in one line naming it, before anything is written.
  std::map<std::string, std::string> changed = flags;
  changed["replay-ratio"] = "0.25";
  const auto before = fs::last_write_time(fs::path(resumed) / kCheckpointFile);
  const std::string msg = testutil::error_of([&] { Trainer(ob, parts(changed, ob.seed)).run(); });
  EXPECT_NE(msg.find("replay-ratio"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_EQ(fs::last_write_time(fs::path(resumed) / kCheckpointFile), before);
  ob.halt_after = -1;
  PretrainResult rb = Trainer(ob, parts(flags, ob.seed)).run();
  EXPECT_TRUE(rb.resumed);
  ASSERT_TRUE(rb.finished);
  expect_same_checkpoint((fs::path(straight) / kCheckpointFile).string(),
                         (fs::path(resumed) / kCheckpointFile).string(), 0.0f);
  EXPECT_EQ(read_text_file((fs::path(straight) / kAdaptedTokenizerFile).string()),
            read_text_file((fs::path(resumed) / kAdaptedTokenizerFile).string()));
  fs::remove_all(straight);
  fs::remove_all(resumed);
}
