// `sonar profile`: a per-part time table of the real BEATs model on synthetic audio, from the scoped timers
// inside the model code (tensor/profile.h): fbank, patch embedding, positional convolution, every block's
// attention (projections, gate, kernel), MLP and norms, the label predictor and loss, backward per part (the
// autograd engine times each node under the part that recorded it) and the optimiser; with the share of the
// step, GFLOP/s of the matrix work and its share of a matrix-product peak that the command measures itself.
// Not a benchmark harness (bench/ has those) and not a model of its own: it runs the library's modules.
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "apps/command.h"
#include "audio/fbank.h"
#include "autograd/loss.h"
#include "autograd/ops.h"
#include "nn/beats/checkpoint.h"
#include "nn/beats/pretrain.h"
#include "sonar/trainer.h"
#include "tensor/creation.h"
#include "tensor/index.h"
#include "tensor/io.h"
#include "tensor/matmul.h"
#include "tensor/precision.h"
#include "tensor/profile.h"
#include "tensor/random.h"

namespace {

using namespace sonar;

const char* kUsage = R"(usage: sonar profile (--preset tiny|small|base | --checkpoint CKPT) [--mode forward|train|pretrain]
                     [--seconds 10] [--batch 1] [--steps 3] [--warmup 2] [--codes 1024] [--precision f32|bf16]
                     [--threads N] [--clock wall|cpu] [--ops] [--json OUT]

Runs the real BEATs model on synthetic audio (a chirp plus a tone per clip) with the scoped timers inside the
model code switched on and prints where the time goes, per part and per phase (forward, backward, optimizer):

  forward   fbank, patch embedding (+ its layer norm), post_extract_proj, the encoder's positional
            convolution and input norm, the relative position bias, and for every block layers.N its
            attention (projections, gate, kernel), mlp (fc1, activation, fc2) and norms; the block's own
            time is its residual sums. train/pretrain add the label head or label predictor and the loss.
  backward  the same parts: each autograd node's backward counts in the part that recorded it.
  optimizer zero_grad, the gradient norm, AdamW (train and pretrain).

Times are self times (a part's children are listed separately), in ms per step, averaged over --steps
steps after --warmup warm-up steps. GFLOP/s counts matrix products, convolutions and the attention kernel's
products; "peak" is the rate of a 512x768x3072 matrix product measured by this command before the run,
in the same precision (the best of 10 bursts). The last lines give the step time measured around the
whole step and how much of it the parts cover; the parts that count FLOPs together (their rate, and the
time they would take at the peak) beside everything else, and what the step would take with those
products at the peak (a floor for this machine unless the rest gets faster); the page faults per measured
step and the process's peak RSS. Page faults are the sign that the heap is still growing: each touches
fresh memory, which costs about 14 us on a virtual machine (see docs/performance.md), so while they number
more than a few hundred per step the figures include that first-touch cost (BEATs-base in train mode:
about 1,200 per step after 2 warm-up steps, none after 7).

  --preset NAME       a fresh model: tiny (2 blocks, 64 wide), small (4 blocks, 256 wide) or base
                      (BEATs base), layer drop off so
                      that every step runs every block
  --checkpoint CKPT   a BEATs checkpoint (official .pt or sonar safetensors) instead
  --mode MODE         forward: features without gradients (eval mode); train: every patch encoded, a
                      linear label head over 75% masked patches, smoothed cross-entropy, backward, AdamW;
                      pretrain: BEATs masked pre-training (visible patches encoded, 3-block label
                      predictor, smoothed cross-entropy, backward, AdamW). Default forward
  --seconds S         clip length (default 10)
  --batch B           clips per step (default 1)
  --steps N           measured steps (default 3)
  --warmup N          unmeasured steps first (default 2, at least 2: oneDNN primitives, FFT plans, optimiser
                      state, and a bf16 product's fixed-shape primitive, built on its second call)
  --codes K           label classes of the train/pretrain heads (default 1024)
  --precision P       f32 (default) or bf16 (matrix products with bfloat16 operands; needs AVX512-BF16)
  --threads N         compute threads (default: OpenMP's)
  --clock C           wall (default) or cpu: the process's CPU time, all threads summed. On a machine
                      shared with other jobs, cpu gives per-core figures that do not count time spent
                      descheduled (run with --threads 1 for per-core rates)
  --ops               split the backward rows by autograd op: each node's backward counts in a child of its
                      part named after the op (encoder/layers.3/mlp/fc1/linear, .../attention/kernel/attention,
                      .../mlp/activation/gelu, encoder/pos_conv/conv1d, ...); the part's own row keeps only
                      the engine's hand-off between nodes. The forward rows do not change
  --json OUT          also write the table as JSON (atomically)
)";

// Synthetic clips: clip b is a chirp from 200 + 50 b Hz rising by 1200 Hz, plus a 880 Hz tone.
Tensor synthetic_wave(int64_t batch, double seconds) {
  const int64_t S = static_cast<int64_t>(seconds * 16000.0);
  Tensor w = Tensor::empty({batch, S});
  float* p = w.data<float>();
  for (int64_t b = 0; b < batch; ++b) {
    double phase = 0;
    for (int64_t i = 0; i < S; ++i) {
      const double t = static_cast<double>(i) / 16000.0, f = 200.0 + 50.0 * b + 1200.0 * t / seconds;
      phase += 2 * M_PI * f / 16000.0;
      p[b * S + i] = static_cast<float>(0.3 * std::sin(phase) + 0.1 * std::sin(2 * M_PI * 880 * t));
    }
  }
  return w;
}

// Time on the profiler's clock (wall or process CPU, --clock).
double seconds_since(double t0) { return profile::now_seconds() - t0; }

// The matrix-product rate of this machine: a 512x768x3072 product (BEATs' fc1 shape) through sonar::linear in
// the current precision, timed in 10 bursts over about `budget` seconds after two warm-up calls; the best
// burst's GFLOP/s (on a shared machine the best burst is the one least disturbed by other work).
double measure_matmul_peak(double budget) {
  constexpr int64_t M = 512, K = 768, N = 3072;
  constexpr int kBursts = 10;
  Generator gen(11);
  Tensor x = randn({M, K}, gen), w = randn({N, K}, gen);
  for (int i = 0; i < 2; ++i) linear(x, w, Tensor());
  double best = 0;
  for (int b = 0; b < kBursts; ++b) {
    int64_t calls = 0;
    const double t0 = profile::now_seconds();
    double elapsed = 0;
    do {
      linear(x, w, Tensor());
      ++calls;
      elapsed = seconds_since(t0);
    } while (elapsed < budget / kBursts);
    best = std::max(best, 2.0 * M * N * K * static_cast<double>(calls) / elapsed * 1e-9);
  }
  return best;
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

// The backbone plus a linear label head: the "train" mode's module (one optimiser over both).
class HeadedModel : public nn::Module {
 public:
  HeadedModel(std::shared_ptr<beats::BeatsModel> m, int64_t codes, Generator& gen) : nn::Module("HeadedModel") {
    model = register_module("model", std::move(m));
    head = register_module("head", std::make_shared<nn::Linear>(model->cfg.encoder_embed_dim, codes, true, &gen));
  }
  std::shared_ptr<beats::BeatsModel> model;
  std::shared_ptr<nn::Linear> head;

 protected:
  std::shared_ptr<nn::Module> create_like() const override { SONAR_FAIL("HeadedModel cannot be cloned"); }
};

beats::TrainStepOptions step_options() {
  beats::TrainStepOptions o;
  o.adamw.lr = 1e-4f;
  o.adamw.weight_decay = 0.01f;
  o.max_grad_norm = 1.0f;
  return o;
}

struct Report {
  std::vector<profile::Row> rows;
  double step_seconds = 0;  // wall time per step, measured around the whole step
  int64_t steps = 0;
  double faults_per_step = 0;  // minor page faults of the process per measured step
};

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// Runs `warmup` unmeasured steps and `steps` measured steps of `step`, reporting only the measured ones.
// At least two warm-ups, because a bf16 product builds its fixed-shape primitive on its second call
// (tensor/matmul.cpp). The timers run in the warm-up too, with their counts thrown away: they allocate a
// little, which changes where the heap puts the large tensors, and switching them on only for the measured
// steps started a new round of heap growth there (BEATs-base train: 15,000-19,000 page faults in each of 3
// measured steps even after 7 or 12 warm-ups, against about 1,000 once the heap had settled).
template <class F>
Report run_steps(int64_t warmup, int64_t steps, F&& step) {
  profile::set_enabled(true);
  for (int64_t i = 0; i < warmup; ++i) step();  // oneDNN primitives, FFT plans, optimiser state, allocator
  profile::reset();
  const long faults0 = minor_faults();
  double total = 0;
  for (int64_t i = 0; i < steps; ++i) {
    const double t0 = profile::now_seconds();
    step();
    total += seconds_since(t0);
  }
  profile::set_enabled(false);
  Report r;
  r.faults_per_step = static_cast<double>(minor_faults() - faults0) / static_cast<double>(steps);
  r.rows = profile::rows();
  r.step_seconds = total / static_cast<double>(steps);
  r.steps = steps;
  return r;
}

// "encoder/layers.11/attention/kernel" -> "encoder/layers.*/attention/kernel".
std::string kind_of(const std::string& path) {
  static const std::regex layer_index(R"(layers\.\d+)");
  return std::regex_replace(path, layer_index, "layers.*");
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

int run_profile(int argc, char** argv) {
  app::Args args(argc, argv,
                 {"preset", "checkpoint", "mode", "seconds", "batch", "steps", "warmup", "codes", "precision", "threads",
                  "clock", "json"},
                 {"ops"});
  if (args.help()) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  SONAR_CHECK(args.positional().empty(), "unexpected argument '", args.positional().front(), "' (see --help)");
  SONAR_CHECK(args.has("preset") != args.has("checkpoint"), "give either --preset or --checkpoint (see --help)");
  const std::string mode = args.get("mode", "forward");
  SONAR_CHECK(mode == "forward" || mode == "train" || mode == "pretrain", "--mode must be forward, train or pretrain, got '",
              mode, "'");
  const double seconds = args.get_double("seconds", 10.0);
  SONAR_CHECK(std::isfinite(seconds) && seconds >= 1.0 && seconds <= 600.0, "--seconds must be in [1, 600], got ",
              seconds);
  const int64_t batch = args.get_int("batch", 1), steps = args.get_int("steps", 3), codes = args.get_int("codes", 1024);
  SONAR_CHECK(batch >= 1 && batch <= 256, "--batch must be in 1..256, got ", batch);
  SONAR_CHECK(steps >= 1 && steps <= 1000, "--steps must be in 1..1000, got ", steps);
  const int64_t warmup = args.get_int("warmup", 2);
  SONAR_CHECK(warmup >= 2 && warmup <= 1000, "--warmup must be in 2..1000, got ", warmup);
  SONAR_CHECK(codes >= 2, "--codes must be >= 2, got ", codes);
  const Precision precision = parse_precision(args.get("precision", "f32"));
  require_precision_supported(precision);
  const long long threads = args.get_int("threads", 0);
  SONAR_CHECK(threads >= 0, "--threads must be >= 0, got ", threads);
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
  const std::string json_out = args.get("json");
  const std::string clock = args.get("clock", "wall");
  SONAR_CHECK(clock == "wall" || clock == "cpu", "--clock must be wall or cpu, got '", clock, "'");
  profile::set_clock(clock == "cpu" ? profile::ClockKind::ProcessCpu : profile::ClockKind::Wall);
  const bool by_op = args.has("ops");
  profile::set_backward_by_op(by_op);

  std::shared_ptr<beats::BeatsModel> model;
  Generator gen(1);
  std::string model_name;
  if (args.has("preset")) {
    model_name = args.get("preset");
    beats::BeatsConfig c = method::preset_config(model_name);
    c.encoder_layerdrop = 0.0;  // every step does the same work (the base preset trains with layer drop 0.05)
    model = std::make_shared<beats::BeatsModel>(c, &gen);
  } else {
    model_name = args.get("checkpoint");
    model = beats::load_beats(model_name);
  }
  const beats::BeatsConfig& cfg = model->cfg;
  PrecisionGuard precision_scope(precision);
  const double peak = measure_matmul_peak(0.3);

  const Tensor wave = synthetic_wave(batch, seconds);
  Report rep;
  if (mode == "forward") {
    model->eval();
    ag::NoGradGuard no_grad;
    rep = run_steps(warmup, steps, [&] { (void)model->extract_features(wave).x; });
  } else if (mode == "train") {
    HeadedModel hm(model, codes, gen);
    hm.train();
    beats::TrainStep step(hm, step_options());
    Generator mask_gen(6), label_gen(12), dropout_gen(7);
    nn::RngScope rng_scope(dropout_gen);
    Tensor labels;
    rep = run_steps(warmup, steps, [&] {
      step.run([&] {
        Tensor fb = beats::preprocess(wave);
        ag::Var x = hm.model->forward_fbank(ag::Var(fb), Tensor()).x;  // [B, P, C]
        if (!labels.defined()) labels = randint(0, codes, {x.size(0), x.size(1)}, label_gen);
        ag::Var logits;
        Tensor targets;
        {
          profile::Scope timed("head");  // masking and the linear label head over the masked patches
          beats::PatchMasking m = beats::make_patch_masking(x.size(0), x.size(1), Tensor(), beats::MaskingOptions{}, mask_gen);
          targets = index_select(labels.reshape({-1}), 0, m.masked_flat);
          logits = hm.head->forward(beats::LabelPredictor::masked_rows(x, m));
        }
        profile::Scope timed("loss");
        return ag::cross_entropy(logits, targets, beats::kLabelSmoothing);
      });
    });
  } else {
    beats::MlpOptions o;
    o.predictor.num_classes = codes;
    beats::MaskedLabelPrediction mlp(model, o, &gen);
    mlp.train();
    beats::TrainStep step(mlp, step_options());
    Generator mask_gen(9), label_gen(12), dropout_gen(10);
    nn::RngScope rng_scope(dropout_gen);
    const int64_t P = (audio::fbank_num_frames(wave.size(1)) / cfg.input_patch_size) * (beats::kMelBins / cfg.input_patch_size);
    const Tensor labels = randint(0, codes, {batch, P}, label_gen);
    rep = run_steps(warmup, steps, [&] {
      step.run([&] { return mlp.forward(ag::Var(beats::preprocess(wave)), Tensor(), labels, mask_gen).loss; });
    });
  }
  const double rss = peak_rss_mb();

  // ---- the report ----
  const double n = static_cast<double>(rep.steps);
  double parts = 0;
  for (const auto& r : rep.rows) parts += r.self_seconds;
  parts /= n;
  const double step_ms = rep.step_seconds * 1e3;
  std::printf("sonar profile: %s (%lld blocks, %lld wide), mode %s, %lld x %.3g s, %s, %d threads, %lld steps, "
              "%s time\n",
              model_name.c_str(), static_cast<long long>(cfg.encoder_layers),
              static_cast<long long>(cfg.encoder_embed_dim), mode.c_str(), static_cast<long long>(batch), seconds,
              precision_name(precision), omp_get_max_threads(), static_cast<long long>(steps),
              clock == "cpu" ? "process CPU" : "wall");
  std::printf("matrix-product peak measured here (512x768x3072, %s): %.1f GFLOP/s\n\n", precision_name(precision), peak);

  auto print_table = [&](const std::vector<profile::Row>& rows, const char* title) {
    std::printf("%-10s %-58s %7s %10s %7s %8s %6s\n", "phase", title, "calls", "ms/step", "share", "GFLOP/s", "peak");
    for (const auto& r : rows) {
      const double ms = r.self_seconds / n * 1e3;
      const double gflops = r.self_seconds > 0 ? r.self_flops / r.self_seconds * 1e-9 : 0.0;
      std::printf("%-10s %-58s %7lld %10.3f %6.1f%% %8s %6s\n", r.phase.c_str(), r.path.c_str(),
                  static_cast<long long>(std::llround(static_cast<double>(r.calls) / n)), ms, 100.0 * ms / step_ms,
                  r.self_flops > 0 ? fmt("%.1f", gflops).c_str() : "-",
                  r.self_flops > 0 ? fmt("%.0f%%", 100.0 * gflops / peak).c_str() : "-");
    }
  };
  print_table(rep.rows, "part (self time)");

  // The same by kind: every block's rows summed (layers.N -> layers.*), largest first.
  std::vector<profile::Row> kinds;
  std::map<std::string, size_t> index;
  for (const auto& r : rep.rows) {
    const std::string key = r.phase + "\t" + kind_of(r.path);
    auto it = index.find(key);
    if (it == index.end()) {
      it = index.emplace(key, kinds.size()).first;
      profile::Row k = r;
      k.path = kind_of(r.path);
      kinds.push_back(k);
      continue;
    }
    profile::Row& k = kinds[it->second];
    k.self_seconds += r.self_seconds;
    k.total_seconds += r.total_seconds;
    k.self_flops += r.self_flops;
    k.calls += r.calls;
  }
  std::stable_sort(kinds.begin(), kinds.end(),
                   [](const profile::Row& a, const profile::Row& b) { return a.self_seconds > b.self_seconds; });
  std::printf("\n");
  print_table(kinds, "part, all blocks together (largest first)");
  std::printf("\nstep: %.3f ms measured around the whole step; the parts add up to %.3f ms (%.1f%%)\n", step_ms,
              parts * 1e3, 100.0 * parts * 1e3 / step_ms);
  // How far the step is from what this machine's product rate allows: the rows that count FLOPs at the
  // measured peak, beside everything else as it ran.
  double product_gflop = 0, product_ms = 0;
  for (const auto& r : rep.rows)
    if (r.self_flops > 0) {
      product_gflop += r.self_flops / n * 1e-9;
      product_ms += r.self_seconds / n * 1e3;
    }
  const double product_ms_at_peak = product_gflop / peak * 1e3, other_ms = parts * 1e3 - product_ms;
  const double floor_ms = step_ms - product_ms + product_ms_at_peak;  // the untimed rest included
  std::printf("products: %.1f GFLOP per step in %.3f ms (%.0f%% of the peak); at the peak they would take %.3f ms\n",
              product_gflop, product_ms, product_ms > 0 ? 100.0 * product_ms_at_peak / product_ms : 0.0,
              product_ms_at_peak);
  std::printf("everything else: %.3f ms (%.1f%% of the step); with the products at the peak the step would take "
              "%.3f ms\n",
              other_ms, 100.0 * other_ms / step_ms, floor_ms);
  std::printf("page faults: %.0f per measured step (%lld warm-up steps; more than a few hundred means the heap was\n"
              "still growing and the times include first touches of memory: raise --warmup)\n",
              rep.faults_per_step, static_cast<long long>(warmup));
  std::printf("peak RSS: %.1f MB\n", rss);

  if (!json_out.empty()) {
    nlohmann::json j;
    j["model"] = model_name;
    j["mode"] = mode;
    j["precision"] = precision_name(precision);
    j["threads"] = omp_get_max_threads();
    j["clock"] = clock;
    j["batch"] = batch;
    j["seconds"] = seconds;
    j["steps"] = steps;
    j["blocks"] = cfg.encoder_layers;
    j["embed_dim"] = cfg.encoder_embed_dim;
    j["ffn_dim"] = cfg.encoder_ffn_embed_dim;
    j["patches"] = (audio::fbank_num_frames(wave.size(1)) / cfg.input_patch_size) * (beats::kMelBins / cfg.input_patch_size);
    j["step_ms"] = step_ms;
    j["parts_ms"] = parts * 1e3;
    j["matmul_peak_gflops"] = peak;
    j["product_gflop_per_step"] = product_gflop;
    j["product_ms"] = product_ms;
    j["product_ms_at_peak"] = product_ms_at_peak;
    j["other_ms"] = other_ms;
    j["step_floor_ms"] = floor_ms;
    j["peak_rss_mb"] = rss;
    j["warmup_steps"] = warmup;
    j["backward_by_op"] = by_op;
    j["page_faults_per_step"] = rep.faults_per_step;
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& r : rep.rows) {
      const double ms = r.self_seconds / n * 1e3;
      const double gflops = r.self_seconds > 0 ? r.self_flops / r.self_seconds * 1e-9 : 0.0;
      rows.push_back({{"phase", r.phase},
                      {"part", r.path},
                      {"calls_per_step", static_cast<double>(r.calls) / n},
                      {"ms", ms},
                      {"total_ms", r.total_seconds / n * 1e3},
                      {"share", ms / step_ms},
                      {"gflop_per_step", r.self_flops / n * 1e-9},
                      {"gflops", gflops},
                      {"peak_share", gflops / peak}});
    }
    j["rows"] = rows;
    write_file_atomic(json_out, j.dump(2) + "\n");
    std::printf("json: %s\n", json_out.c_str());
  }
  return 0;
}

}  // namespace

SONAR_COMMAND("profile", "per-part time table of a BEATs model on synthetic audio (forward, train or pretrain step)",
              kUsage, run_profile);
