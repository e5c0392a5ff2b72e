// Tests of the linear-probe evaluation (sonar/probe.h): accuracy, macro-F1 (with a class that is never true and
// one that never occurs) and average precision (with tied scores) against values computed by hand; the
// logistic-regression probe on easily separable synthetic features (single- and multi-label); early stopping;
// the whole evaluation on a synthetic corpus with train/val/test splits and with numeric folds; errors.
// Not tested here: the command line (tests/apps/test_cmd_pretrain.cpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "audio/loader.h"
#include "audio/synth_corpus.h"
#include "nn/beats/beats.h"
#include "nn/beats/checkpoint.h"
#include "sonar/probe.h"
#include "sonar/trainer.h"
#include "tensor/random.h"

namespace fs = std::filesystem;
using namespace sonar;
using namespace sonar::method;

namespace {

constexpr double kExact = 1e-12;           // hand-computed metrics: only rounding separates them
constexpr double kSeparableMinAcc = 0.95;  // well-separated blobs: the probe must classify them almost perfectly
constexpr double kSeparableMinMap = 0.95;

Tensor blobs(int64_t n_per_class, int64_t K, int64_t C, double spread, uint64_t seed, Tensor* labels) {
  Generator g(seed);
  Tensor x = Tensor::empty({n_per_class * K, C});
  std::vector<int64_t> y;
  float* p = x.data<float>();
  for (int64_t k = 0; k < K; ++k)
    for (int64_t i = 0; i < n_per_class; ++i) {
      const int64_t r = k * n_per_class + i;
      for (int64_t c = 0; c < C; ++c) p[r * C + c] = static_cast<float>((c % K == k ? 3.0 : 0.0) + spread * g.next_normal());
      y.push_back(k);
    }
  *labels = from_vector(y, {n_per_class * K});
  return x;
}

std::string tmp(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("sonar_test_probe_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  return p.string();
}

// A small synthetic corpus in a fresh temporary folder: 6 one-second clips per class, `prior_clips` prior clips.
std::string small_corpus(const std::string& name, int64_t prior_clips, uint64_t seed) {
  const std::string dir = tmp(name);
  audio::SynthCorpusOptions co;
  co.clips_per_class = 6;
  co.prior_clips = prior_clips;
  co.seconds = 1.0;
  co.seed = seed;
  audio::build_synth_corpus(dir, co);
  return dir;
}

// The probe of a fresh tiny model on `data`, logging nothing.
ProbeOptions tiny_probe(const std::string& data) {
  ProbeOptions o;
  o.preset = "tiny";
  o.data = data;
  o.log = [](const std::string&) {};
  return o;
}

}  // namespace

TEST(ProbeMetrics, AccuracyAndMacroF1ByHand) {
  const std::vector<int64_t> truth = {0, 0, 1, 1, 1}, pred = {0, 1, 1, 1, 2};
  EXPECT_NEAR(accuracy(truth, pred), 3.0 / 5.0, kExact);
  // Class 0: TP 1, FP 0, FN 1 -> 2/3. Class 1: TP 2, FP 1, FN 1 -> 4/6. Class 2: predicted once, never true -> 0.
  // Class 3: never true, never predicted -> left out. Mean over 3 classes: (2/3 + 2/3 + 0) / 3 = 4/9.
  EXPECT_NEAR(macro_f1(truth, pred, 4), 4.0 / 9.0, kExact);
  const std::vector<double> f1 = class_f1(truth, pred, 4);
  ASSERT_EQ(f1.size(), 4u);
  EXPECT_NEAR(f1[0], 2.0 / 3.0, kExact);
  EXPECT_NEAR(f1[1], 4.0 / 6.0, kExact);
  EXPECT_NEAR(f1[2], 0.0, kExact);
  EXPECT_TRUE(std::isnan(f1[3]));
  EXPECT_NEAR(macro_f1({2, 2, 2}, {2, 2, 2}, 3), 1.0, kExact);
  EXPECT_NEAR(macro_f1({0, 1}, {1, 0}, 2), 0.0, kExact);
  EXPECT_TRUE(std::isnan(accuracy({}, {})));
  EXPECT_THROW(macro_f1({0, 5}, {0, 1}, 3), Error);
  EXPECT_THROW(accuracy({0, 1}, {0}), Error);
}

TEST(ProbeMetrics, AveragePrecisionWithTiesByHand) {
  // Thresholds 0.9, 0.8 (two tied items, one positive), 0.3 (tied, one positive), 0.1; 3 positives.
  // (1/3) * 1 + (1/3) * (2/3) + (1/3) * (3/5) + 0 = 34/45.
  const std::vector<double> s = {0.9, 0.8, 0.8, 0.3, 0.3, 0.1};
  const std::vector<uint8_t> pos = {1, 0, 1, 1, 0, 0};
  EXPECT_NEAR(average_precision(s, pos), 34.0 / 45.0, kExact);
  // Order of tied items does not matter.
  EXPECT_NEAR(average_precision({0.9, 0.8, 0.8, 0.3, 0.3, 0.1}, {1, 1, 0, 0, 1, 0}), 34.0 / 45.0, kExact);
  // All scores tied: AP = prevalence.
  EXPECT_NEAR(average_precision({0.5, 0.5, 0.5, 0.5}, {1, 0, 0, 1}), 0.5, kExact);
  // A perfect ranking.
  EXPECT_NEAR(average_precision({0.1, 0.7, 0.9}, {0, 1, 1}), 1.0, kExact);
  EXPECT_TRUE(std::isnan(average_precision({0.1, 0.2}, {0, 0})));

  // mAP: column 0 as above, column 1 perfect, column 2 without positives (left out): (34/45 + 1) / 2.
  Tensor scores = Tensor::empty({6, 3}), targets = Tensor::empty({6, 3});
  const double s1[6] = {0.0, 0.0, 0.0, 0.0, 0.9, 0.8};
  const float t1[6] = {0, 0, 0, 0, 1, 1};
  for (int i = 0; i < 6; ++i) {
    scores.data<float>()[i * 3 + 0] = static_cast<float>(s[i]);
    targets.data<float>()[i * 3 + 0] = pos[i];
    scores.data<float>()[i * 3 + 1] = static_cast<float>(s1[i]);
    targets.data<float>()[i * 3 + 1] = t1[i];
    scores.data<float>()[i * 3 + 2] = 0.5f;
    targets.data<float>()[i * 3 + 2] = 0.0f;
  }
  int64_t used = 0;
  // float32 scores: 0.8 and 0.3 stay tied after rounding, so the value is the same as in double.
  EXPECT_NEAR(mean_average_precision(scores, targets, &used), (34.0 / 45.0 + 1.0) / 2.0, kExact);
  EXPECT_EQ(used, 2);
  EXPECT_THROW(mean_average_precision(scores, targets.narrow(1, 0, 2)), Error);
  // The per-class values it averages, in column order, NaN for the class without a positive.
  const std::vector<double> aps = class_average_precision(scores, targets);
  ASSERT_EQ(aps.size(), 3u);
  EXPECT_NEAR(aps[0], 34.0 / 45.0, kExact);
  EXPECT_NEAR(aps[1], 1.0, kExact);
  EXPECT_TRUE(std::isnan(aps[2]));
}

TEST(LinearProbe, SeparatesEasySyntheticClasses) {
  Tensor ytr, yva, yte;
  const Tensor xtr = blobs(40, 4, 16, 0.7, 1, &ytr), xva = blobs(10, 4, 16, 0.7, 2, &yva),
               xte = blobs(25, 4, 16, 0.7, 3, &yte);
  LinearProbeOptions o;
  LinearProbe p = train_linear_probe(xtr, ytr, xva, yva, 4, false, o);
  EXPECT_GE(p.best_epoch, 1);
  EXPECT_LE(p.best_epoch, p.epochs_run);
  SplitMetrics m = evaluate_probe(p, xte, yte, 4);
  EXPECT_EQ(m.n, 100);
  EXPECT_GE(m.accuracy, kSeparableMinAcc);
  EXPECT_GE(m.macro_f1, kSeparableMinAcc);
  EXPECT_TRUE(std::isnan(m.mAP));
  // Deterministic for a seed.
  LinearProbe q = train_linear_probe(xtr, ytr, xva, yva, 4, false, o);
  EXPECT_EQ(q.best_epoch, p.best_epoch);
  EXPECT_EQ(evaluate_probe(q, xte, yte, 4).loss, m.loss);

  // Multi-label: class k is on when feature k is high; items carry one or two classes.
  auto multi = [](int64_t n, uint64_t seed, Tensor* y) {
    Generator g(seed);
    Tensor x = Tensor::empty({n, 8});
    *y = Tensor::empty({n, 3});
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t k = 0; k < 3; ++k) y->data<float>()[i * 3 + k] = g.next_uniform() < 0.4 ? 1.0f : 0.0f;
      for (int64_t c = 0; c < 8; ++c)
        x.data<float>()[i * 8 + c] = static_cast<float>((c < 3 ? 3.0 * y->data<float>()[i * 3 + c] : 0.0) +
                                                        0.5 * g.next_normal());
    }
    return x;
  };
  Tensor mtr, mva, mte;
  const Tensor a = multi(150, 4, &mtr), b = multi(40, 5, &mva), c = multi(80, 6, &mte);
  LinearProbe pm = train_linear_probe(a, mtr, b, mva, 3, true, o);
  SplitMetrics mm = evaluate_probe(pm, c, mte, 3);
  EXPECT_GE(mm.mAP, kSeparableMinMap);
  EXPECT_TRUE(std::isnan(mm.accuracy));
}

TEST(LinearProbe, EarlyStoppingKeepsTheBestValidationEpoch) {
  // Pure noise: nothing generalises, so the validation loss turns up early and patience stops the run.
  Tensor ytr, yva;
  Tensor xtr = blobs(10, 3, 32, 0.0, 7, &ytr), xva = blobs(10, 3, 32, 0.0, 8, &yva);
  Generator g(9);
  for (Tensor* x : {&xtr, &xva})
    for (int64_t i = 0; i < x->numel(); ++i) x->data<float>()[i] = static_cast<float>(g.next_normal());
  LinearProbeOptions o;
  o.epochs = 500;
  o.patience = 10;
  LinearProbe p = train_linear_probe(xtr, ytr, xva, yva, 3, false, o);
  EXPECT_LT(p.epochs_run, o.epochs);
  EXPECT_EQ(p.epochs_run, p.best_epoch + o.patience);
  EXPECT_NEAR(evaluate_probe(p, xva, yva, 3).loss, p.best_val_loss, 1e-6 * p.best_val_loss);
  // Without a validation set every epoch runs.
  LinearProbeOptions o2 = o;
  o2.epochs = 7;
  LinearProbe q = train_linear_probe(xtr, ytr, Tensor(), Tensor(), 3, false, o2);
  EXPECT_EQ(q.epochs_run, 7);
  EXPECT_TRUE(std::isnan(q.best_val_loss));
  EXPECT_THROW(train_linear_probe(xtr, ytr, xva, yva, 2, false, o), Error);  // labels up to 2 with K = 2
}

TEST(RunProbe, SplitsFoldsAndReport) {
  const std::string dir = small_corpus("corpus", 12, 3);
  ProbeOptions o = tiny_probe(dir + "/noise.csv");
  ProbeReport r = run_probe(o);
  EXPECT_FALSE(r.multi_label);
  EXPECT_EQ(r.classes.size(), 4u);
  EXPECT_EQ(r.layer, 2);
  EXPECT_EQ(r.feature_dim, 64);
  ASSERT_EQ(r.folds.size(), 1u);
  EXPECT_EQ(r.folds[0].train + r.folds[0].val + r.folds[0].test, 24);
  EXPECT_GT(r.folds[0].val, 0);
  EXPECT_GE(r.test.accuracy, 0.0);
  EXPECT_LE(r.test.accuracy, 1.0);
  const nlohmann::json j = r.to_json();
  EXPECT_EQ(j.at("task"), "single-label");
  EXPECT_TRUE(j.contains("test_accuracy") && j.contains("test_macro_f1"));
  // The per-class F1 the macro-F1 averages, by class name.
  ASSERT_EQ(r.test.class_scores.size(), 4u);
  double f1_sum = 0.0;
  int f1_n = 0;
  for (const auto& cls : r.classes) {
    const auto& v = j.at("test_class_F1").at(cls);
    if (!v.is_null()) f1_sum += v.get<double>(), ++f1_n;
  }
  ASSERT_GT(f1_n, 0);
  EXPECT_NEAR(f1_sum / f1_n, r.test.macro_f1, 1e-12);

  // The multi-label prior pool, features of block 1.
  o.data = dir + "/prior.csv";
  o.features.layer = 1;
  ProbeReport rp = run_probe(o);
  EXPECT_TRUE(rp.multi_label);
  EXPECT_EQ(rp.layer, 1);
  EXPECT_TRUE(rp.to_json().contains("test_mAP"));
  ASSERT_EQ(rp.test.class_scores.size(), rp.classes.size());
  EXPECT_EQ(rp.to_json().at("test_class_AP").size(), rp.classes.size());
  EXPECT_FALSE(std::isnan(rp.test.mAP));

  // Numeric folds: the same clips relabelled into folds 1..3; each fold is the test set once.
  {
    std::ifstream in(dir + "/noise.csv");
    std::ofstream out(dir + "/folds.csv");
    std::string line;
    std::getline(in, line);
    out << "path,label,fold\n";
    int i = 0;
    while (std::getline(in, line)) {
      const size_t a = line.find(','), b = line.find(',', a + 1);
      out << line.substr(0, b) << "," << (i++ % 3) + 1 << "\n";
    }
  }
  o.data = dir + "/folds.csv";
  o.features.layer = 0;
  ProbeReport rf = run_probe(o);
  ASSERT_EQ(rf.folds.size(), 3u);
  double mean = 0;
  for (const auto& f : rf.folds) {
    EXPECT_EQ(f.test, 8);
    mean += f.test_metrics.accuracy / 3;
  }
  EXPECT_NEAR(rf.test.accuracy, mean, kExact);

  // Errors: unusable splits, a missing layer, a tokenizer with no encoder.
  {
    std::ofstream out(dir + "/odd.csv");
    out << "path,label,split\nnoise/hiss/x.wav,hiss,alpha\nnoise/hiss/y.wav,rumble,beta\n";
  }
  o.data = dir + "/odd.csv";
  try {
    run_probe(o);
    ADD_FAILURE() << "odd splits accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot tell training from test clips"), std::string::npos) << e.what();
  }
  o.data = dir + "/noise.csv";
  o.features.layer = 3;
  EXPECT_THROW(run_probe(o), Error);
  fs::remove_all(dir);
}

// --group-folds: every clip lands in exactly one of K folds, a group's clips together, each class spread
// over the folds (dealt round-robin), the same seed the same folds; the probe then tests every clip once.
TEST(RunProbe, GroupFoldsKeepGroupsTogetherAndTestEveryClip) {
  audio::Dataset ds;
  const std::vector<std::string> classes = {"a", "b", "c"};
  for (int c = 0; c < 3; ++c)
    for (int g = 0; g < 7; ++g)
      for (int k = 0; k <= g % 3; ++k) {  // groups of 1-3 clips
        audio::AudioItem it;
        it.path = "x/" + classes[c] + std::to_string(g) + "_" + std::to_string(k) + ".wav";
        it.labels = {classes[c]};
        it.group = classes[c] + std::to_string(g);
        ds.items.push_back(it);
      }
  ds.classes = classes;
  const std::vector<std::string> f = probe_group_folds(ds, 3, 11);
  ASSERT_EQ(f.size(), ds.items.size());
  std::map<std::string, std::string> fold_of_group;
  std::map<std::string, std::set<std::string>> groups_per_fold_class;
  for (size_t i = 0; i < f.size(); ++i) {
    ASSERT_TRUE(f[i] == "1" || f[i] == "2" || f[i] == "3") << f[i];
    auto [it, fresh] = fold_of_group.emplace(ds.items[i].group, f[i]);
    EXPECT_EQ(it->second, f[i]) << "group " << ds.items[i].group << " split over folds";
    groups_per_fold_class[f[i] + ds.items[i].labels[0]].insert(ds.items[i].group);
  }
  // 7 groups of each class over 3 folds: 2 or 3 in each fold.
  for (const auto& fc : groups_per_fold_class) EXPECT_GE(fc.second.size(), 2u) << fc.first;
  EXPECT_EQ(groups_per_fold_class.size(), 9u);
  EXPECT_EQ(probe_group_folds(ds, 3, 11), f);
  // A clip without a group is a group of its own.
  ds.items[0].group.clear();
  EXPECT_EQ(probe_group_folds(ds, 3, 11).size(), ds.items.size());
  EXPECT_THROW(probe_group_folds(ds, 1, 11), Error);

  const std::string dir = small_corpus("group_folds", 12, 5);
  ProbeOptions o = tiny_probe(dir + "/noise.csv");
  o.group_folds = 3;
  const ProbeReport r = run_probe(o);
  ASSERT_EQ(r.folds.size(), 3u);
  int64_t tested = 0;
  for (const auto& fr : r.folds) tested += fr.test;
  EXPECT_EQ(tested, 24);  // every clip of the 4 x 6 is tested exactly once
  EXPECT_EQ(r.to_json().at("group_folds"), 3);
  o.group_folds = 50;  // more folds than groups
  EXPECT_THROW(run_probe(o), Error);
  fs::remove_all(dir);
}

// A clip shorter than one patch is padded to one patch (its features equal the model's output on its
// normalised fbank extended with zero frames), and clips that cannot be read are listed and left out while
// every other clip is evaluated.
TEST(RunProbe, ShortClipsArePaddedAndBadClipsListed) {
  constexpr double kPaddedTolerance = 1e-5;  // same forward pass, batch of one vs batch of several
  const std::string dir = small_corpus("short", 3, 4);
  // 0.1 s (1600 samples: 8 fbank frames, half a patch) of a hiss clip, as the Debian benchmark's shortest clips.
  const audio::SynthClip hiss = audio::synth_render("noise", "hiss", 1, 2, 0.1);
  audio::synth_write_wav(dir + "/short.wav", hiss.samples, 16000, false);
  { std::ofstream(dir + "/broken.wav") << "not a wav file"; }
  {
    std::ifstream in(dir + "/noise.csv");
    std::ofstream out(dir + "/mixed.csv");
    std::string line;
    while (std::getline(in, line)) out << line << "\n";
    out << "short.wav,hiss,test,gshort,synthetic,CC0-1.0\n"
        << "broken.wav,hiss,train,gbroken,synthetic,CC0-1.0\n"
        << "missing.wav,rumble,test,gmissing,synthetic,CC0-1.0\n";
  }
  ProbeOptions o = tiny_probe(dir + "/mixed.csv");
  std::vector<std::string> lines;
  o.log = [&](const std::string& l) { lines.push_back(l); };
  const ProbeReport r = run_probe(o);
  EXPECT_EQ(r.padded, 1);
  ASSERT_EQ(r.skipped.size(), 2u);
  std::string all;
  for (const auto& l : lines) all += l + "\n";
  EXPECT_NE(all.find("2 of 27 clips cannot be used"), std::string::npos) << all;
  EXPECT_NE(all.find("skipped " + dir + "/broken.wav"), std::string::npos) << all;
  EXPECT_NE(all.find("skipped " + dir + "/missing.wav"), std::string::npos) << all;
  EXPECT_NE(all.find("1 clips shorter than one patch"), std::string::npos) << all;
  ASSERT_EQ(r.folds.size(), 1u);
  EXPECT_EQ(r.folds[0].train + r.folds[0].val + r.folds[0].test, 25);  // 24 + the short clip
  EXPECT_EQ(r.to_json().at("skipped_clips").size(), 2u);

  // The short clip's features by hand: its normalised fbank, zero frames up to one patch, no mask.
  Generator gen(0);
  beats::BeatsModel model(preset_config("tiny"), &gen);
  audio::Dataset one = audio::read_source(dir + "/mixed.csv");
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < one.size(); ++i)
    if (one.items[i].path.find("short.wav") != std::string::npos || i < 3) idx.push_back(i);
  one = one.subset(idx);  // three ordinary clips and the short one, in one batch
  ProbeFeatureOptions fo;
  fo.batch_size = 8;
  FeatureSkips sk;
  const Tensor feats = clip_features(model, one, fo, {}, &sk);
  EXPECT_EQ(sk.padded, 1);
  EXPECT_TRUE(sk.items.empty());
  audio::LoaderOptions lo;
  lo.crop = audio::CropMode::Full;
  const audio::LoadedClip lc = audio::load_clip(dir + "/short.wav", lo);
  const int64_t T = lc.fbank.size(0), F = lc.fbank.size(1);
  ASSERT_LT(T, 16);
  Tensor fb = Tensor::empty({1, 16, F});
  for (int64_t t = 0; t < 16; ++t)
    for (int64_t f = 0; f < F; ++f)
      fb.data<float>()[t * F + f] =
          t < T ? static_cast<float>((lc.fbank.data<float>()[t * F + f] - audio::kBeatsFbankMean) /
                                     (2 * audio::kBeatsFbankStd))
                : 0.0f;
  model.eval();
  ag::NoGradGuard ng;
  beats::FeatureOptions bo;
  bo.padding = beats::PaddingMode::Exact;
  const Tensor x = model.forward_fbank(ag::Var(fb), Tensor(), bo).x.value().contiguous();  // [1, P, C]
  const int64_t P = x.size(1), C = x.size(2);
  const int64_t row = 3;  // the short clip is the last of the subset
  for (int64_t c = 0; c < C; ++c) {
    double m = 0;
    for (int64_t p = 0; p < P; ++p) m += x.data<float>()[p * C + c];
    EXPECT_NEAR(feats.data<float>()[row * C + c], m / P, kPaddedTolerance) << c;
  }
  // Without a skip list, bad clips are one error counting them all.
  audio::Dataset mixed = audio::read_source(dir + "/mixed.csv");
  try {
    clip_features(model, mixed, fo);
    ADD_FAILURE() << "bad clips accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2 of 27 clips cannot be used"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}
