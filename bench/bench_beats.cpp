// Speed and memory of BEATs-base (12 layers, 768 wide, 12 heads, deep norm, gated relative position bias with
// 320 buckets up to 800, conv positional embedding 128 wide in 16 groups, patch embedding 512 wide) on one
// 10 s clip (496 patches): the parts (fbank, patch embedding, one encoder layer, the attention kernel) and the
// wholes (forward with fbank; a full-sequence training step; the masked pre-training step with the 3-block
// label predictor). Each benchmark reports peak_rss_MB, the process's peak resident set size while it ran
// (getrusage after resetting the high-water mark through /proc/self/clear_refs where Linux allows it).
// Run each whole in its own process for an honest peak; see docs/pretraining.md for the exact commands.
// bench/beats_pytorch.py builds the same architecture in PyTorch for a same-run comparison.
// --precision=bf16 runs every matrix product with bfloat16 operands (tensor/precision.h); the train steps then
// convert the weights once per step (TrainStep), the forward once per call (BeatsBackbone::forward_fbank).
// Not a test: it checks nothing beyond "the loss is finite".
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>
#include <fstream>
#include <memory>

#include "autograd/loss.h"
#include "autograd/ops.h"
#include "nn/beats/pretrain.h"
#include "tensor/attention.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/index.h"
#include "tensor/precision.h"
#include "tensor/random.h"

using namespace sonar;
using namespace sonar::beats;

namespace {

constexpr double kClipSeconds = 10.0;
constexpr int64_t kCodes = 1024;

BeatsConfig base_cfg(bool train) {
  BeatsConfig c;
  c.input_patch_size = 16;
  c.embed_dim = 512;
  c.conv_bias = false;
  c.encoder_layers = 12;
  c.encoder_embed_dim = 768;
  c.encoder_ffn_embed_dim = 3072;
  c.encoder_attention_heads = 12;
  c.activation_fn = "gelu";
  c.layer_norm_first = false;
  c.deep_norm = true;
  c.conv_pos = 128;
  c.conv_pos_groups = 16;
  c.relative_position_embedding = true;
  c.num_buckets = 320;
  c.max_distance = 800;
  c.gru_rel_pos = true;
  // Training uses dropout 0.1 (hidden and attention), no layer drop (so every step does the same work).
  c.dropout = train ? 0.1 : 0.0;
  c.attention_dropout = train ? 0.1 : 0.0;
  c.activation_dropout = 0.0;
  c.encoder_layerdrop = 0.0;
  c.dropout_input = 0.0;
  return c;
}

// A 10 s test signal: a rising chirp plus a steady tone.
Tensor test_wave() {
  const int64_t S = static_cast<int64_t>(kClipSeconds * 16000);
  Tensor w = Tensor::empty({1, S});
  float* p = w.data<float>();
  double phase = 0;
  for (int64_t i = 0; i < S; ++i) {
    const double t = i / 16000.0, f = 300 + 1200 * t / kClipSeconds;
    phase += 2 * M_PI * f / 16000.0;
    p[i] = static_cast<float>(0.3 * std::sin(phase) + 0.1 * std::sin(2 * M_PI * 880 * t));
  }
  return w;
}

// Resets the peak-RSS high-water mark (Linux >= 4.0); harmless where unsupported.
void reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (f) f << "5";
}
double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}
void report_rss(benchmark::State& st) { st.counters["peak_rss_MB"] = peak_rss_mb(); }

// A model and a linear label head, for the full-sequence step.
class FullStepModel : public nn::Module {
 public:
  explicit FullStepModel(Generator& gen) : nn::Module("FullStepModel") {
    model = register_module("model", std::make_shared<BeatsModel>(base_cfg(true), &gen));
    head = register_module("head", std::make_shared<nn::Linear>(768, kCodes, true, &gen));
  }
  std::shared_ptr<BeatsModel> model;
  std::shared_ptr<nn::Linear> head;

 protected:
  std::shared_ptr<nn::Module> create_like() const override { SONAR_FAIL("FullStepModel cannot be cloned"); }
};

void BM_Fbank(benchmark::State& st) {
  Tensor w = test_wave();
  reset_peak_rss();
  for (auto _ : st) benchmark::DoNotOptimize(preprocess(w));
  report_rss(st);
}

void BM_PatchEmbedding(benchmark::State& st) {
  Generator gen(1);
  BeatsModel m(base_cfg(false), &gen);
  m.eval();
  Tensor fb = preprocess(test_wave());
  ag::NoGradGuard ng;
  reset_peak_rss();
  for (auto _ : st) benchmark::DoNotOptimize(m.project(m.embed_patches(ag::Var(fb))).value());
  report_rss(st);
}

struct LayerSetup {
  BeatsConfig cfg = base_cfg(false);
  std::shared_ptr<TransformerEncoder> enc;
  Tensor x;
  ag::Var bias;
  LayerSetup() {
    Generator gen(2);
    BeatsModel m(cfg, &gen);
    enc = m.encoder;
    enc->train();  // dropouts are zero in this configuration; train mode records the graph
    x = randn({1, 496, 768}, gen);
    ag::NoGradGuard ng;
    bias = enc->layer(0)->self_attn->compute_bias(496, 496);
  }
};

void BM_EncoderLayerForward(benchmark::State& st) {
  LayerSetup s;
  ag::NoGradGuard ng;
  Bf16WeightCache bf16_weights(parameter_values(*s.enc));  // bf16: weights converted once (no-op in f32)
  reset_peak_rss();
  for (auto _ : st) benchmark::DoNotOptimize(s.enc->layer(0)->forward(ag::Var(s.x), s.bias, Tensor()).value());
  report_rss(st);
}

void BM_EncoderLayerForwardBackward(benchmark::State& st) {
  LayerSetup s;
  Tensor g = ones({1, 496, 768});
  Bf16WeightCache bf16_weights(parameter_values(*s.enc));  // bf16: weights converted once (no-op in f32)
  reset_peak_rss();
  for (auto _ : st) {
    s.enc->zero_grad();
    ag::Var x(s.x, true);
    ag::Var y = s.enc->layer(0)->forward(x, s.bias, Tensor());
    y.backward(g);
    benchmark::DoNotOptimize(x.grad());
  }
  report_rss(st);
}

// BEATs-base attention on a 10 s clip; dropout_p 0.1 is the training configuration (attention dropout).
struct AttentionSetup {
  Tensor q, k, v, bias, gate, gout;
  AttentionParams p;
  // relative_bias: the bias in the kernel's relative form [H, T + S - 1] (what the BEATs encoder passes),
  // else as the full [H, T, S].
  AttentionSetup(float dropout_p, bool relative_bias) {
    Generator gen(3);
    q = randn({1, 496, 768}, gen);
    k = randn({1, 496, 768}, gen);
    v = randn({1, 496, 768}, gen);
    bias = relative_bias ? randn({12, 2 * 496 - 1}, gen) : randn({12, 496, 496}, gen);
    gate = add(rand({1, 12, 496}, gen), 1.0f);
    gout = randn({1, 496, 768}, gen);
    p.num_heads = 12;
    p.scale = 0.125f;
    p.alpha = 32.0f;
    p.dropout_p = dropout_p;
    p.dropout_seed = 11;
  }
};

// Args: dropout in percent; 1 = the forward keeps the probabilities for the backward (as in training);
// 1 = the bias in the relative form [H, 2T - 1] (as the encoder passes it), 0 = [H, T, T].
void BM_AttentionForward(benchmark::State& st) {
  AttentionSetup s(static_cast<float>(st.range(0)) / 100.0f, st.range(2) != 0);
  s.p.keep_probs = st.range(1) != 0;
  reset_peak_rss();
  for (auto _ : st) benchmark::DoNotOptimize(attention_forward(s.q, s.k, s.v, s.bias, s.gate, Tensor(), s.p).out);
  report_rss(st);
}

void BM_AttentionBackward(benchmark::State& st) {
  AttentionSetup s(static_cast<float>(st.range(0)) / 100.0f, st.range(2) != 0);
  AttentionParams pf = s.p;
  pf.keep_probs = st.range(1) != 0;
  AttentionForward f = attention_forward(s.q, s.k, s.v, s.bias, s.gate, Tensor(), pf);
  reset_peak_rss();
  for (auto _ : st)
    benchmark::DoNotOptimize(attention_backward(s.gout, s.q, s.k, s.v, s.bias, s.gate, Tensor(), f, s.p).dq);
  report_rss(st);
}

void BM_FullForward(benchmark::State& st) {
  Generator gen(4);
  BeatsModel m(base_cfg(false), &gen);
  m.eval();
  Tensor w = test_wave();
  ag::NoGradGuard ng;
  benchmark::DoNotOptimize(m.extract_features(w).x.value());  // warm-up (oneDNN primitives, FFT plans)
  reset_peak_rss();
  for (auto _ : st) benchmark::DoNotOptimize(m.extract_features(w).x.value());
  report_rss(st);
}

TrainStepOptions step_options() {
  TrainStepOptions o;
  o.adamw.lr = 1e-4f;
  o.adamw.weight_decay = 0.01f;
  o.max_grad_norm = 1.0f;
  return o;
}

// Every patch encoded; a linear label head over the masked 75%; smoothed cross-entropy; backward; AdamW.
void BM_TrainStepFull(benchmark::State& st) {
  Generator gen(5);
  FullStepModel fm(gen);
  fm.train();
  Tensor w = test_wave();
  Tensor labels = randint(0, kCodes, {1, 496}, gen);
  TrainStep step(fm, step_options());
  Generator mg(6), dg(7);
  nn::RngScope scope(dg);
  auto run = [&] {
    return step.run([&] {
      Tensor fb = preprocess(w);
      ag::Var x = fm.model->forward_fbank(ag::Var(fb), Tensor()).x;  // [1, P, C]
      PatchMasking m = make_patch_masking(1, x.size(1), Tensor(), MaskingOptions{}, mg);
      ag::Var rows = LabelPredictor::masked_rows(x, m);
      Tensor t = index_select(labels.reshape({-1}), 0, m.masked_flat);
      return ag::cross_entropy(fm.head->forward(rows), t, kLabelSmoothing);
    });
  };
  run();  // warm-up: primitives and optimiser state
  reset_peak_rss();
  double loss = 0;
  for (auto _ : st) loss = run().loss;
  st.counters["loss"] = loss;
  report_rss(st);
}

// BEATs pre-training: 75% masked, visible patches encoded, 3-block label predictor, smoothed CE, AdamW.
void BM_TrainStepMasked(benchmark::State& st) {
  Generator gen(8);
  auto model = std::make_shared<BeatsModel>(base_cfg(true), &gen);
  MlpOptions o;
  o.predictor.num_classes = kCodes;
  MaskedLabelPrediction mlp(model, o, &gen);
  mlp.train();
  Tensor w = test_wave();
  Tensor labels = randint(0, kCodes, {1, 496}, gen);
  TrainStep step(mlp, step_options());
  Generator mg(9), dg(10);
  nn::RngScope scope(dg);
  auto run = [&] { return step.run([&] { return mlp.forward(ag::Var(preprocess(w)), Tensor(), labels, mg).loss; }); };
  run();
  reset_peak_rss();
  double loss = 0;
  for (auto _ : st) loss = run().loss;
  st.counters["loss"] = loss;
  report_rss(st);
}

}  // namespace

BENCHMARK(BM_Fbank)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_PatchEmbedding)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_EncoderLayerForward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_EncoderLayerForwardBackward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AttentionForward)->ArgsProduct({{0, 10}, {0, 1}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AttentionBackward)->ArgsProduct({{0, 10}, {0, 1}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_FullForward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TrainStepFull)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TrainStepMasked)->Unit(benchmark::kMillisecond)->UseRealTime();

// --precision=f32|bf16 (ours, taken out before Google Benchmark parses the rest) sets the precision of every
// matrix product (tensor/precision.h); bf16 fails with one line on a CPU without AVX512-BF16.
int main(int argc, char** argv) {
  std::vector<char*> rest;
  Precision precision = Precision::F32;
  try {
    for (int i = 0; i < argc; ++i) {
      const std::string a = argv[i];
      if (a.rfind("--precision=", 0) == 0) {
        precision = parse_precision(a.substr(12));
        continue;
      }
      rest.push_back(argv[i]);
    }
    set_matmul_precision(precision);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_beats: %s\n", e.what());
    return 2;
  }
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  if (benchmark::ReportUnrecognizedArguments(n, rest.data())) return 1;
  benchmark::AddCustomContext("precision", precision_name(precision));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
