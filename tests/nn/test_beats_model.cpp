// BEATs model behaviour beyond parity: the exact padding mode (a clip gives the same features alone and
// zero-padded in a batch, where the official mode does not), layer outputs, relative position buckets
// against values torch computed, train/eval behaviour, deep copies and a freshly initialised model.
// Not here: parity with the official code (test_beats_parity.cpp) or checkpoint files (test_beats_checkpoint.cpp).
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/ops.h"
#include "nn/beats/checkpoint.h"
#include "tensor/ops.h"

namespace sonar::beats {
namespace {

const std::string kDir = std::string(SONAR_FIXTURES_DIR) + "/beats_tiny/";
constexpr double kSameTol = 2e-5;  // relative to the largest magnitude: same computation, other batch layout
constexpr int64_t kClip1Samples = 11680;  // real length of clip 1 of wave.npy (cases.json)

double rel_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(shape_str(a.shape()), shape_str(b.shape()));
  const double scale = std::max(max_all(abs(b)).item<double>(), 1e-12);
  return max_all(abs(sub(a, b))).item<double>() / scale;
}

TEST(BeatsModel, ExactPaddingGivesTheSameFeaturesAloneAndInABatch) {
  auto model = load_beats(kDir + "beats.pt");
  ag::NoGradGuard ng;
  Tensor wave = load_npy(kDir + "wave.npy"), mask = load_npy(kDir + "padding_mask.npy");
  FeatureOptions exact;
  exact.padding = PaddingMode::Exact;
  Features batch = model->extract_features(wave, mask, exact);
  Features alone = model->extract_features(wave.select(0, 1).narrow(0, 0, kClip1Samples).contiguous(), Tensor(), exact);
  // 11680 samples -> 71 frames -> 4 time patches of 16 frames -> 32 patches; the batch has 6 x 8 = 48.
  ASSERT_EQ(alone.x.size(1), 32);
  ASSERT_EQ(batch.x.size(1), 48);
  std::vector<int64_t> want(96, 0);
  for (int64_t p = 32; p < 48; ++p) want[48 + p] = 1;
  EXPECT_EQ(batch.padding_mask.to(DType::Int64).to_vector<int64_t>(), want);
  Tensor real_part = batch.x.value().select(0, 1).narrow(0, 0, 32);
  const double d = rel_diff(real_part, alone.x.value().select(0, 0));
  std::printf("  exact padding: alone vs batch relative difference %.3g\n", d);
  EXPECT_LT(d, kSameTol);

  // The official mode masks only patches 36.. (as if patches were time), so clip 1 attends to padding.
  Features official = model->extract_features(wave, mask);
  const double d_official = rel_diff(official.x.value().select(0, 1).narrow(0, 0, 32), alone.x.value().select(0, 0));
  std::printf("  official padding: alone vs batch relative difference %.3g\n", d_official);
  EXPECT_GT(d_official, 100 * kSameTol);

  // The unpadded clip is unaffected by the mode.
  EXPECT_LT(rel_diff(batch.x.value().select(0, 0), official.x.value().select(0, 0)), kSameTol);
}

TEST(BeatsModel, ExactPaddingClassifierAndTokenizerMatchTheClipAlone) {
  Tensor wave = load_npy(kDir + "wave.npy"), mask = load_npy(kDir + "padding_mask.npy");
  Tensor clip1 = wave.select(0, 1).narrow(0, 0, kClip1Samples).contiguous();
  FeatureOptions exact;
  exact.padding = PaddingMode::Exact;
  ag::NoGradGuard ng;
  auto ft = load_beats(kDir + "beats_finetuned.pt");
  Tensor pb = ft->classify(wave, mask, exact).probs.value();
  Tensor pa = ft->classify(clip1, Tensor(), exact).probs.value();
  EXPECT_LT(rel_diff(pb.select(0, 1), pa.select(0, 0)), kSameTol);
  auto tok = load_tokenizer(kDir + "tokenizer.pt");
  Tensor lb = tok->extract_labels(wave, mask, exact).labels;
  Tensor la = tok->extract_labels(clip1, Tensor(), exact).labels;
  EXPECT_EQ(lb.select(0, 1).narrow(0, 0, 32).contiguous().to_vector<int64_t>(), la.to_vector<int64_t>());
}

TEST(BeatsModel, ExactPaddingRejectsPaddingBeforeRealSamples) {
  auto model = load_beats(kDir + "beats.pt");
  ag::NoGradGuard ng;
  Tensor wave = load_npy(kDir + "wave.npy");
  Tensor mask = zeros({2, 16000}, DType::UInt8);
  mask.select(0, 0).narrow(0, 100, 10).fill_(1);  // a gap in the middle of clip 0
  FeatureOptions exact;
  exact.padding = PaddingMode::Exact;
  EXPECT_THROW(model->extract_features(wave, mask, exact), Error);
}

TEST(BeatsModel, LayerOutputsOnRequest) {
  auto model = load_beats(kDir + "beats.pt");
  ag::NoGradGuard ng;
  Tensor wave = load_npy(kDir + "wave.npy").narrow(0, 0, 1);
  FeatureOptions all;
  all.layer_results = true;
  Features f = model->extract_features(wave, Tensor(), all);
  ASSERT_EQ(f.layer_results.size(), 3u);  // encoder input + 2 blocks
  // Post-LN model: the last block's output is the final output.
  EXPECT_EQ(rel_diff(f.layer_results[2].value(), f.x.value()), 0.0);
  FeatureOptions first;
  first.num_layers = 1;
  Features f1 = model->extract_features(wave, Tensor(), first);
  EXPECT_LT(rel_diff(f1.x.value(), f.layer_results[1].value()), kSameTol);
  EXPECT_GT(rel_diff(f1.x.value(), f.x.value()), 1e-3);
  FeatureOptions bad;
  bad.num_layers = 3;
  EXPECT_THROW(model->extract_features(wave, Tensor(), bad), Error);
}

TEST(BeatsModel, RelativePositionBucketsMatchTorch) {
  // Values printed by the official _relative_positions_bucket for these relative positions (key - query).
  const std::vector<int64_t> rel = {-3000, -800, -799, -100, -81, -80, -79, -40, -39, -1, 0,
                                    1,     39,   40,   41,   79,  80,  100, 500, 799, 800, 3000};
  const std::vector<int64_t> want_320_800 = {159, 159, 159, 87,  80,  80,  79,  40,  39,  1,   0,
                                             161, 199, 200, 201, 239, 240, 247, 303, 319, 319, 319};
  const std::vector<int64_t> want_32_64 = {15, 15, 15, 15, 15, 15, 15, 14, 14, 1,  0,
                                           17, 30, 30, 30, 31, 31, 31, 31, 31, 31, 31};
  // Query 0 against keys 0..3000 gives the positive positions; queries 0..3000 against key 0 the negative.
  Tensor pos1 = relative_position_buckets(1, 3001, 320, 800), neg1 = relative_position_buckets(3001, 1, 320, 800);
  Tensor pos2 = relative_position_buckets(1, 3001, 32, 64), neg2 = relative_position_buckets(3001, 1, 32, 64);
  for (size_t i = 0; i < rel.size(); ++i) {
    const int64_t r = rel[i];
    const double got1 = r >= 0 ? pos1.at({0, r}) : neg1.at({-r, 0});
    const double got2 = r >= 0 ? pos2.at({0, r}) : neg2.at({-r, 0});
    EXPECT_EQ(got1, want_320_800[i]) << "relative position " << r;
    EXPECT_EQ(got2, want_32_64[i]) << "relative position " << r;
  }
  // Once per offset (the encoder's form): element j is key - query = j - (T - 1).
  const Tensor by_offset = relative_position_buckets_by_offset(3001, 3001, 320, 800);
  ASSERT_EQ(by_offset.shape(), (Shape{6001}));
  for (size_t i = 0; i < rel.size(); ++i)
    EXPECT_EQ(by_offset.at({rel[i] + 3000}), want_320_800[i]) << "relative position " << rel[i];
  // And every row of the [T, S] table is a slice of it, for unequal lengths too.
  const Tensor table = relative_position_buckets(7, 19, 320, 800);
  const Tensor offsets = relative_position_buckets_by_offset(7, 19, 320, 800);
  for (int64_t t = 0; t < 7; ++t)
    for (int64_t s = 0; s < 19; ++s) EXPECT_EQ(table.at({t, s}), offsets.at({s - t + 6})) << t << ", " << s;
}

TEST(BeatsModel, SharedRelativeBiasTableAndNames) {
  auto model = load_beats(kDir + "beats.pt");
  auto t0 = model->encoder->layer(0)->self_attn->relative_attention_bias;
  auto t1 = model->encoder->layer(1)->self_attn->relative_attention_bias;
  EXPECT_EQ(t0.get(), t1.get());
  int listed = 0;
  for (const auto& [name, t] : model->state_dict()) listed += name.find("relative_attention_bias") != std::string::npos;
  EXPECT_EQ(listed, 2);  // under both layers, as torch's state_dict
  int params = 0;
  for (const auto& [name, v] : model->named_parameters()) params += name.find("relative_attention_bias") != std::string::npos;
  EXPECT_EQ(params, 1);
  EXPECT_NO_THROW(model->find("encoder.layers.1.self_attn.relative_attention_bias.weight"));
}

TEST(BeatsModel, DropoutOnlyInTrainingAndCloneIsIndependent) {
  CheckpointData c = read_checkpoint(kDir + "beats.pt");
  c.cfg.dropout = 0.2;
  c.cfg.attention_dropout = 0.2;
  auto model = build_beats(c);
  Tensor wave = load_npy(kDir + "wave.npy").narrow(0, 0, 1);
  ag::NoGradGuard ng;
  Tensor e1 = model->extract_features(wave).x.value(), e2 = model->extract_features(wave).x.value();
  EXPECT_EQ(rel_diff(e1, e2), 0.0);
  model->train();
  Generator gen(7);
  nn::RngScope scope(gen);
  Tensor t1 = model->extract_features(wave).x.value();
  EXPECT_GT(rel_diff(t1, e1), 1e-3);
  model->eval();

  auto copy = nn::clone_as(*model);
  EXPECT_FALSE(copy->is_training());
  EXPECT_EQ(rel_diff(copy->extract_features(wave).x.value(), e1), 0.0);
  EXPECT_EQ(copy->encoder->layer(0)->self_attn->relative_attention_bias.get(),
            copy->encoder->layer(1)->self_attn->relative_attention_bias.get());
  copy->encoder->layer(0)->fc1->find("weight").value().fill_(0.0);
  EXPECT_EQ(rel_diff(model->extract_features(wave).x.value(), e1), 0.0);
  EXPECT_GT(rel_diff(copy->extract_features(wave).x.value(), e1), 1e-3);
}

TEST(BeatsModel, FreshOfficialInitialisationRunsForwardAndBackward) {
  BeatsConfig cfg = read_checkpoint(kDir + "beats.pt").cfg;
  cfg.layer_norm_first = false;
  Generator gen(3);
  BeatsModel model(cfg, &gen);
  // Deep norm: v_proj weights are xavier normal with gain (8 * layers)^(-1/4).
  const double beta = std::pow(8.0 * cfg.encoder_layers, -0.25);
  const double want_std = beta * std::sqrt(2.0 / (2.0 * cfg.encoder_embed_dim));
  Tensor v = model.encoder->layer(0)->self_attn->v_proj->weight.value();
  const double got_std = std::sqrt(var(v).item<double>());
  EXPECT_NEAR(got_std / want_std, 1.0, 0.1);
  EXPECT_EQ(max_all(abs(model.encoder->layer(1)->self_attn->out_proj->bias.value())).item<double>(), 0.0);
  model.train();
  Features f = model.extract_features(load_npy(kDir + "wave.npy"));
  ag::Var loss = ag::mean(ag::pow(f.x, 2.0f));
  loss.backward();
  for (const auto& [name, p] : model.named_parameters())
    EXPECT_TRUE(p.grad().defined()) << name;

  // A pre-LN variant builds and runs too (final layer norm after the blocks).
  cfg.deep_norm = false;
  cfg.layer_norm_first = true;
  cfg.activation_fn = "glu";
  BeatsModel pre(cfg, &gen);
  EXPECT_TRUE(pre.encoder->layer(0)->find("fc1.linear.weight").defined());
  ag::NoGradGuard ng;
  Tensor x = pre.extract_features(load_npy(kDir + "wave.npy").narrow(0, 0, 1)).x.value();
  EXPECT_TRUE(std::isfinite(sum(x).item<double>()));
}

TEST(BeatsModel, TooShortInputIsAClearError) {
  auto model = load_beats(kDir + "beats.pt");
  ag::NoGradGuard ng;
  EXPECT_THROW(model->extract_features(zeros({1, 2000})), Error);  // 11 frames < one 16-frame patch
}

}  // namespace
}  // namespace sonar::beats
