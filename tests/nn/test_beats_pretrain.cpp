// Tests of BEATs' pre-training objectives (nn/beats/pretrain*.h, label_predictor.h, estimator.h): masking
// ratio, padding and determinism; the masked-label loss against a hand computation in double; finite-
// difference gradients of the label predictor; a tiny model whose masked-label loss falls and accuracy rises
// on synthetic audio; tokenizer distillation whose loss falls while the EMA codebook moves and tracks usage;
// the growable output layer with its optimiser state. Not tested here: the encoder's parity with the
// official code (test_beats_* of the model files).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <numeric>
#include <set>

#include "audio/synth_corpus.h"
#include "autograd/gradcheck.h"
#include "autograd/loss.h"
#include "autograd/ops.h"
#include "nn/beats/pretrain.h"
#include "tests/nn/beats_test_util.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/index.h"
#include "tensor/reduce.h"
#include "tests/test_util.h"

using namespace sonar;
using namespace sonar::beats;

namespace {

using testutil::max_abs_diff;

constexpr double kLossTol = 2e-5;          // relative: hand-computed (double) vs. fused float32 loss
constexpr double kEncodeTol = 1e-5;        // gather-then-project vs. project-then-gather, absolute
constexpr double kFdAtol = 2e-3;           // finite differences of a float32 loss, absolute part
constexpr double kFdRtol = 3e-2;           // ... relative part
constexpr double kMlpMinRelativeDrop = 0.20;    // masked-label loss: last steps at least 20% below the first
constexpr double kMlpMinAccuracyGain = 0.15;    // masked accuracy: +15 points from the first to the last steps
constexpr double kDistillMinRelativeDrop = 0.40;  // tokenizer distillation loss
constexpr double kUsageTol = 1e-3;               // relative, EMA usage sum vs. its closed form
constexpr double kUnitNormTol = 1e-4;

BeatsConfig tiny_cfg() { return testutil::small_beats_config(0.0); }

// Normalised fbank [B, T, 128] of synthetic clips (tones, chords, chirps, trills), `seconds` long each.
Tensor synth_fbank(int64_t clips, double seconds, uint64_t seed) {
  return testutil::synth_fbank(clips, seconds, seed,
      {{"music", "tone"}, {"birds", "upsweep"}, {"music", "major_chord"}, {"birds", "trill"}, {"birds", "downsweep"},
       {"music", "minor_chord"}, {"birds", "whistle"}, {"music", "drums"}});
}

// Frame mask [B, T]: clip b has real_frames[b] frames.
Tensor frame_mask_from(const std::vector<int64_t>& real_frames, int64_t T) {
  const int64_t B = static_cast<int64_t>(real_frames.size());
  Tensor m = zeros({B, T}, DType::Bool);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = real_frames[b]; t < T; ++t) m.bytes()[b * T + t] = 1;
  return m;
}

double mean_of(const std::vector<double>& v, size_t from, size_t to) {
  return std::accumulate(v.begin() + from, v.begin() + to, 0.0) / static_cast<double>(to - from);
}

}  // namespace

// ---- masking ----

TEST(BeatsPretrainMask, RatioPaddingAndDeterminism) {
  const int64_t B = 3, P = 48;
  Tensor pad = zeros({B, P}, DType::Bool);
  for (int64_t p = 32; p < P; ++p) pad.bytes()[1 * P + p] = 1;  // clip 1 has 32 real patches
  for (int64_t p = 8; p < P; ++p) pad.bytes()[2 * P + p] = 1;   // clip 2 has 8
  MaskingOptions o;
  Generator g1(7), g2(7), g3(8);
  PatchMasking a = make_patch_masking(B, P, pad, o, g1);
  PatchMasking b = make_patch_masking(B, P, pad, o, g2);
  PatchMasking c = make_patch_masking(B, P, pad, o, g3);

  const std::vector<int64_t> real = {48, 32, 8};
  for (int64_t i = 0; i < B; ++i) {
    const int64_t keep = std::llround(real[i] * 0.25);
    EXPECT_EQ(a.num_visible[i], keep) << "clip " << i;
    EXPECT_EQ(a.num_masked[i], real[i] - keep) << "clip " << i;
  }
  EXPECT_EQ(a.visible, 12);
  EXPECT_EQ(a.total_masked(), 36 + 24 + 6);
  // Visible and masked partition each clip's real patches; padding is neither; visible is ascending.
  const uint8_t* mk = a.masked.bytes();
  const int64_t* vi = a.visible_index.data<int64_t>();
  for (int64_t i = 0; i < B; ++i) {
    std::set<int64_t> vis;
    for (int64_t j = 0; j < a.visible; ++j) {
      const bool filler = a.visible_padding.bytes()[i * a.visible + j];
      EXPECT_EQ(filler, j >= a.num_visible[i]);
      if (filler) continue;
      const int64_t p = vi[i * a.visible + j];
      if (j > 0) {
        EXPECT_LT(vi[i * a.visible + j - 1], p);
      }
      EXPECT_FALSE(pad.bytes()[i * P + p]) << "padded patch " << p << " visible in clip " << i;
      vis.insert(p);
      EXPECT_EQ(a.visible_flat.data<int64_t>()[i * a.visible + j], i * P + p);
    }
    for (int64_t p = 0; p < P; ++p) {
      const bool is_pad = pad.bytes()[i * P + p], is_masked = mk[i * P + p], is_vis = vis.count(p) > 0;
      EXPECT_EQ(is_pad + is_masked + is_vis, 1) << "clip " << i << " patch " << p;
    }
  }
  // masked_flat lists the masked patches in row-major order.
  std::vector<int64_t> flat;
  for (int64_t i = 0; i < B * P; ++i)
    if (mk[i]) flat.push_back(i);
  EXPECT_EQ(a.masked_flat.to_vector<int64_t>(), flat);
  // Same generator state, same masking; another seed, another masking.
  EXPECT_EQ(a.masked.to_vector<int64_t>(), b.masked.to_vector<int64_t>());
  EXPECT_EQ(a.visible_index.to_vector<int64_t>(), b.visible_index.to_vector<int64_t>());
  EXPECT_NE(a.masked.to_vector<int64_t>(), c.masked.to_vector<int64_t>());
  // The generator advanced: a second draw differs.
  PatchMasking d = make_patch_masking(B, P, pad, o, g1);
  EXPECT_NE(a.masked.to_vector<int64_t>(), d.masked.to_vector<int64_t>());
}

TEST(BeatsPretrainMask, MaskedShareIsUniformOverPatches) {
  // Over many draws every patch is masked about 75% of the time (no positional bias).
  const int64_t P = 40, draws = 400;
  Generator g(3);
  std::vector<int64_t> count(P, 0);
  for (int64_t d = 0; d < draws; ++d) {
    PatchMasking m = make_patch_masking(1, P, Tensor(), MaskingOptions{}, g);
    for (int64_t p = 0; p < P; ++p) count[p] += m.masked.bytes()[p];
  }
  constexpr double kShareTol = 0.1;  // 400 Bernoulli(0.75) draws: sd 0.022, so 4.5 sd
  for (int64_t p = 0; p < P; ++p) EXPECT_NEAR(static_cast<double>(count[p]) / draws, 0.75, kShareTol) << "patch " << p;
}

TEST(BeatsPretrainMask, Errors) {
  Generator g(0);
  MaskingOptions bad;
  bad.mask_ratio = 1.0;
  EXPECT_THROW(make_patch_masking(2, 8, Tensor(), bad, g), Error);
  EXPECT_THROW(make_patch_masking(2, 8, zeros({2, 7}, DType::Bool), MaskingOptions{}, g), Error);
  // A fully padded clip has nothing visible or masked; the batch is still valid.
  Tensor pad = zeros({2, 8}, DType::Bool);
  for (int64_t p = 0; p < 8; ++p) pad.bytes()[8 + p] = 1;
  PatchMasking m = make_patch_masking(2, 8, pad, MaskingOptions{}, g);
  EXPECT_EQ(m.num_visible[1], 0);
  EXPECT_EQ(m.num_masked[1], 0);
  EXPECT_EQ(m.total_masked(), 6);
}

// ---- the masked-label loss ----

TEST(BeatsPretrain, LossMatchesHandComputation) {
  BeatsConfig cfg = tiny_cfg();
  Generator init(11);
  auto model = std::make_shared<BeatsModel>(cfg, &init);
  MlpOptions o;
  o.predictor.layers = 2;
  o.predictor.num_classes = 10;
  MaskedLabelPrediction mlp(model, o, &init);
  mlp.eval();

  Tensor fb = synth_fbank(2, 0.6, 5);  // 58 frames: 3 time patches x 8 = 24 patches
  const int64_t B = 2, T = fb.size(1), P = 24;
  Tensor fmask = frame_mask_from({T, 33}, T);  // clip 1: 2 real time patches (16 patches)
  Generator lg(4);
  Tensor labels = randint(0, 10, {B, P}, lg);
  Generator mg(9);
  MlpOutput out = mlp.forward(ag::Var(fb), fmask, labels, mg);
  const PatchMasking& m = out.visible.masking;
  ASSERT_EQ(m.num_masked[0], 18);
  ASSERT_EQ(m.num_masked[1], 12);
  ASSERT_EQ(out.num_masked, 30);

  ag::NoGradGuard ng;
  // Encoder side: project every patch, gather the visible ones by hand, encode.
  Tensor x = model->project(model->embed_patches(ag::Var(fb))).value();  // [B, P, C]
  const int64_t C = cfg.encoder_embed_dim, V = m.visible;
  Tensor vis = zeros({B, V, C});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < m.num_visible[b]; ++j)
      vis.select(0, b).select(0, j).copy_(x.select(0, b).select(0, m.visible_index.data<int64_t>()[b * V + j]));
  Tensor enc = model->encoder->forward(ag::Var(vis), m.visible_padding).x.value();
  for (int64_t b = 0; b < B; ++b)  // filler slots are not compared
    EXPECT_LT(max_abs_diff(enc.select(0, b).narrow(0, 0, m.num_visible[b]),
                           out.visible.encoded.value().select(0, b).narrow(0, 0, m.num_visible[b])),
              kEncodeTol);

  // Predictor side: visible rows back in place, the mask token elsewhere.
  Tensor seq = zeros({B, P, C});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p) seq.select(0, b).select(0, p).copy_(mlp.predictor->mask_emb.value());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < m.num_visible[b]; ++j)
      seq.select(0, b).select(0, m.visible_index.data<int64_t>()[b * V + j]).copy_(out.visible.encoded.value().select(0, b).select(0, j));
  EXPECT_EQ(max_abs_diff(mlp.predictor->assemble(out.visible.encoded, m).value(), seq), 0.0);
  Tensor h = mlp.predictor->encoder->forward(ag::Var(seq), m.padding).x.value();

  // Smoothed cross-entropy in double over the masked patches, in row-major order.
  const Tensor W = mlp.predictor->head->weight.value(), bias = mlp.predictor->head->bias.value();
  const int64_t K = 10;
  const double s = 0.1;
  double total = 0;
  int64_t n = 0, hits = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p) {
      if (!m.masked.bytes()[b * P + p]) continue;
      EXPECT_FALSE(m.padding.bytes()[b * P + p]);
      std::vector<double> z(K);
      for (int64_t k = 0; k < K; ++k) {
        double acc = bias.data<float>()[k];
        for (int64_t c = 0; c < C; ++c) acc += double(W.data<float>()[k * C + c]) * h.data<float>()[(b * P + p) * C + c];
        z[k] = acc;
      }
      const double zmax = *std::max_element(z.begin(), z.end());
      double lse = 0;
      for (double v : z) lse += std::exp(v - zmax);
      lse = zmax + std::log(lse);
      const int64_t t = labels.data<int64_t>()[b * P + p];
      double smooth = 0;
      for (double v : z) smooth += (lse - v) / K;
      total += (1 - s) * (lse - z[t]) + s * smooth;
      hits += std::max_element(z.begin(), z.end()) - z.begin() == t;
      ++n;
    }
  ASSERT_EQ(n, out.num_masked);
  const double expect = total / n;
  EXPECT_NEAR(out.loss.item(), expect, kLossTol * std::abs(expect));
  EXPECT_DOUBLE_EQ(out.masked_accuracy, static_cast<double>(hits) / n);
  EXPECT_EQ(out.logits.shape(), (Shape{30, K}));
  EXPECT_EQ(out.predicted.shape(), (Shape{30, C}));
}

TEST(BeatsPretrain, BadLabelsThrow) {
  BeatsConfig cfg = tiny_cfg();
  Generator init(1);
  MlpOptions o;
  o.predictor.num_classes = 10;
  MaskedLabelPrediction mlp(std::make_shared<BeatsModel>(cfg, &init), o, &init);
  Tensor fb = synth_fbank(1, 0.6, 2);
  Generator g(0);
  EXPECT_THROW(mlp.forward(ag::Var(fb), Tensor(), full({1, 24}, 10, DType::Int64), g), Error);  // label = K
  EXPECT_THROW(mlp.forward(ag::Var(fb), Tensor(), zeros({1, 23}, DType::Int64), g), Error);     // shape
  EXPECT_THROW(mlp.forward(ag::Var(fb), Tensor(), zeros({1, 24}), g), Error);                   // dtype
}

// ---- gradients ----

TEST(BeatsPretrain, PredictorGradientsMatchFiniteDifferences) {
  BeatsConfig cfg = tiny_cfg();
  cfg.encoder_embed_dim = 16;
  cfg.encoder_ffn_embed_dim = 32;
  cfg.encoder_attention_heads = 2;
  cfg.conv_pos_groups = 2;
  Generator init(21);
  LabelPredictorOptions po;
  po.layers = 1;
  po.num_classes = 6;
  LabelPredictor pred(cfg, po, &init);
  pred.eval();
  const int64_t B = 2, P = 16, C = 16;
  Tensor pad = zeros({B, P}, DType::Bool);
  for (int64_t p = 12; p < P; ++p) pad.bytes()[P + p] = 1;
  Generator mg(5);
  PatchMasking m = make_patch_masking(B, P, pad, MaskingOptions{}, mg);
  Generator dg(6);
  Tensor visible = randn({B, m.visible, C}, dg);
  Tensor targets = randint(0, 6, {m.total_masked()}, dg);
  auto loss_of = [&](const ag::Var& v) {
    return ag::cross_entropy(pred.logits(LabelPredictor::masked_rows(pred.hidden(v, m), m)), targets, kLabelSmoothing);
  };

  // Input gradient (the encoder outputs), by the project's gradcheck.
  ag::GradcheckOptions go;
  go.eps = 1e-2;
  go.atol = kFdAtol;
  go.rtol = kFdRtol;
  ag::GradcheckResult r = ag::gradcheck([&](const std::vector<ag::Var>& in) { return loss_of(in[0]); }, {visible}, go);
  EXPECT_TRUE(r.ok) << r.report;

  // Parameter gradients: central differences on a sample of elements of every parameter.
  pred.zero_grad();
  loss_of(ag::Var(visible)).backward();
  constexpr double kStep = 1e-2;
  int64_t checked = 0;
  for (auto& [name, p] : pred.named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name << " got no gradient";
    const Tensor g = p.grad().contiguous();
    const int64_t n = p.numel();
    for (int64_t e : {int64_t{0}, n / 3, n - 1}) {
      float* v = p.value().data<float>() + e;
      const float keep = *v;
      double lp, lm;
      {
        ag::NoGradGuard ng;
        *v = keep + static_cast<float>(kStep);
        lp = loss_of(ag::Var(visible)).item();
        *v = keep - static_cast<float>(kStep);
        lm = loss_of(ag::Var(visible)).item();
        *v = keep;
      }
      const double numeric = (lp - lm) / (2 * kStep), analytic = g.data<float>()[e];
      EXPECT_NEAR(analytic, numeric, kFdAtol + kFdRtol * std::abs(numeric)) << name << "[" << e << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 40);
}

// ---- training ----

// Without an after_backward, TrainStep takes each gradient's sum of squares during the backward; the norm,
// the clipping and so the whole update must be the same bits as measuring after it. With an after_backward
// the gradients may change there, and the norm must be the changed gradients' (checked by doubling them:
// the norm then doubles exactly).
TEST(BeatsPretrain, TrainStepGradientNormDuringBackwardIsTheSameBits) {
  struct Run {
    std::shared_ptr<MaskedLabelPrediction> mlp;
    std::unique_ptr<TrainStep> step;
    Generator mg{10}, dg{11};
  };
  Tensor fb = synth_fbank(4, 1.0, 3);
  Generator tg(2);
  RandomProjectionTokenizer tok(16, 32, 16, &tg);
  Tensor labels = tok.labels(fb);
  auto make = [&] {
    auto r = std::make_unique<Run>();
    BeatsConfig cfg = tiny_cfg();
    cfg.dropout = 0.05;
    Generator init(1);
    auto model = std::make_shared<BeatsModel>(cfg, &init);
    MlpOptions o;
    o.predictor.layers = 1;
    o.predictor.num_classes = 32;
    r->mlp = std::make_shared<MaskedLabelPrediction>(model, o, &init);
    r->mlp->train();
    TrainStepOptions so;
    so.adamw.lr = 4e-3f;
    so.max_grad_norm = 0.05f;  // small enough that every step clips: the norm reaches the update
    r->step = std::make_unique<TrainStep>(*r->mlp, so);
    return r;
  };
  auto loss_of = [&](Run& r) {
    return [&] {
      nn::RngScope scope(r.dg);
      return r.mlp->forward(ag::Var(fb), Tensor(), labels, r.mg).loss;
    };
  };
  auto during = make(), after = make(), doubled = make();
  for (int i = 0; i < 3; ++i) {
    const StepStats a = during->step->run(loss_of(*during));
    const StepStats b = after->step->run(loss_of(*after), [] {});
    const StepStats c = doubled->step->run(loss_of(*doubled), [&] {
      for (const ag::Var& p : doubled->step->optimizer().params())
        if (p.grad().defined()) {
          Tensor g = p.grad();  // a handle on the gradient's storage: doubled in place
          mul_(g, 2.0f);
        }
    });
    EXPECT_GT(a.grad_norm, 0.05) << "step " << i;
    EXPECT_EQ(a.grad_norm, b.grad_norm) << "step " << i;
    if (i == 0) {
      EXPECT_EQ(c.grad_norm, 2.0 * a.grad_norm);  // same parameters, gradients doubled
    }
  }
  const std::vector<ag::Var> pa = during->step->optimizer().params(), pb = after->step->optimizer().params();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_EQ(pa[i].value().to_vector<float>(), pb[i].value().to_vector<float>()) << "parameter " << i;
}

TEST(BeatsPretrain, MaskedLabelPredictionLossFallsOnSynthAudio) {
  BeatsConfig cfg = tiny_cfg();
  cfg.dropout = 0.05;  // train mode with dropout, as pre-training runs
  Generator init(1);
  auto model = std::make_shared<BeatsModel>(cfg, &init);
  MlpOptions o;
  o.predictor.layers = 2;
  o.predictor.num_classes = 32;
  auto mlp = std::make_shared<MaskedLabelPrediction>(model, o, &init);
  mlp->train();
  // Iteration 0: labels from a frozen random-projection tokenizer.
  Generator tg(2);
  RandomProjectionTokenizer tok(16, 32, 16, &tg);
  Tensor fb = synth_fbank(6, 1.0, 3);  // 98 frames: 6 x 8 = 48 patches per clip
  Tensor labels = tok.labels(fb);

  TrainStepOptions so;
  so.adamw.lr = 4e-3f;
  so.adamw.weight_decay = 0.01f;
  so.max_grad_norm = 1.0f;
  ag::LrScheduleOptions sch;
  const int steps = 30;
  sch.peak_lr = 4e-3;
  sch.warmup_steps = 3;
  sch.total_steps = steps;
  sch.final_lr = 4e-4;
  so.schedule = sch;
  TrainStep step(*mlp, so);
  Generator mg(10), dg(11);
  nn::RngScope scope(dg);
  std::vector<double> loss, acc;
  for (int i = 0; i < steps; ++i) {
    double a = 0;
    StepStats s = step.run([&] {
      MlpOutput out = mlp->forward(ag::Var(fb), Tensor(), labels, mg);
      a = out.masked_accuracy;
      return out.loss;
    });
    loss.push_back(s.loss);
    acc.push_back(a);
    if (std::getenv("SONAR_TEST_VERBOSE")) std::printf("step %d loss %.4f acc %.3f lr %.5f gn %.3f\n", i, s.loss, a, s.lr, s.grad_norm);
  }
  const double first = mean_of(loss, 0, 3), last = mean_of(loss, steps - 5, steps);
  EXPECT_LT(last, (1.0 - kMlpMinRelativeDrop) * first) << "loss " << first << " -> " << last;
  EXPECT_GT(mean_of(acc, steps - 5, steps), mean_of(acc, 0, 3) + kMlpMinAccuracyGain);
  EXPECT_EQ(step.steps_done(), steps);
}

TEST(BeatsPretrain, TokenizerDistillationLossFallsAndCodebookFollowsEma) {
  BeatsConfig cfg = tiny_cfg();
  Generator init(31);
  auto teacher = std::make_shared<BeatsModel>(cfg, &init);
  auto tokenizer = std::make_shared<BeatsTokenizer>(cfg, &init);
  DistillOptions o;
  o.estimator.layers = 2;
  auto distill = std::make_shared<TokenizerDistillation>(tokenizer, o, &init);
  distill->train();
  Tensor fb = synth_fbank(6, 1.0, 8);
  const int64_t T = fb.size(1);
  Tensor fmask = frame_mask_from({T, T, T, T, T, 70}, T);  // clip 5: 4 real time patches
  Tensor teacher_x = TokenizerDistillation::teacher_features(*teacher, fb, fmask, o.padding);
  EXPECT_TRUE(teacher->is_training());  // restored
  ASSERT_EQ(teacher_x.shape(), (Shape{6, 48, 32}));

  TrainStepOptions so;
  so.adamw.lr = 3e-3f;
  TrainStep step(*distill, so);
  // The codebook is state, not a trainable parameter.
  for (const ag::Var& p : step.optimizer().params())
    EXPECT_FALSE(p.same(tokenizer->quantize->embedding->weight));

  Generator rg(12);
  nn::RngScope scope(rg);
  EXPECT_FALSE(tokenizer->quantize->initialised());
  std::vector<double> loss;
  Tensor code_before;
  const int steps = 30;
  int64_t real = 0;
  for (int i = 0; i < steps; ++i) {
    StepStats s = step.run([&] {
      DistillOutput out = distill->forward(ag::Var(fb), fmask, teacher_x);
      real = out.real_patches;
      EXPECT_GT(out.codes_used, 1);
      // Labels at real patches, -1 at padded ones.
      const auto lab = out.labels.to_vector<int64_t>();
      const auto pad = out.patch_padding.to(DType::Int64).to_vector<int64_t>();
      for (size_t j = 0; j < lab.size(); ++j) {
        if (pad[j]) EXPECT_EQ(lab[j], -1);
        else EXPECT_TRUE(lab[j] >= 0 && lab[j] < cfg.quant_n);
      }
      return out.loss;
    });
    if (i == 0) {
      EXPECT_TRUE(tokenizer->quantize->initialised());  // k-means on the first batch
      code_before = tokenizer->quantize->codebook().clone();
    }
    loss.push_back(s.loss);
  }
  EXPECT_EQ(real, 5 * 48 + 4 * 8);
  const double first = mean_of(loss, 0, 3), last = mean_of(loss, steps - 5, steps);
  EXPECT_LT(last, (1.0 - kDistillMinRelativeDrop) * first) << "loss " << first << " -> " << last;

  // The codebook moved by EMA and stays on the unit sphere.
  const Tensor code = tokenizer->quantize->codebook();
  EXPECT_GT(max_abs_diff(code, code_before), 1e-4);
  Tensor norms = norm(code, 2.0, {1});
  for (float v : norms.to_vector<float>()) EXPECT_NEAR(v, 1.0, kUnitNormTol);
  // Usage is an EMA of per-batch counts from zero: its sum is N (1 - decay^steps), N = the real patches of
  // a batch (padded patches are never quantised).
  const double N = static_cast<double>(real), decay = tokenizer->quantize->decay;
  const double usage = sum(tokenizer->quantize->usage()).item_double();
  EXPECT_NEAR(usage, N * (1 - std::pow(decay, steps)), kUsageTol * N);
}

// ---- the growable output layer ----

TEST(BeatsPretrain, GrowingTheHeadKeepsRowsAndOptimizerState) {
  BeatsConfig cfg = tiny_cfg();
  Generator init(41);
  LabelPredictorOptions po;
  po.layers = 1;
  po.num_classes = 8;
  auto pred = std::make_shared<LabelPredictor>(cfg, po, &init);
  Tensor w_before = pred->head->weight.value().clone();
  ag::AdamW opt(pred->trainable_parameters(), ag::AdamWOptions{});
  // One step so that the optimiser has moments for the head.
  Generator dg(1);
  Tensor x = randn({5, 32}, dg);
  ag::cross_entropy(pred->logits(ag::Var(x)), randint(0, 8, {5}, dg)).backward();
  opt.step();
  Tensor w_stepped = pred->head->weight.value().clone();

  pred->add_classes(4, Tensor(), &init);
  EXPECT_EQ(pred->num_classes(), 12);
  EXPECT_EQ(max_abs_diff(pred->head->weight.value().narrow(0, 0, 8), w_stepped), 0.0);
  grow_optimizer_state(opt);
  opt.zero_grad();
  ag::cross_entropy(pred->logits(ag::Var(x)), full({5}, 11, DType::Int64)).backward();
  opt.step();
  ag::OptimizerState st = opt.save_state();
  bool found = false;
  for (const auto& [k, t] : st.tensors)
    if (t.shape() == (Shape{12, 32})) found = true;
  EXPECT_TRUE(found);

  // Copies and loads follow the grown size.
  auto copy = clone_as(*pred);
  EXPECT_EQ(copy->num_classes(), 12);
  LabelPredictor fresh(cfg, po);
  std::map<std::string, Tensor> sd;
  for (auto& [k, t] : pred->state_dict()) sd[k] = t;
  fresh.load_state_dict(sd);
  EXPECT_EQ(fresh.num_classes(), 12);
  EXPECT_EQ(max_abs_diff(fresh.head->weight.value(), pred->head->weight.value()), 0.0);
  EXPECT_THROW(pred->add_classes(2, zeros({2, 31})), Error);
  (void)w_before;
}

// ---- the optimiser step ----

TEST(BeatsPretrain, ClippedAdamWMatchesClipThenAdamW) {
  constexpr double kOptimTol = 1e-6;  // absolute, on parameters of magnitude ~0.1 after three steps
  constexpr float kMaxNorm = 0.5f;    // below the random gradients' norm, so clipping is active
  BeatsConfig cfg = tiny_cfg();
  Generator init(51);
  LabelPredictorOptions po;
  po.layers = 1;
  po.num_classes = 8;
  auto a = std::make_shared<LabelPredictor>(cfg, po, &init);
  auto b = clone_as(*a);
  ag::AdamWOptions o;
  o.lr = 1e-2f;
  o.weight_decay = 0.05f;
  ClippedAdamW fused(decay_param_groups(*a), o);
  ag::AdamW plain(decay_param_groups(*b), o);
  std::vector<ag::Var> pa = fused.params(), pb = plain.params();
  ASSERT_EQ(pa.size(), pb.size());
  Generator dg(3);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < pa.size(); ++i) {
      Tensor g = randn(pa[i].shape(), dg);
      pa[i].set_grad(g.clone());
      pb[i].set_grad(g.clone());
    }
    const double na = fused.grad_norm();
    const double nb = ag::clip_grad_norm(pb, kMaxNorm);
    EXPECT_NEAR(na, nb, 1e-5 * nb);
    ASSERT_GT(na, kMaxNorm);
    fused.step_scaled(static_cast<float>(std::min(1.0, kMaxNorm / (na + 1e-6))));
    plain.step();
  }
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_LT(max_abs_diff(pa[i].value(), pb[i].value()), kOptimTol) << i;
  // Gradients are left as they were (not scaled).
  EXPECT_GT(sum(sonar::mul(pa[0].grad(), pa[0].grad())).item_double(), 0.0);

  // A grown head whose moments were not grown: the step throws and changes nothing.
  a->add_classes(2, Tensor(), &init);
  for (ag::Var& p : pa) p.set_grad(zeros(p.shape()));
  const Tensor before = pa[0].value().clone();
  EXPECT_THROW(fused.step_scaled(1.0f), Error);
  EXPECT_EQ(max_abs_diff(pa[0].value(), before), 0.0);
  grow_optimizer_state(fused);
  EXPECT_NO_THROW(fused.step_scaled(1.0f));
}
