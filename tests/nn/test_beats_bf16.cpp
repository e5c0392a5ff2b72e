// Accuracy of bf16 matrix products (tensor/precision.h) on BEATs, measured rather than assumed: the official
// tiny model's features on the fixture clip, layer by layer, against our float32 run (which the parity tests
// tie to the official code) and the final features against the official reference; and a tiny masked
// pre-training run whose bf16 loss curve must follow the float32 one (same seeds) within a stated band.
// Skipped (with the reason) on a CPU without AVX512-BF16.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <omp.h>

#include "audio/synth_corpus.h"
#include "autograd/ops.h"
#include "nn/beats/checkpoint.h"
#include "nn/beats/pretrain.h"
#include "tests/nn/beats_test_util.h"
#include "tensor/ops.h"
#include "tensor/precision.h"

namespace sonar::beats {
namespace {

const std::string kDir = std::string(SONAR_FIXTURES_DIR) + "/beats_tiny/";
// Per layer: max |bf16 - f32| over the layer's largest |f32| value. bf16 operands carry 8 significant bits
// (relative rounding up to 2^-9 = 2e-3 per operand); measured on this fixture: 3.0e-3 .. 4.2e-3 (AMD EPYC
// Zen 5, docs/performance.md). The band is about 5x that, for other CPUs' kernels and summation orders.
constexpr double kLayerMaxRelBand = 2e-2;
// Per layer: ||bf16 - f32|| / ||f32|| (root mean square); measured 2.4e-3 .. 2.6e-3.
constexpr double kLayerRmsRelBand = 1e-2;
// Loss curve: per step |loss_bf16 - loss_f32| / loss_f32 over a 20-step run from the same seeds; measured
// worst 1.1e-3 over these 20 steps, 3.2e-3 when run to 30 (the curves drift apart slowly as the weights
// diverge by rounding).
constexpr double kLossCurveRelBand = 1e-2;
constexpr double kMinRelativeDrop = 0.15;  // both runs must learn: mean of the last 5 vs the first 3 steps

class BeatsBf16 : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = bf16_unsupported_reason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

struct RelErr {
  double max_rel = 0, rms_rel = 0;
};

RelErr rel_err(const Tensor& got, const Tensor& ref) {
  EXPECT_EQ(shape_str(got.shape()), shape_str(ref.shape()));
  auto g = got.contiguous().to_vector<float>(), r = ref.contiguous().to_vector<float>();
  double ref_max = 0, diff_max = 0, diff_sq = 0, ref_sq = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    const double d = static_cast<double>(g[i]) - r[i];
    ref_max = std::max(ref_max, std::fabs(static_cast<double>(r[i])));
    diff_max = std::max(diff_max, std::fabs(d));
    diff_sq += d * d;
    ref_sq += static_cast<double>(r[i]) * r[i];
  }
  RelErr e;
  e.max_rel = diff_max / ref_max;
  e.rms_rel = std::sqrt(diff_sq / ref_sq);
  return e;
}

TEST_F(BeatsBf16, FeaturesPerLayerWithinBand) {
  auto model = load_beats(kDir + "beats.pt");
  model->eval();
  ag::NoGradGuard ng;
  const Tensor wave = load_npy(kDir + "wave.npy").narrow(0, 0, 1);
  FeatureOptions fo;
  fo.layer_results = true;
  const Features f32 = model->extract_features(wave, Tensor(), fo);
  Features b16;
  {
    PrecisionGuard g(Precision::BF16);
    b16 = model->extract_features(wave, Tensor(), fo);
  }
  ASSERT_EQ(f32.layer_results.size(), b16.layer_results.size());
  for (size_t i = 0; i < f32.layer_results.size(); ++i) {
    const RelErr e = rel_err(b16.layer_results[i].value(), f32.layer_results[i].value());
    std::printf("  layer %zu: max rel %.3g, rms rel %.3g\n", i, e.max_rel, e.rms_rel);
    EXPECT_LE(e.max_rel, kLayerMaxRelBand) << "layer " << i;
    EXPECT_LE(e.rms_rel, kLayerRmsRelBand) << "layer " << i;
    if (i > 0) {
      EXPECT_GT(e.rms_rel, 0.0) << "layer " << i << " is bit-identical: bf16 did not run";
    }
  }
  const RelErr fin = rel_err(b16.x.value(), load_npy(kDir + "features_single.npy"));
  std::printf("  final vs official float32: max rel %.3g, rms rel %.3g\n", fin.max_rel, fin.rms_rel);
  EXPECT_LE(fin.max_rel, kLayerMaxRelBand);
  EXPECT_LE(fin.rms_rel, kLayerRmsRelBand);
}

BeatsConfig tiny_cfg() { return testutil::small_beats_config(0.05); }

Tensor synth_fbank(int64_t clips, double seconds, uint64_t seed) {
  return testutil::synth_fbank(clips, seconds, seed,
      {{"music", "tone"}, {"birds", "upsweep"}, {"music", "major_chord"}, {"birds", "trill"}, {"birds", "downsweep"},
       {"music", "minor_chord"}});
}

constexpr int kSteps = 20;

// kSteps steps of masked pre-training of the tiny model in `p`, from fixed seeds; the loss of each step. One
// thread: the model is too small for a second one to help, and on a shared machine OpenMP barriers between
// two threads made this test ten times slower.
std::vector<double> loss_curve(Precision p) {
  PrecisionGuard guard(p);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  Generator init(1);
  auto model = std::make_shared<BeatsModel>(tiny_cfg(), &init);
  MlpOptions o;
  o.predictor.layers = 2;
  o.predictor.num_classes = 32;
  auto mlp = std::make_shared<MaskedLabelPrediction>(model, o, &init);
  mlp->train();
  Generator tg(2);
  RandomProjectionTokenizer tok(16, 32, 16, &tg);
  const Tensor fb = synth_fbank(6, 1.0, 3);
  const Tensor labels = tok.labels(fb);
  TrainStepOptions so;
  so.adamw.lr = 4e-3f;
  so.adamw.weight_decay = 0.01f;
  so.max_grad_norm = 1.0f;
  TrainStep step(*mlp, so);
  Generator mg(10), dg(11);
  nn::RngScope scope(dg);
  std::vector<double> loss;
  for (int i = 0; i < kSteps; ++i)
    loss.push_back(step.run([&] { return mlp->forward(ag::Var(fb), Tensor(), labels, mg).loss; }).loss);
  omp_set_num_threads(threads);
  return loss;
}

TEST_F(BeatsBf16, PretrainingLossCurveFollowsFloat32) {
  const std::vector<double> f32 = loss_curve(Precision::F32), b16 = loss_curve(Precision::BF16);
  double worst = 0;
  bool differs = false;
  for (size_t i = 0; i < f32.size(); ++i) {
    const double rel = std::fabs(b16[i] - f32[i]) / f32[i];
    worst = std::max(worst, rel);
    differs = differs || b16[i] != f32[i];
    if (std::getenv("SONAR_TEST_VERBOSE")) std::printf("step %zu f32 %.5f bf16 %.5f rel %.2e\n", i, f32[i], b16[i], rel);
    EXPECT_LE(rel, kLossCurveRelBand) << "step " << i << ": f32 " << f32[i] << ", bf16 " << b16[i];
  }
  std::printf("  loss curve: worst per-step relative difference %.3g over %zu steps\n", worst, f32.size());
  EXPECT_TRUE(differs) << "identical curves: bf16 did not run";
  auto mean = [](const std::vector<double>& v, size_t a, size_t b) {
    double s = 0;
    for (size_t i = a; i < b; ++i) s += v[i];
    return s / static_cast<double>(b - a);
  };
  for (const auto* c : {&f32, &b16})
    EXPECT_LT(mean(*c, c->size() - 5, c->size()), (1.0 - kMinRelativeDrop) * mean(*c, 0, 3));
}

}  // namespace
}  // namespace sonar::beats
