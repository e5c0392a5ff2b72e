// Tests of task-relevant stratified replay (sonar/replay.h): relevance and shares against a double hand
// computation, the floor, cosine k-means++ (separable blobs, determinism, no empty cluster), the labels strata
// with multi-label clips, the plan and draws deterministic by seed and following the shares, replayed crops
// really in the batch (compared with the prior clips' own fbanks), a killed and resumed run bit-identical to a
// straight one, the embedding cache reused, too-short clips left out, and bad input refused before anything is
// written. Tiny preset, synthetic corpus (audio/synth_corpus.h). Not tested here: the trainer itself
// (test_trainer.cpp) or the command line.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "audio/fbank.h"
#include "audio/loader.h"
#include "audio/synth_corpus.h"
#include "sonar/replay.h"
#include "tensor/io.h"
#include "tests/sonar/sonar_test_util.h"

namespace fs = std::filesystem;
using namespace sonar;
using namespace sonar::method;
using namespace sonar::testutil;

namespace {

// Relevance and shares are computed in double: they must match the hand computation to rounding.
constexpr double kRelevanceTol = 1e-12;
// Replayed crops are the prior clips' fbank frames copied: equal bit for bit.
constexpr float kCropTol = 0.0f;
// A resumed run must equal the straight run bit for bit (same machine and thread count).
constexpr float kResumeTolerance = 0.0f;
// Empirical stratum frequencies over kDrawsForFrequencies draws: within this many binomial standard deviations
// of the shares.
constexpr int64_t kDrawsForFrequencies = 20000;
constexpr double kFrequencySigmas = 5.0;

fs::path corpus_path() { return fs::temp_directory_path() / ("sonar_test_replay_corpus_" + std::to_string(::getpid())); }

// 16 clips per domain, 12 prior clips, seed 7; removed after the last test.
std::string corpus_dir() {
  static const std::string dir = build_tiny_corpus(corpus_path(), 12, 7);
  return dir;
}
const ::testing::Environment* const kCleanup = remove_after_all_tests({corpus_path()});

std::string run_dir(const std::string& name) { return fresh_tmp_path("sonar_test_replay_", name); }

// The tiny preset on 1-second crops of the 16 music clips, batches of 4, seed 11; at most 2 warm-up steps.
PretrainOptions tiny_options(const std::string& out, int64_t steps) {
  PretrainOptions o = tiny_run_options<PretrainOptions>(corpus_dir() + "/music.csv", out, steps, 11);
  o.warmup_steps = std::min<int64_t>(2, steps);
  return o;
}

ReplayOptions replay_options(const std::string& strata = "labels") {
  ReplayOptions r;
  r.prior = corpus_dir() + "/prior.csv";
  r.strata = strata;
  r.ratio = 0.5;  // 2 prior clips per batch of 4
  r.floor = 0.2;
  r.seed = 99;
  return r;
}

// Records, after the replay extension, what each step's batch holds.
class BatchRecorder : public TrainerExtension {
 public:
  std::string name() const override { return "recorder"; }
  void on_batch(StepBatch& b) override {
    steps.push_back(b.step);
    new_clips.push_back(b.new_clips);
    fbanks.push_back(b.fbank.clone());
    masks.push_back(b.frame_mask.clone());
  }
  std::vector<int64_t> steps, new_clips;
  std::vector<Tensor> fbanks, masks;
};

// Runs `steps` steps with the replay extension (and the recorder after it); returns the log lines.
std::vector<std::string> run_with(PretrainOptions o, std::vector<std::shared_ptr<TrainerExtension>> ext) {
  std::vector<std::string> lines;
  o.log = [&](const std::string& l) {
    lines.push_back(l);
    if (std::getenv("SONAR_TEST_VERBOSE")) std::printf("%s\n", l.c_str());
  };
  Trainer(o, std::move(ext)).run();
  return lines;
}

bool has_line(const std::vector<std::string>& lines, const std::string& needle) {
  for (const auto& l : lines)
    if (l.find(needle) != std::string::npos) return true;
  return false;
}

std::vector<std::vector<std::string>> read_csv_rows(const std::string& path) {
  std::vector<std::vector<std::string>> rows;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    std::vector<std::string> cells;
    std::string cur;
    bool quoted = false;
    for (char ch : line) {
      if (ch == '"') {
        quoted = !quoted;
      } else if (ch == ',' && !quoted) {
        cells.push_back(cur);
        cur.clear();
      } else {
        cur += ch;
      }
    }
    cells.push_back(cur);
    rows.push_back(cells);
  }
  return rows;
}

}  // namespace

// ---- the pieces ----

TEST(ReplayMath, RelevanceAndSharesMatchAHandComputation) {
  // Two strata along the axes; three new clips: on stratum 0, on stratum 1, between them (scaled: any norm).
  const Tensor centroids = from_vector(std::vector<float>{2, 0, 0, 3}, {2, 2});
  const Tensor fresh = from_vector(std::vector<float>{1, 0, 0, 5, 1, 1}, {3, 2});
  const double T = 0.5;
  // cosines: clip 0 (1, 0) and clip 1 (0, 1) to (c0, c1); clip 2 (1/sqrt2, 1/sqrt2) to both.
  auto softmax0 = [&](double a, double b) { return std::exp(a / T) / (std::exp(a / T) + std::exp(b / T)); };
  const double r = 1.0 / std::sqrt(2.0);
  const double rel0 = (softmax0(1, 0) + softmax0(0, 1) + softmax0(r, r)) / 3.0;
  const std::vector<double> rel = stratum_relevance(fresh, centroids, T);
  ASSERT_EQ(rel.size(), 2u);
  EXPECT_NEAR(rel[0], rel0, kRelevanceTol);
  EXPECT_NEAR(rel[1], 1.0 - rel0, kRelevanceTol);

  // An asymmetric case: three strata, one new clip; by hand in double.
  const Tensor c3 = from_vector(std::vector<float>{1, 0, 0, 1, 1, 1}, {3, 2});
  const Tensor one = from_vector(std::vector<float>{3, 1}, {1, 2});
  const double n = std::sqrt(10.0);
  const double cos0 = 3 / n, cos1 = 1 / n, cos2 = 4 / (n * std::sqrt(2.0));
  const double T3 = 0.1;
  const double z = std::exp(cos0 / T3) + std::exp(cos1 / T3) + std::exp(cos2 / T3);
  const std::vector<double> rel3 = stratum_relevance(one, c3, T3);
  EXPECT_NEAR(rel3[0], std::exp(cos0 / T3) / z, kRelevanceTol);
  EXPECT_NEAR(rel3[1], std::exp(cos1 / T3) / z, kRelevanceTol);
  EXPECT_NEAR(rel3[2], std::exp(cos2 / T3) / z, kRelevanceTol);

  const std::vector<double> sh = replay_shares(rel3, 0.3);
  double sum = 0;
  for (size_t s = 0; s < 3; ++s) {
    EXPECT_NEAR(sh[s], 0.7 * rel3[s] + 0.1, kRelevanceTol);
    sum += sh[s];
  }
  EXPECT_NEAR(sum, 1.0, kRelevanceTol);
  EXPECT_THROW(stratum_relevance(one, c3, 0.0), Error);
  EXPECT_THROW(stratum_relevance(one, from_vector(std::vector<float>{1, 0, 0}, {1, 3}), 0.1), Error);
}

TEST(ReplayMath, FloorIsRespected) {
  // A stratum with (almost) no relevance still gets floor / S of the draws.
  const std::vector<double> rel = {1.0 - 2e-9, 1e-9, 1e-9, 0.0};
  for (double floor : {0.0, 0.05, 0.2, 1.0}) {
    const std::vector<double> sh = replay_shares(rel, floor);
    double sum = 0;
    for (size_t s = 0; s < sh.size(); ++s) {
      EXPECT_GE(sh[s], floor / 4 - kRelevanceTol) << "floor " << floor;
      sum += sh[s];
    }
    EXPECT_NEAR(sum, 1.0, kRelevanceTol);
  }
  EXPECT_EQ(replay_shares(rel, 1.0), std::vector<double>(4, 0.25));  // floor 1: uniform over strata
  EXPECT_EQ(replay_shares(rel, 0.0), rel);                           // floor 0: relevance alone
  EXPECT_THROW(replay_shares(rel, 1.5), Error);
}

TEST(ReplayMath, KmeansFindsSeparableBlobsDeterministically) {
  // Three tight blobs around orthogonal directions in 6 dimensions, 10 rows each, interleaved.
  const int64_t N = 30, D = 6;
  std::vector<float> x(N * D);
  Generator g(3);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t blob = i % 3;
    for (int64_t j = 0; j < D; ++j) x[i * D + j] = 0.05f * static_cast<float>(g.next_normal());
    x[i * D + 2 * blob] += 1.0f + static_cast<float>(i);  // the norm varies: cosine ignores it
  }
  const Tensor emb = from_vector(x, {N, D});
  for (uint64_t seed : {1ULL, 2ULL, 3ULL, 4ULL}) {
    const std::vector<int64_t> a = kmeans_pp(emb, 3, seed);
    ASSERT_EQ(a.size(), static_cast<size_t>(N));
    std::set<int64_t> ids;
    for (int64_t b = 0; b < 3; ++b) {
      for (int64_t i = b; i < N; i += 3) EXPECT_EQ(a[i], a[b]) << "seed " << seed << " row " << i;
      ids.insert(a[b]);
    }
    EXPECT_EQ(ids.size(), 3u) << "seed " << seed;
    EXPECT_EQ(kmeans_pp(emb, 3, seed), a);  // same seed, same answer
  }
  // Fewer distinct rows than clusters: still no empty cluster.
  const Tensor same = from_vector(std::vector<float>(5 * 2, 1.0f), {5, 2});
  const std::vector<int64_t> a = kmeans_pp(same, 3, 1);
  std::map<int64_t, int> count;
  for (int64_t v : a) ++count[v];
  EXPECT_EQ(count.size(), 3u);
  EXPECT_THROW(kmeans_pp(same, 6, 1), Error);
  EXPECT_THROW(kmeans_pp(same, 0, 1), Error);
}

TEST(ReplayMath, OptionsAreValidated) {
  auto expect_error = [](ReplayOptions o, const std::string& needle) {
    try {
      ReplayExtension e(o);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  ReplayOptions o = replay_options();
  o.ratio = 1.5;
  expect_error(o, "--replay-ratio must be in [0, 1], got 1.5");
  o = replay_options();
  o.ratio = -0.1;
  expect_error(o, "--replay-ratio must be in [0, 1]");
  o = replay_options();
  o.floor = 2;
  expect_error(o, "--replay-floor must be in [0, 1], got 2");
  o = replay_options();
  o.temperature = 0;
  expect_error(o, "--replay-temperature must be positive");
  o = replay_options();
  o.strata = "many";
  expect_error(o, "--strata must be labels, auto or a number of clusters >= 1, got 'many'");
  o = replay_options();
  o.strata = "0";
  expect_error(o, "got '0'");
  o = replay_options();
  o.mode = "sometimes";
  expect_error(o, "--replay must be stratified, uniform or none");
  o = replay_options();
  o.prior.clear();
  expect_error(o, "needs the prior pool");
}

// ---- the plan ----

TEST(Replay, LabelsStrataHoldMultiLabelClipsAndThePlanIsWritten) {
  const std::string dir = run_dir("labels");
  auto ext = std::make_shared<ReplayExtension>(replay_options("labels"));
  const std::vector<std::string> lines = run_with(tiny_options(dir, 1), {ext});
  const audio::Dataset& pool = ext->prior_pool();
  ASSERT_EQ(pool.size(), 12);

  // Expected strata from the manifest: one per label, a clip in each of its labels'.
  std::map<std::string, std::vector<int64_t>> expected;
  int64_t multi = 0;
  for (int64_t i = 0; i < pool.size(); ++i) {
    for (const auto& l : pool.items[i].labels) expected[l].push_back(i);
    multi += pool.items[i].labels.size() > 1 ? 1 : 0;
  }
  ASSERT_GT(multi, 0) << "the synthetic prior pool should hold multi-label mixtures";
  const auto& plan = ext->plan();
  ASSERT_EQ(plan.size(), expected.size());
  double rel_sum = 0, share_sum = 0;
  size_t s = 0;
  for (const auto& [label, members] : expected) {
    EXPECT_EQ(plan[s].name, label);
    EXPECT_EQ(plan[s].members, members) << label;
    EXPECT_GE(plan[s].share, 0.2 / static_cast<double>(plan.size()) - kRelevanceTol);
    EXPECT_NEAR(plan[s].share, 0.8 * plan[s].relevance + 0.2 / static_cast<double>(plan.size()), kRelevanceTol);
    rel_sum += plan[s].relevance;
    share_sum += plan[s].share;
    ++s;
  }
  EXPECT_NEAR(rel_sum, 1.0, kRelevanceTol);
  EXPECT_NEAR(share_sum, 1.0, kRelevanceTol);
  // Task relevance: the new data are music clips, and the synthetic domains are far apart even for a fresh
  // model's embeddings, so the music stratum comes first.
  const auto top = std::max_element(plan.begin(), plan.end(),
                                    [](const Stratum& x, const Stratum& y) { return x.relevance < y.relevance; });
  EXPECT_EQ(top->name, "music");

  // replay_plan.csv: a header and one row per stratum with the same numbers.
  const auto rows = read_csv_rows(dir + "/replay_plan.csv");
  ASSERT_EQ(rows.size(), plan.size() + 1);
  EXPECT_EQ(rows[0], (std::vector<std::string>{"stratum", "size", "relevance", "share", "examples"}));
  for (size_t i = 0; i < plan.size(); ++i) {
    ASSERT_EQ(rows[i + 1].size(), 5u);
    EXPECT_EQ(rows[i + 1][0], plan[i].name);
    EXPECT_EQ(std::stoll(rows[i + 1][1]), static_cast<long long>(plan[i].members.size()));
    EXPECT_NEAR(std::stod(rows[i + 1][3]), plan[i].share, 1e-6);
    EXPECT_NE(rows[i + 1][4].find(pool.items[plan[i].members[0]].path), std::string::npos);
  }
  // One summary line: strata count, top shares, clips per step.
  EXPECT_TRUE(has_line(lines, "replay: stratified, " + std::to_string(plan.size()) + " strata (labels) over 12 prior "
                              "clips; top shares "));
  EXPECT_TRUE(has_line(lines, "; 2 prior clips per step (ratio 0.5 x batch 4)"));
  EXPECT_TRUE(has_line(lines, "replay: embeddings (block 2 of 2) of 12 prior and 16 new-domain clips: 28 computed"));
  fs::remove_all(dir);
}

TEST(Replay, PlanAndDrawsAreDeterministicBySeedAndFollowTheShares) {
  const std::string d1 = run_dir("det1"), d2 = run_dir("det2"), d3 = run_dir("det3"), cache = run_dir("detcache");
  ReplayOptions ra = replay_options("3");
  ReplayOptions rb = ra;
  rb.cache_dir = cache;  // b computes its embeddings and c reads them: computed and cached give the same plan
  auto a = std::make_shared<ReplayExtension>(ra);
  auto b = std::make_shared<ReplayExtension>(rb);
  ReplayOptions other = rb;
  other.seed = 100;
  auto c = std::make_shared<ReplayExtension>(other);
  run_with(tiny_options(d1, 1), {a});
  run_with(tiny_options(d2, 1), {b});
  run_with(tiny_options(d3, 1), {c});

  ASSERT_EQ(a->plan().size(), 3u);  // k-means with 3 clusters, none empty
  ASSERT_EQ(b->plan().size(), 3u);
  std::set<int64_t> covered;
  for (size_t s = 0; s < 3; ++s) {
    EXPECT_EQ(a->plan()[s].name, "cluster-" + std::to_string(s));
    EXPECT_EQ(a->plan()[s].members, b->plan()[s].members);
    EXPECT_EQ(a->plan()[s].relevance, b->plan()[s].relevance);
    EXPECT_EQ(a->plan()[s].share, b->plan()[s].share);
    EXPECT_FALSE(a->plan()[s].members.empty());
    covered.insert(a->plan()[s].members.begin(), a->plan()[s].members.end());
  }
  EXPECT_EQ(covered.size(), 12u);  // clusters partition the pool
  EXPECT_EQ(a->plan_fingerprint(), b->plan_fingerprint());
  EXPECT_NE(a->plan_fingerprint(), c->plan_fingerprint());
  int differ = 0;
  for (int64_t step = 0; step < 50; ++step)
    for (int64_t slot = 0; slot < 2; ++slot) {
      const ReplayDraw x = a->draw(step, slot), y = b->draw(step, slot), z = c->draw(step, slot);
      EXPECT_EQ(x.item, y.item);
      EXPECT_EQ(x.stratum, y.stratum);
      EXPECT_EQ(x.crop_seed, y.crop_seed);
      differ += x.item != z.item || x.crop_seed != z.crop_seed;
    }
  EXPECT_GT(differ, 90);  // another seed, other draws

  // Over many draws each stratum comes up in proportion to its share, and each draw is one of its members.
  const auto& plan = a->plan();
  std::vector<int64_t> count(plan.size(), 0);
  for (int64_t i = 0; i < kDrawsForFrequencies; ++i) {
    const ReplayDraw d = a->draw(i / 4, i % 4);
    ++count[d.stratum];
    const auto& m = plan[d.stratum].members;
    EXPECT_TRUE(std::find(m.begin(), m.end(), d.item) != m.end());
  }
  for (size_t s = 0; s < plan.size(); ++s) {
    const double n = kDrawsForFrequencies, p = plan[s].share;
    EXPECT_NEAR(count[s], n * p, kFrequencySigmas * std::sqrt(n * p * (1 - p))) << plan[s].name;
  }
  EXPECT_EQ(c->stats().computed, 0);
  for (const auto& d : {d1, d2, d3, cache}) fs::remove_all(d);
}

TEST(Replay, ReplayedCropsAreInTheBatch) {
  const std::string dir = run_dir("inbatch");
  ReplayOptions r = replay_options("auto");
  r.segment_steps = 2;  // the loader of steps 2-3 is opened while steps 0-1 are served
  auto ext = std::make_shared<ReplayExtension>(r);
  auto rec = std::make_shared<BatchRecorder>();
  PretrainOptions o = tiny_options(dir, 4);
  o.prefetch_batches = 1;
  const std::vector<std::string> lines = run_with(o, {ext, rec});
  ASSERT_EQ(rec->steps.size(), 4u);

  // Each prior clip's whole normalised fbank, loaded independently of the replay code.
  audio::LoaderOptions lo;
  lo.crop = audio::CropMode::Full;
  lo.clip_seconds = o.max_clip_seconds;
  std::map<int64_t, Tensor> full;
  auto fbank_of = [&](int64_t item) {
    if (!full.count(item)) {
      Tensor f = audio::load_clip(ext->prior_pool().items[item].path, lo).fbank;
      audio::normalize_fbank_(f);
      full[item] = f;
    }
    return full[item];
  };
  for (size_t k = 0; k < rec->steps.size(); ++k) {
    const int64_t step = rec->steps[k];
    EXPECT_EQ(step, static_cast<int64_t>(k));
    const Tensor& fb = rec->fbanks[k];
    ASSERT_EQ(rec->new_clips[k], 4);
    ASSERT_EQ(fb.size(0), 6);  // 4 new + round(0.5 x 4) replayed
    const int64_t Tc = fb.size(1);
    for (int64_t slot = 0; slot < 2; ++slot) {
      const ReplayDraw d = ext->draw(step, slot);
      const Tensor src = fbank_of(d.item);  // [T, F], T > Tc (1.5 s clips, 1 s crops)
      ASSERT_GT(src.size(0), Tc);
      const Tensor row = fb.select(0, 4 + slot);
      // The row is a window of that clip's frames: find its start.
      int64_t found = -1;
      for (int64_t s0 = 0; s0 + Tc <= src.size(0) && found < 0; ++s0)
        if (max_abs_diff_nan_aware(row, src.narrow(0, s0, Tc)) <= kCropTol) found = s0;
      EXPECT_GE(found, 0) << "step " << step << " slot " << slot << ": not a window of "
                          << ext->prior_pool().items[d.item].path;
      const Tensor mask = rec->masks[k].select(0, 4 + slot);
      for (int64_t t = 0; t < Tc; ++t) EXPECT_EQ(mask.at({t}), 0.0);  // a full window: no padding
    }
  }
  // The progress line's share: 2 of 6 clips per step.
  EXPECT_TRUE(has_line(lines, "| replay_share 0.3333"));
  EXPECT_TRUE(has_line(lines, "replay: 8 prior clips replayed this session"));
  fs::remove_all(dir);
}

TEST(Replay, KilledAndResumedRunEqualsStraightRun) {
  const std::string straight = run_dir("straight"), resumed = run_dir("resumed");
  PretrainResult a = Trainer(tiny_options(straight, 6), {std::make_shared<ReplayExtension>(replay_options("3"))}).run();
  ASSERT_TRUE(a.finished);

  PretrainOptions ob = tiny_options(resumed, 6);
  ob.halt_after = 4;  // checkpoint at step 3; step 4 is lost
  auto first = std::make_shared<ReplayExtension>(replay_options("3"));
  Trainer(ob, {first}).run();
  EXPECT_GT(first->stats().computed, 0);
  ob.halt_after = -1;

  // A resume with another replay option is refused naming it.
  ReplayOptions changed = replay_options("3");
  changed.ratio = 0.25;
  try {
    Trainer(ob, {std::make_shared<ReplayExtension>(changed)}).run();
    FAIL() << "resumed with another --replay-ratio";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("replay-ratio: 0.5 there, 0.25 now"), std::string::npos) << e.what();
  }
  // A resume whose plan changed (same options, another replay seed) is refused too.
  ReplayOptions reseeded = replay_options("3");
  reseeded.seed = 5;
  try {
    Trainer(ob, {std::make_shared<ReplayExtension>(reseeded)}).run();
    FAIL() << "resumed with another replay plan";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the replay plan differs from the checkpoint's"), std::string::npos)
        << e.what();
  }

  auto second = std::make_shared<ReplayExtension>(replay_options("3"));
  PretrainResult b = Trainer(ob, {second}).run();
  EXPECT_TRUE(b.resumed);
  EXPECT_EQ(b.start_step, 3);
  ASSERT_TRUE(b.finished);
  EXPECT_EQ(second->stats().computed, 0);  // every embedding came from the run folder's cache
  EXPECT_EQ(second->stats().cached, 12 + 16);
  for (size_t i = 0; i < b.history.size(); ++i) EXPECT_EQ(b.history[i].loss, a.history[3 + i].loss);
  expect_same_checkpoint(straight + "/checkpoint.safetensors", resumed + "/checkpoint.safetensors", kResumeTolerance);
  expect_same_checkpoint(straight + "/model.safetensors", resumed + "/model.safetensors", kResumeTolerance);
  fs::remove_all(straight);
  fs::remove_all(resumed);
}

// Ctrl-C while the plan's embedding pass runs is a stop, not an error: the run says so, returns stopped
// without a checkpoint, and the same command then trains to the end.
TEST(Replay, StopDuringThePlansEmbeddingIsAStopNotAnError) {
  const std::string dir = run_dir("stop_embedding");
  PretrainOptions o = tiny_options(dir, 3);
  std::atomic<bool> stop{true};
  o.stop = &stop;
  std::vector<std::string> lines;
  o.log = [&](const std::string& l) { lines.push_back(l); };
  PretrainResult r;
  ASSERT_NO_THROW(r = Trainer(o, {std::make_shared<ReplayExtension>(replay_options("3"))}).run());
  EXPECT_TRUE(r.stopped);
  EXPECT_FALSE(r.finished);
  EXPECT_EQ(r.steps_done, 0);
  EXPECT_TRUE(has_line(lines, "replay: stopped while embedding (")) << ::testing::PrintToString(lines);
  EXPECT_TRUE(has_line(lines, "; run the same command again to resume")) << ::testing::PrintToString(lines);
  EXPECT_FALSE(fs::exists(dir + "/checkpoint.safetensors"));
  stop = false;
  const PretrainResult again = Trainer(o, {std::make_shared<ReplayExtension>(replay_options("3"))}).run();
  EXPECT_TRUE(again.finished);
  EXPECT_EQ(again.steps_done, 3);
  fs::remove_all(dir);
}

// ---- embeddings ----

TEST(Replay, EmbeddingCacheIsReused) {
  const std::string cache = run_dir("cache");
  const audio::Dataset prior = audio::read_source(corpus_dir() + "/prior.csv");
  Generator g(1);
  beats::BeatsModel model(preset_config("tiny"), &g);
  EmbedOptions eo;
  eo.cache_dir = cache;
  eo.max_seconds = 2.0;
  eo.workers = 1;
  const ClipEmbeddings first = embed_clips(model, prior, eo);
  EXPECT_EQ(first.computed, 12);
  EXPECT_EQ(first.cached, 0);
  ASSERT_EQ(first.emb.shape(), (Shape{12, 64}));
  const ClipEmbeddings again = embed_clips(model, prior, eo);
  EXPECT_EQ(again.computed, 0);
  EXPECT_EQ(again.cached, 12);
  EXPECT_EQ(max_abs_diff_nan_aware(first.emb, again.emb), 0.0f);
  // Progress reports every computed clip; the stop flag ends the pass with one line, keeping what was written.
  EmbedOptions watched = eo;
  watched.cache_dir = run_dir("cache_watched");
  std::vector<int64_t> done;
  std::atomic<bool> stop{false};
  watched.stop = &stop;
  watched.progress = [&](int64_t d, int64_t total) {
    done.push_back(d);
    EXPECT_EQ(total, 12);
    if (d == 3) stop = true;
  };
  try {
    embed_clips(model, prior, watched);
    ADD_FAILURE() << "the stop flag was ignored";
  } catch (const Stopped& e) {  // a stop, which the trainer tells from an error
    EXPECT_NE(std::string(e.what()).find("replay: stopped while embedding (3 of 12 clips"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(done, (std::vector<int64_t>{1, 2, 3}));
  stop = false;
  watched.progress = {};
  EXPECT_EQ(embed_clips(model, prior, watched).cached, 3);
  fs::remove_all(watched.cache_dir);
  // Without a cache the same numbers are computed (one clip per pass: independent of batching).
  EmbedOptions none = eo;
  none.cache_dir.clear();
  EXPECT_EQ(max_abs_diff_nan_aware(embed_clips(model, prior, none).emb, first.emb), 0.0f);
  // Another layer or another model: new entries.
  EmbedOptions l1 = eo;
  l1.layer = 1;
  EXPECT_EQ(embed_clips(model, prior, l1).computed, 12);
  Generator g2(2);
  beats::BeatsModel other(preset_config("tiny"), &g2);
  EXPECT_EQ(embed_clips(other, prior, eo).computed, 12);
  EXPECT_EQ(embed_clips(model, prior, eo).computed, 0);
  // A clip whose content changed misses; a damaged entry is recomputed.
  const std::string copy_dir = run_dir("cache_copy");
  fs::create_directories(copy_dir);
  audio::Dataset two = prior.subset({0, 1});
  for (int i = 0; i < 2; ++i) {
    const std::string p = copy_dir + "/" + std::to_string(i) + ".wav";
    fs::copy_file(two.items[i].path, p);
    two.items[i].path = p;
  }
  EXPECT_EQ(embed_clips(model, two, eo).computed, 0);  // content-keyed: same bytes under another name hit
  fs::copy_file(prior.items[5].path, two.items[1].path, fs::copy_options::overwrite_existing);
  EXPECT_EQ(embed_clips(model, two, eo).computed, 0);  // clip 5's entry exists too
  std::vector<float> tone(16000);
  for (size_t i = 0; i < tone.size(); ++i) tone[i] = 0.3f * static_cast<float>(std::sin(0.05 * static_cast<double>(i)));
  audio::synth_write_wav(two.items[1].path, tone, 16000, false);
  EXPECT_EQ(embed_clips(model, two, eo).computed, 1);
  EXPECT_EQ(embed_clips(model, two, eo).computed, 0);
  fs::remove_all(cache);
  fs::remove_all(copy_dir);
}

TEST(Replay, TooShortClipsAreListedAndLeftOut) {
  const std::string pool = run_dir("shortpool"), dir = run_dir("short");
  fs::create_directories(pool);
  const audio::Dataset prior = audio::read_source(corpus_dir() + "/prior.csv");
  std::ofstream list(pool + "/list.txt");
  for (int i = 0; i < 5; ++i) list << fs::absolute(prior.items[i].path).string() << "\n";
  audio::synth_write_wav(pool + "/blip.wav", std::vector<float>(800, 0.1f), 16000, false);  // 0.05 s < one patch
  list << "blip.wav\n";
  list.close();
  ReplayOptions r = replay_options("2");
  r.prior = pool + "/list.txt";
  auto ext = std::make_shared<ReplayExtension>(r);
  const std::vector<std::string> lines = run_with(tiny_options(dir, 2), {ext});
  EXPECT_TRUE(has_line(lines, "replay: left out 1 of 6 prior clips: " + pool + "/blip.wav (too short"));
  EXPECT_EQ(ext->stats().prior_usable, 5);
  for (const auto& s : ext->plan())
    for (int64_t m : s.members) EXPECT_LT(m, 5);
  fs::remove_all(pool);
  fs::remove_all(dir);
}

TEST(Replay, UniformModeDrawsFromTheWholePool) {
  const std::string dir = run_dir("uniform");
  ReplayOptions r = replay_options();
  r.mode = "uniform";
  auto ext = std::make_shared<ReplayExtension>(r);
  auto rec = std::make_shared<BatchRecorder>();
  const std::vector<std::string> lines = run_with(tiny_options(dir, 2), {ext, rec});
  ASSERT_EQ(ext->plan().size(), 1u);
  EXPECT_EQ(ext->plan()[0].name, "all");
  EXPECT_EQ(ext->plan()[0].members.size(), 12u);
  EXPECT_EQ(ext->plan()[0].share, 1.0);
  EXPECT_EQ(ext->stats().computed, 0);  // no embeddings needed
  EXPECT_TRUE(has_line(lines, "replay: uniform over 12 prior clips; 2 prior clips per step"));
  ASSERT_EQ(rec->fbanks.size(), 2u);
  EXPECT_EQ(rec->fbanks[0].size(0), 6);
  std::vector<int64_t> count(12, 0);
  for (int64_t i = 0; i < kDrawsForFrequencies; ++i) ++count[ext->draw(i, 0).item];
  const double n = kDrawsForFrequencies, p = 1.0 / 12;
  for (int64_t c : count) EXPECT_NEAR(c, n * p, kFrequencySigmas * std::sqrt(n * p * (1 - p)));
  fs::remove_all(dir);
}

// ---- bad input ----

TEST(Replay, BadInputFailsBeforeTheRunFolderIsWritten) {
  const std::string dir = run_dir("bad");
  auto expect_error = [&](const ReplayOptions& r, const std::string& needle) {
    try {
      Trainer(tiny_options(dir, 2), {std::make_shared<ReplayExtension>(r)}).run();
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line: " << e.what();
    }
    EXPECT_FALSE(fs::exists(dir)) << needle;
  };
  // A pool of files that are not audio.
  const fs::path junk = fs::path(run_dir("junk"));
  fs::create_directories(junk);
  for (const char* f : {"a.wav", "b.wav"}) std::ofstream(junk / f) << "not audio";
  std::ofstream(junk / "list.txt") << "a.wav\nb.wav\nmissing.wav\n";
  ReplayOptions r = replay_options("auto");
  r.prior = (junk / "list.txt").string();
  expect_error(r, "--prior " + r.prior + ": no usable clip among 3");
  r.mode = "uniform";
  expect_error(r, "no usable clip among 3");
  // Labels asked of an unlabelled pool (a plain file list of good clips).
  const audio::Dataset prior = audio::read_source(corpus_dir() + "/prior.csv");
  std::ofstream(junk / "good.txt") << fs::absolute(prior.items[0].path).string() << "\n"
                                   << fs::absolute(prior.items[1].path).string() << "\n";
  r = replay_options("labels");
  r.prior = (junk / "good.txt").string();
  expect_error(r, "--strata labels: the prior pool " + r.prior + " has no labels");
  // An empty pool, a missing pool, a layer the model does not have.
  std::ofstream(junk / "empty.txt") << "# nothing\n";
  r = replay_options();
  r.prior = (junk / "empty.txt").string();
  expect_error(r, ": no audio clips");
  r = replay_options();
  r.prior = (junk / "missing.csv").string();
  expect_error(r, "missing.csv");
  r = replay_options();
  r.layer = 5;
  expect_error(r, "--replay-layer 5: the model has 2 blocks");
  fs::remove_all(junk);
}
