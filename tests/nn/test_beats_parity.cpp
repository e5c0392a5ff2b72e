// Parity of the BEATs family with the official PyTorch implementation on tests/fixtures/beats_tiny: features
// of one clip and of a padded batch (with the returned patch mask), fine-tuned probabilities, tokenizer
// quantizer inputs and labels, and every parameter gradient of a fixed loss, all loaded from the official .pt
// files with the project's own reader. Tolerances are the fixtures README's.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "autograd/ops.h"
#include "nn/beats/checkpoint.h"
#include "tensor/ops.h"

namespace sonar::beats {
namespace {

const std::string kDir = std::string(SONAR_FIXTURES_DIR) + "/beats_tiny/";
constexpr double kFeatureTol = 1e-4;   // absolute, or relative to the largest reference magnitude
constexpr double kGradientTol = 1e-3;  // relative to each gradient tensor's largest magnitude
// The key projection's bias gets a gradient that is exactly zero in exact arithmetic (it adds q.b to every
// key of a query, and softmax ignores a per-query constant), so the reference holds float32 rounding noise
// of ~1e-9 there. Relative errors are taken against at least this fraction of the largest gradient of the
// model (~1 here): far below any gradient that is not noise.
constexpr double kGradientNoiseFloor = 1e-5;

struct Err {
  double max_abs = 0, ref_max = 0;
  double rel() const { return ref_max > 0 ? max_abs / ref_max : max_abs; }
};

Err compare(const Tensor& got, const Tensor& ref, const std::string& what) {
  EXPECT_EQ(shape_str(got.shape()), shape_str(ref.shape())) << what;
  Err e;
  if (got.shape() != ref.shape()) return e;
  auto g = got.contiguous().to_vector<float>(), r = ref.contiguous().to_vector<float>();
  int reported = 0;
  for (size_t i = 0; i < r.size(); ++i) e.ref_max = std::max(e.ref_max, static_cast<double>(std::fabs(r[i])));
  for (size_t i = 0; i < r.size(); ++i) {
    const double d = std::fabs(static_cast<double>(g[i]) - r[i]);
    if (std::isnan(g[i]) || d > std::max(kFeatureTol, kFeatureTol * e.ref_max)) {
      if (reported++ < 3) ADD_FAILURE() << what << ": element " << i << " got " << g[i] << ", want " << r[i];
    }
    e.max_abs = std::max(e.max_abs, d);
  }
  std::printf("  %-28s max abs err %.3g (ref max %.3g)\n", what.c_str(), e.max_abs, e.ref_max);
  return e;
}

bool within(const Err& e) { return e.max_abs <= kFeatureTol || e.rel() <= kFeatureTol; }

TEST(BeatsParity, FeaturesOfOneClip) {
  auto model = load_beats(kDir + "beats.pt");
  ag::NoGradGuard ng;
  Tensor wave = load_npy(kDir + "wave.npy");
  Features f = model->extract_features(wave.narrow(0, 0, 1));
  EXPECT_FALSE(f.padding_mask.defined());
  EXPECT_TRUE(within(compare(f.x.value(), load_npy(kDir + "features_single.npy"), "features_single")));
}

TEST(BeatsParity, FeaturesOfAPaddedBatchAndItsMask) {
  auto model = load_beats(kDir + "beats.pt");
  ag::NoGradGuard ng;
  Features f = model->extract_features(load_npy(kDir + "wave.npy"), load_npy(kDir + "padding_mask.npy"));
  EXPECT_TRUE(within(compare(f.x.value(), load_npy(kDir + "features_batch.npy"), "features_batch")));
  ASSERT_TRUE(f.padding_mask.defined());
  EXPECT_EQ(f.padding_mask.to(DType::Int64).to_vector<int64_t>(),
            load_npy(kDir + "features_batch_mask.npy").to(DType::Int64).to_vector<int64_t>());
}

TEST(BeatsParity, FinetunedProbabilitiesAndLabels) {
  auto model = load_beats(kDir + "beats_finetuned.pt");
  ASSERT_TRUE(model->has_predictor());
  EXPECT_EQ(model->labels.size(), 10u);
  EXPECT_EQ(model->labels.at(3), "class_3");
  ag::NoGradGuard ng;
  Prediction p = model->classify(load_npy(kDir + "wave.npy"), load_npy(kDir + "padding_mask.npy"));
  EXPECT_TRUE(within(compare(p.probs.value(), load_npy(kDir + "finetuned_probs.npy"), "finetuned_probs")));
}

TEST(BeatsParity, TokenizerQuantizerInputAndLabels) {
  auto tok = load_tokenizer(kDir + "tokenizer.pt");
  ag::NoGradGuard ng;
  TokenizerOutput out = tok->extract_labels(load_npy(kDir + "wave.npy").narrow(0, 0, 1));
  EXPECT_TRUE(within(compare(out.quantize_input.value(), load_npy(kDir + "tokenizer_quantize_input.npy"),
                             "tokenizer_quantize_input")));
  EXPECT_EQ(out.labels.to_vector<int64_t>(), load_npy(kDir + "tokenizer_labels_single.npy").to_vector<int64_t>());
}

TEST(BeatsParity, EveryParameterGradient) {
  auto model = load_beats(kDir + "beats.pt");
  model->train();  // every dropout of the fixture configuration is 0
  model->set_requires_grad(true);
  Features f = model->extract_features(load_npy(kDir + "wave.npy").narrow(0, 0, 1));
  const Tensor proj = load_npy(kDir + "grad_proj.npy");  // [C], broadcast over [1, P, C]
  ag::Var loss = ag::div(ag::sum(ag::mul(f.x, ag::Var(proj))), static_cast<float>(f.x.size(1)));
  EXPECT_NEAR(loss.item(), load_npy(kDir + "grad_loss.npy").item<double>(), kFeatureTol);
  loss.backward();

  auto ref = load_npz(kDir + "grads.npz");
  double largest = 0.0;
  for (const auto& [name, r] : ref) largest = std::max(largest, max_all(abs(r)).item<double>());
  auto params = model->named_parameters();
  EXPECT_EQ(params.size(), ref.size());
  double worst = 0.0, worst_signal = 0.0;  // worst_signal: over tensors above the noise floor
  std::string worst_name;
  for (const auto& [name, var] : params) {
    auto it = ref.find(name);
    if (it == ref.end()) {
      ADD_FAILURE() << "no reference gradient for " << name;
      continue;
    }
    ASSERT_TRUE(var.grad().defined()) << name << " received no gradient";
    Tensor g = var.grad(), r = it->second;
    ASSERT_EQ(shape_str(g.shape()), shape_str(r.shape())) << name;
    const double ref_max = max_all(abs(r)).item<double>();
    const double scale = std::max(ref_max, kGradientNoiseFloor * largest);
    const double err = max_all(abs(sub(g, r))).item<double>() / scale;
    if (ref_max > kGradientNoiseFloor * largest) worst_signal = std::max(worst_signal, err);
    EXPECT_LE(err, kGradientTol) << name << ": relative error " << err;
    if (err > worst) {
      worst = err;
      worst_name = name;
    }
  }
  std::printf("  gradients: worst relative error %.3g (%s) over %zu tensors; %.3g among non-zero gradients\n",
              worst, worst_name.c_str(), params.size(), worst_signal);
}

}  // namespace
}  // namespace sonar::beats
