// The continual pre-training loop (DCPT), its data stream, checkpoints and resume (see sonar/trainer.h).
#include "sonar/trainer.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "audio/fbank_cache.h"
#include "autograd/ops.h"
#include "autograd/schedule.h"
#include "nn/beats/checkpoint.h"
#include "sonar/batch_stream.h"
#include "sonar/distributed.h"
#include "sonar/run_folder.h"
#include "tensor/creation.h"
#include "tensor/index.h"
#include "tensor/io.h"
#include "tensor/random.h"

namespace sonar::method {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Stream identifiers: each use of the run seed draws from its own sequence.
constexpr uint64_t kInitStream = 0x494e4954ULL;       // "INIT": fresh model weights
constexpr uint64_t kPredictorStream = 0x50524544ULL;  // "PRED": label predictor weights
constexpr uint64_t kTokenizerStream = 0x544f4b4eULL;  // "TOKN": random-projection tokenizer
constexpr uint64_t kMaskStream = 0x4d41534bULL;       // "MASK": patch masking
constexpr uint64_t kDropoutStream = 0x44524f50ULL;    // "DROP": dropout and layer drop

constexpr const char* kPredictorPrefix = "predictor.";
constexpr const char* kOptimizerPrefix = "optimizer.";
constexpr const char* kExtensionPrefix = "ext.";

}  // namespace

// ---- presets ----

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names = {"tiny", "small", "base"};
  return names;
}

beats::BeatsConfig preset_config(const std::string& name) {
  beats::BeatsConfig c;
  c.input_patch_size = 16;
  c.conv_bias = false;
  c.activation_fn = "gelu";
  c.layer_norm_first = false;
  c.deep_norm = true;
  c.relative_position_embedding = true;
  c.gru_rel_pos = true;
  c.dropout = 0.1;
  c.attention_dropout = 0.1;
  c.activation_dropout = 0.0;
  c.encoder_layerdrop = 0.0;
  c.dropout_input = 0.0;
  c.finetuned_model = false;
  if (name == "tiny") {
    c.embed_dim = 32;
    c.encoder_layers = 2;
    c.encoder_embed_dim = 64;
    c.encoder_ffn_embed_dim = 128;
    c.encoder_attention_heads = 4;
    c.conv_pos = 16;
    c.conv_pos_groups = 4;
    c.num_buckets = 32;
    c.max_distance = 64;
    c.quant_n = 256;
    c.quant_dim = 32;
  } else if (name == "small") {
    // Between the two: 4 blocks of 256 (head width 64, as base), about 3.5 M parameters. Big enough to learn a
    // real prior pool (docs/results.md: the benchmark's start model), small enough to pre-train on 2 cores.
    c.embed_dim = 128;
    c.encoder_layers = 4;
    c.encoder_embed_dim = 256;
    c.encoder_ffn_embed_dim = 1024;
    c.encoder_attention_heads = 4;
    c.conv_pos = 64;
    c.conv_pos_groups = 16;
    c.num_buckets = 320;
    c.max_distance = 800;
    c.quant_n = 512;
    c.quant_dim = 64;
  } else if (name == "base") {
    c.embed_dim = 512;
    c.encoder_layers = 12;
    c.encoder_embed_dim = 768;
    c.encoder_ffn_embed_dim = 3072;
    c.encoder_attention_heads = 12;
    c.conv_pos = 128;
    c.conv_pos_groups = 16;
    c.num_buckets = 320;
    c.max_distance = 800;
    c.encoder_layerdrop = 0.05;
    c.quant_n = 1024;
    c.quant_dim = 256;
  } else {
    std::string known;
    for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
    SONAR_FAIL("unknown model preset '", name, "' (known: ", known, ")");
  }
  c.validate();
  return c;
}

// ---- tokenizer ----

LabelTokenizer LabelTokenizer::load(const std::string& path) {
  beats::CheckpointData c = beats::read_checkpoint(path);
  LabelTokenizer t;
  if (c.kind == beats::ModelKind::Tokenizer) {
    t.beats = beats::build_tokenizer(c);
    t.beats->eval();
    t.beats->quantize->update = false;
    t.beats->quantize->track_usage_in_eval = false;
  } else if (c.kind == beats::ModelKind::RandomProjectionTokenizer) {
    t.random = beats::build_random_projection(c);
    t.random->eval();
  } else {
    SONAR_FAIL(path, ": this is a ", beats::kind_name(c.kind), " checkpoint, not a tokenizer");
  }
  return t;
}

LabelTokenizer LabelTokenizer::random_projection(int64_t patch_size, int64_t num_codes, int64_t dim, uint64_t seed) {
  SONAR_CHECK(patch_size > 0 && num_codes > 1 && dim > 0, "random-projection tokenizer: patch size ", patch_size,
              ", codes ", num_codes, " and width ", dim, " must be positive (at least 2 codes)");
  Generator gen(seed);
  LabelTokenizer t;
  t.random = std::make_shared<beats::RandomProjectionTokenizer>(patch_size, num_codes, dim, &gen);
  t.random->eval();
  return t;
}

Tensor LabelTokenizer::labels(const Tensor& fbank, const Tensor& frame_mask) const {
  ag::NoGradGuard no_grad;
  if (random) return random->labels(fbank);
  SONAR_CHECK(beats != nullptr, "LabelTokenizer: empty");
  beats::FeatureOptions fo;
  fo.padding = beats::PaddingMode::Exact;
  return beats->tokenize_fbank(ag::Var(fbank), frame_mask, fo).labels;
}

Tensor LabelTokenizer::features(const Tensor& fbank, const Tensor& frame_mask) const {
  ag::NoGradGuard no_grad;
  if (random) return random->project(fbank);
  SONAR_CHECK(beats != nullptr, "LabelTokenizer: empty");
  beats::FeatureOptions fo;
  fo.padding = beats::PaddingMode::Exact;
  beats::Features f = beats->forward_fbank(ag::Var(fbank), frame_mask, fo);
  return l2_normalize(beats->quantize_layer->forward(f.x).value(), -1);
}

Tensor LabelTokenizer::labels_of(const Tensor& feats) const {
  SONAR_CHECK(feats.dim() == 3, "LabelTokenizer: features must be [B, P, D], got ", shape_str(feats.shape()));
  const int64_t B = feats.size(0), P = feats.size(1), D = feats.size(2);
  return beats::nearest_codes(feats.contiguous().reshape({B * P, D}), codebook()).reshape({B, P});
}

const Tensor& LabelTokenizer::codebook() const {
  if (random) return random->codebook.value();
  SONAR_CHECK(beats != nullptr, "LabelTokenizer: empty");
  return beats->quantize->codebook();
}

int64_t LabelTokenizer::num_codes() const {
  if (random) return random->num_codes;
  SONAR_CHECK(beats != nullptr, "LabelTokenizer: empty");
  return beats->quantize->num_codes();
}

int64_t LabelTokenizer::patch_size() const {
  if (random) return random->patch_size;
  SONAR_CHECK(beats != nullptr, "LabelTokenizer: empty");
  return beats->cfg.input_patch_size;
}

std::string LabelTokenizer::kind() const {
  return beats::kind_name(random ? beats::ModelKind::RandomProjectionTokenizer : beats::ModelKind::Tokenizer);
}

void LabelTokenizer::save(const std::string& path) const {
  if (random) {
    beats::save_random_projection(path, *random);
  } else {
    SONAR_CHECK(beats != nullptr, "LabelTokenizer: empty");
    beats::save_tokenizer(path, *beats);
  }
}

std::string LabelTokenizer::fingerprint() const {
  HashChain hc;
  hc.add(kind());
  const nn::Module& m = random ? static_cast<const nn::Module&>(*random) : static_cast<const nn::Module&>(*beats);
  add_module_state(hc, m);
  return hex_of(hc.h);
}

// ---- progress ----

std::string format_threads(int threads) {
  return std::to_string(threads) + (threads == 1 ? " thread" : " threads");
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long long t = static_cast<long long>(std::llround(s));
  char buf[48];
  std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", t / 3600, (t / 60) % 60, t % 60);
  return buf;
}

std::string format_progress(const Progress& p) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "step %lld/%lld | loss %.4f | acc %.3f | lr %.2e | %.1f clips/s | elapsed %s | left %s | wait %.0f%%",
                static_cast<long long>(p.step), static_cast<long long>(p.total), p.loss, p.accuracy, p.lr,
                p.clips_per_second, format_duration(p.elapsed_seconds).c_str(), format_duration(p.eta_seconds).c_str(),
                100.0 * std::clamp(p.data_wait, 0.0, 1.0));
  std::string s = buf;
  for (const auto& [name, v] : p.extra) {
    // Counts (codebook size, re-initialised codes) read better without decimals.
    if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e12)
      std::snprintf(buf, sizeof buf, " | %s %lld", name.c_str(), static_cast<long long>(v));
    else
      std::snprintf(buf, sizeof buf, " | %s %.4f", name.c_str(), v);
    s += buf;
  }
  return s;
}

// ---- the data stream ----

CropBatch crop_windows(const audio::Batch& b, double crop_seconds, const std::vector<uint64_t>& seeds) {
  const int64_t m = b.size(), F = b.fbank.size(2), Tfull = b.fbank.size(1);
  SONAR_CHECK(static_cast<int64_t>(seeds.size()) == m, "crop_windows: ", seeds.size(), " seeds for ", m, " clips");
  audio::FbankOptions fo;
  const int64_t shift = fo.window_shift();
  const int64_t want = static_cast<int64_t>(std::llround(crop_seconds * 16000.0));
  const int64_t Tc = audio::fbank_num_frames(want, fo);
  CropBatch out;
  out.fbank = Tensor::empty({m, Tc, F});
  out.frame_mask = Tensor::empty({m, Tc}, DType::Bool);
  const Tensor src_c = b.fbank.contiguous();
  const float* src = src_c.data<float>();
  float* dst = out.fbank.data<float>();
  uint8_t* fm = out.frame_mask.bytes();
  for (int64_t i = 0; i < m; ++i) {
    const int64_t n = b.lengths[i];
    const int64_t real = std::min(audio::fbank_num_frames(n, fo), Tfull);
    int64_t start = 0, len = std::min(real, Tc);
    if (n > want) {
      Generator g(seeds[i]);
      start = g.next_int(0, (n - want) / shift + 1);
      len = Tc;
      SONAR_CHECK(start + len <= real, "crop of ", b.paths[i], ": frames [", start, ", ", start + len,
                  ") outside its ", real, " frames");
    }
    std::copy(src + (i * Tfull + start) * F, src + (i * Tfull + start + len) * F, dst + i * Tc * F);
    std::fill(dst + (i * Tc + len) * F, dst + (i + 1) * Tc * F, 0.0f);
    for (int64_t t = 0; t < Tc; ++t) fm[i * Tc + t] = t >= len ? 1 : 0;
  }
  return out;
}

// ---- the trainer ----

struct Trainer::State {
  audio::Dataset data;
  std::string data_fingerprint;
  LabelTokenizer tokenizer;
  std::shared_ptr<beats::BeatsModel> model;
  std::shared_ptr<beats::MaskedLabelPrediction> objective;
  std::unique_ptr<beats::TrainStep> train_step;
  std::unique_ptr<OverlappedGradientSum> grad_sum;  // multi-process runs with overlap_allreduce
  std::optional<ag::LrSchedule> schedule;
  Generator mask_gen, dropout_gen;
  int64_t step = 0;
  int64_t epoch = 0, batch = 0;  // data position of the next batch
  double elapsed_before = 0.0;   // seconds spent in earlier sessions
  int64_t warmup = 0;
  json config;
  bool resumed = false;
  Clock::time_point session_start = Clock::now();
  std::string out, ckpt_path;
  std::function<void(const std::string&)> log;
  std::shared_ptr<beats::BeatsModel> start_model;  // frozen, loaded on first use
};

Trainer::Trainer(PretrainOptions o, std::vector<std::shared_ptr<TrainerExtension>> ext)
    : opts_(std::move(o)), extensions_(std::move(ext)) {
  const PretrainOptions& p = opts_;
  check_run_options(p);
  SONAR_CHECK(p.mlp.masking.mask_ratio > 0 && p.mlp.masking.mask_ratio < 1, "--mask-ratio must be in (0, 1), got ",
              p.mlp.masking.mask_ratio);
  if (p.init.empty()) preset_config(p.preset);  // throws on an unknown preset
  for (const auto& e : extensions_) {
    SONAR_CHECK(e != nullptr, "Trainer: null extension");
    const std::string n = e->name();
    SONAR_CHECK(!n.empty() && n.find('.') == std::string::npos, "Trainer: extension name '", n,
                "' must be non-empty without dots");
  }
}

Trainer::~Trainer() = default;

std::shared_ptr<beats::BeatsModel> Trainer::model() const { return st_ ? st_->model : nullptr; }
std::shared_ptr<beats::MaskedLabelPrediction> Trainer::objective() const { return st_ ? st_->objective : nullptr; }
const LabelTokenizer& Trainer::tokenizer() const {
  SONAR_CHECK(st_ != nullptr, "Trainer: not set up yet");
  return st_->tokenizer;
}
ag::AdamW& Trainer::optimizer() {
  SONAR_CHECK(st_ && st_->train_step, "Trainer: not set up yet");
  return st_->train_step->optimizer();
}
const audio::Dataset& Trainer::data() const {
  SONAR_CHECK(st_ != nullptr, "Trainer: not set up yet");
  return st_->data;
}
int64_t Trainer::steps_done() const { return st_ ? st_->step : 0; }
bool Trainer::resuming() const { return st_ && st_->resumed; }

void Trainer::log(const std::string& line) const {
  if (st_ && st_->log) {
    st_->log(line);
  } else if (opts_.log) {
    opts_.log(line);
  } else {
    default_log(line);
  }
}

namespace {

// The model to start from: a checkpoint (fine-tuned head dropped) or a fresh preset.
std::shared_ptr<beats::BeatsModel> initial_model(const PretrainOptions& p, beats::CheckpointData* init_ckpt,
                                                 const std::function<void(const std::string&)>& log) {
  if (p.init.empty()) {
    Generator gen(random_bits(p.seed, kInitStream));
    auto m = std::make_shared<beats::BeatsModel>(preset_config(p.preset), &gen);
    log("model: fresh '" + p.preset + "' BEATs (" + std::to_string(m->num_parameters()) + " parameters)");
    return m;
  }
  beats::CheckpointData c = beats::read_checkpoint(p.init);
  if (c.kind == beats::ModelKind::Finetuned) {
    for (auto it = c.state.begin(); it != c.state.end();)
      it = it->first.rfind("predictor.", 0) == 0 ? c.state.erase(it) : std::next(it);
    c.cfg.finetuned_model = false;
    c.kind = beats::ModelKind::Pretrained;
    c.labels.clear();
    log("model: " + p.init + " (fine-tuned head dropped)");
  }
  SONAR_CHECK(c.kind == beats::ModelKind::Pretrained, p.init, ": this is a ", beats::kind_name(c.kind),
              " checkpoint, not a BEATs model (--init)");
  auto m = beats::build_beats(c);
  log("model: " + p.init + " (" + std::to_string(m->num_parameters()) + " parameters)");
  *init_ckpt = std::move(c);
  return m;
}

}  // namespace

std::shared_ptr<beats::BeatsModel> Trainer::start_model() {
  SONAR_CHECK(st_ != nullptr, "Trainer: not set up yet");
  if (!st_->start_model) {
    beats::CheckpointData ignored;
    st_->start_model = initial_model(opts_, &ignored, [](const std::string&) {});
    st_->start_model->eval();
    st_->start_model->set_requires_grad(false);
  }
  return st_->start_model;
}

namespace {

// Data parallelism: the masking of this process's rows of the global batch. The global batch is, in the order
// one process would hold it, every process's new clips (by rank), then every process's added clips (by rank).
// Frame lengths are exchanged so that every process draws the same global masking from the same generator.
beats::PatchMasking global_masking_rows(const StepBatch& sb, int64_t P, const Distributed& dist,
                                        const beats::BeatsModel& model, const beats::MlpOptions& mo, Generator& gen,
                                        int64_t* global_masked, int64_t* global_visible) {
  const int64_t B = sb.fbank.size(0), T = sb.fbank.size(1), F = sb.fbank.size(2);
  const Tensor fm = sb.frame_mask.contiguous();
  std::vector<int64_t> lengths(B);
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = 0;
    for (int64_t t = 0; t < T; ++t) n += fm.bytes()[b * T + t] ? 0 : 1;
    lengths[b] = n;
  }
  const std::vector<int64_t> counts = dist.allgather(std::vector<int64_t>{sb.new_clips, B});
  const std::vector<int64_t> all_lengths = dist.allgather(lengths);
  // Global order: new rows of every rank, then added rows of every rank.
  std::vector<int64_t> order_len, mine;
  int64_t offset = 0;  // start of rank r's rows in all_lengths
  std::vector<int64_t> starts(dist.size());
  for (int r = 0; r < dist.size(); ++r) {
    starts[r] = offset;
    offset += counts[2 * r + 1];
  }
  for (int pass = 0; pass < 2; ++pass)
    for (int r = 0; r < dist.size(); ++r) {
      const int64_t n_new = counts[2 * r], n_all = counts[2 * r + 1];
      const int64_t lo = pass == 0 ? 0 : n_new, hi = pass == 0 ? n_new : n_all;
      for (int64_t i = lo; i < hi; ++i) {
        if (r == dist.rank()) mine.push_back(static_cast<int64_t>(order_len.size()));
        order_len.push_back(all_lengths[starts[r] + i]);
      }
    }
  // `mine` lists this rank's rows in global order: new rows then added rows, as the local batch holds them.
  const int64_t G = static_cast<int64_t>(order_len.size());
  Tensor gfm = zeros({G, T}, DType::Bool);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t t = order_len[g]; t < T; ++t) gfm.bytes()[g * T + t] = 1;
  const int64_t ps = model.cfg.input_patch_size;
  const Tensor gpad = model.patch_mask_from_frames(gfm, T / ps, F / ps, mo.padding);
  const beats::PatchMasking global = beats::make_patch_masking(G, P, gpad, mo.masking, gen);
  *global_masked = global.total_masked();
  *global_visible = 0;
  for (int64_t v : global.num_visible) *global_visible += v;
  return beats::select_masking_rows(global, mine);
}

}  // namespace

PretrainResult Trainer::run() {
  const Distributed& dist = Distributed::world();
  if (!dist.multi()) {
    try {
      return run_impl();
    } catch (const Stopped& e) {
      // Stopped before the first step (an extension's preparation, e.g. the replay plan's embedding pass):
      // a stopped run, whose preparation resumes from what it kept.
      log(std::string(e.what()) + "; run the same command again to resume");
      PretrainResult stopped;
      stopped.stopped = true;
      stopped.total_steps = opts_.steps;
      stopped.steps_done = steps_done();
      return stopped;
    }
  }
  // Several processes: an error in one must end all of them (the others would wait in a collective).
  try {
    return run_impl();
  } catch (const std::exception& e) {
    dist.abort(e.what());
  }
}

PretrainResult Trainer::run_impl() {
  const PretrainOptions& p = opts_;
  const Distributed& dist = Distributed::world();
  st_ = std::make_unique<State>();
  State& s = *st_;
  s.log = p.log ? p.log : default_log;
  if (!dist.is_root()) s.log = [](const std::string&) {};  // one process speaks for the group
  if (dist.multi()) {
    for (const auto& e : extensions_)
      SONAR_CHECK(e->data_parallel(), "the '", e->name(), "' part does not run data-parallel yet: run it in one "
                  "process (without mpirun), or switch it off");
  }
  if (p.num_threads > 0) omp_set_num_threads(p.num_threads);
  s.out = p.out_dir;
  s.ckpt_path = (fs::path(s.out) / kCheckpointFile).string();
  PretrainResult result;
  result.checkpoint = s.ckpt_path;
  result.total_steps = p.steps;

  // ---- read everything (nothing is written before this all succeeded) ----
  s.data = read_training_data(p.data, p.splits);
  s.data_fingerprint = data_fingerprint(s.data);
  s.warmup = p.warmup_steps >= 0 ? p.warmup_steps : p.steps / 10;

  json cfg = json::object();
  add_run_config(cfg, p, s.data.size(), s.data_fingerprint, s.warmup);
  cfg["tokenizer"] = absolute_path(p.tokenizer);
  cfg["reuse-predictor"] = p.reuse_predictor;
  cfg["mask-ratio"] = p.mlp.masking.mask_ratio;
  cfg["min-visible"] = p.mlp.masking.min_visible;
  cfg["label-smoothing"] = p.mlp.label_smoothing;
  cfg["predictor-layers"] = p.mlp.predictor.layers;
  cfg["padding"] = p.mlp.padding == beats::PaddingMode::Exact ? "exact" : "official";
  json ext_cfg = json::object();
  for (const auto& e : extensions_) ext_cfg[e->name()] = e->config();
  cfg["extensions"] = ext_cfg;
  s.config = cfg;

  // An existing run in the folder: resume it, refuse, or (with force) start over.
  std::optional<beats::CheckpointData> resume;
  if (fs::exists(s.ckpt_path) && !p.force) {
    beats::CheckpointData c;
    try {
      c = beats::read_checkpoint(s.ckpt_path);
      SONAR_CHECK(meta_at(c, "trainer.format") == kTrainerFormat, s.ckpt_path, ": trainer checkpoint format '",
                  meta_at(c, "trainer.format"), "', this build reads ", kTrainerFormat);
    } catch (const Error& e) {
      SONAR_FAIL("cannot resume from ", s.ckpt_path, ": ", e.what(),
                 " (delete it to resume from nothing, or add --force to start over)");
    }
    const json stored = meta_json(c, "trainer.config");
    {
      auto it = c.metadata.find("trainer.ranks");
      const int stored_ranks = it == c.metadata.end() ? 1 : std::stoi(it->second);
      SONAR_CHECK(stored_ranks == dist.size(), s.out, " holds a run of ", stored_ranks, " process",
                  stored_ranks == 1 ? "" : "es", "; resume it with the same number (mpirun -np ", stored_ranks,
                  "), not ", dist.size(), " (each process's dropout stream is part of the checkpoint)");
    }
    const bool finished = meta_at(c, "trainer.finished") == "1";
    const int64_t done = std::stoll(meta_at(c, "trainer.step"));
    SONAR_CHECK(!finished, s.out, " holds a finished run (", done, " steps); add --force to overwrite it, or choose "
                "another --out");
    auto refuse = [&](const std::string& what, const json& there, const json& now) {
      SONAR_FAIL(s.out, " holds a run started with other options (", what, ": ", json_value_str(there), " there, ",
                 json_value_str(now), " now); rerun with the same options to resume it, or add --force to start over");
    };
    for (const auto& [k, v] : cfg.items()) {
      const json sv = stored.contains(k) ? stored.at(k) : json();
      if (sv == v) continue;
      if (k == "extensions" && sv.is_object() && v.is_object()) {
        // Name the extension's own option (its flag), not the whole block.
        for (const auto& [en, ev] : v.items()) {
          const json es = sv.contains(en) ? sv.at(en) : json();
          if (es == ev) continue;
          if (!es.is_object() || !ev.is_object()) refuse("extension " + en, es.is_null() ? json("off") : es, ev);
          for (const auto& [fk, fv] : ev.items()) {
            const json fs_ = es.contains(fk) ? es.at(fk) : json();
            if (fs_ != fv) refuse(fk, fs_, fv);
          }
          for (const auto& [fk, fs_] : es.items())
            if (!ev.contains(fk)) refuse(fk, fs_, json());
        }
        for (const auto& [en, es] : sv.items())
          if (!v.contains(en)) refuse("extension " + en, es, json("off"));
      }
      refuse(k, sv, v);
    }
    resume = std::move(c);
  }

  beats::CheckpointData init_ckpt;
  if (resume) {
    const beats::CheckpointData& c = *resume;
    const std::string tok_path = (fs::path(s.out) / kTokenizerFile).string();
    try {
      s.tokenizer = LabelTokenizer::load(tok_path);
    } catch (const Error& e) {
      SONAR_FAIL("cannot resume: the run's tokenizer ", tok_path, " is unreadable: ", e.what(),
                 " (add --force to start over)");
    }
    SONAR_CHECK(s.tokenizer.fingerprint() == meta_at(c, "trainer.tokenizer-fingerprint"), "cannot resume: ",
                tok_path, " is not the tokenizer the checkpoint was trained with (add --force to start over)");
    s.model = beats::build_beats(c);
  } else {
    if (!p.tokenizer.empty()) {
      s.tokenizer = LabelTokenizer::load(p.tokenizer);
    }
    s.model = initial_model(p, &init_ckpt, s.log);
    if (p.tokenizer.empty()) {
      const int64_t codes = p.codes > 0 ? p.codes : s.model->cfg.quant_n;
      const int64_t dim = s.model->cfg.quant_dim > 0 ? s.model->cfg.quant_dim : 256;
      s.tokenizer = LabelTokenizer::random_projection(s.model->cfg.input_patch_size, codes, dim,
                                                      random_bits(p.seed, kTokenizerStream));
    }
  }
  SONAR_CHECK(s.tokenizer.patch_size() == s.model->cfg.input_patch_size, "the tokenizer's patches are ",
              s.tokenizer.patch_size(), " wide but the model's are ", s.model->cfg.input_patch_size);
  const int64_t want_frames = audio::fbank_num_frames(std::llround(p.crop_seconds * 16000.0));
  SONAR_CHECK(want_frames >= s.model->cfg.input_patch_size, "--crop-seconds ", p.crop_seconds, " is shorter than one ",
              s.model->cfg.input_patch_size, "-frame patch (",
              ((s.model->cfg.input_patch_size - 1) * 160 + 400) / 16000.0, " s)");

  beats::MlpOptions mo = p.mlp;
  mo.predictor.num_classes = s.tokenizer.num_codes();
  {
    Generator pgen(random_bits(p.seed, kPredictorStream));
    s.objective = std::make_shared<beats::MaskedLabelPrediction>(s.model, mo, &pgen);
  }
  s.resumed = resume.has_value();
  for (const auto& e : extensions_) e->prepare(*this);
  if (resume) {
    s.objective->predictor->load_state_dict(with_prefix_removed(resume->training_tensors, kPredictorPrefix), true);
  } else if (!p.init.empty() && p.reuse_predictor) {
    auto pred = with_prefix_removed(init_ckpt.training_tensors, kPredictorPrefix);
    auto fp = init_ckpt.metadata.find("trainer.tokenizer-fingerprint");
    if (!pred.empty() && fp != init_ckpt.metadata.end() && fp->second == s.tokenizer.fingerprint()) {
      // The main predictor only: an auxiliary head of the earlier run is not this run's (extensions set theirs).
      for (auto it = pred.begin(); it != pred.end();)
        it = it->first.rfind("aux_head.", 0) == 0 ? pred.erase(it) : std::next(it);
      const bool has_aux = s.objective->predictor->aux_head != nullptr;
      s.objective->predictor->load_state_dict(pred, !has_aux);
      s.log("label predictor: from " + p.init + " (same tokenizer)");
    } else {
      s.log("label predictor: fresh (" + p.init +
            (pred.empty() ? " has none)" : " was trained with another tokenizer)"));
    }
  }
  s.objective->train();

  beats::TrainStepOptions tso;
  tso.adamw = p.adamw;
  tso.max_grad_norm = p.max_grad_norm;
  s.train_step = std::make_unique<beats::TrainStep>(*s.objective, tso);  // lr set by the loop each step
  ag::LrScheduleOptions so;
  so.peak_lr = p.adamw.lr;
  so.warmup_steps = s.warmup;
  so.total_steps = p.steps;
  so.init_lr = 0.0;
  so.final_lr = p.final_lr;
  so.decay = ag::Decay::Cosine;
  s.schedule.emplace(so);
  s.mask_gen = Generator(random_bits(p.seed, kMaskStream));
  // Dropout: process 0 draws the single-process stream, process r > 0 its own (a multi-process run is then
  // the same computation as one process for everything but the dropout draws).
  s.dropout_gen = Generator(dist.rank() == 0 ? random_bits(p.seed, kDropoutStream)
                                             : random_bits(random_bits(p.seed, kDropoutStream), dist.rank()));

  for (const auto& e : extensions_) e->attach(*this);

  if (resume) {
    const beats::CheckpointData& c = *resume;
    try {
      ag::OptimizerState os;
      os.tensors = with_prefix_removed(c.training_tensors, kOptimizerPrefix);
      const json sc = meta_json(c, "trainer.optimizer-scalars");
      for (const auto& [k, v] : sc.items()) os.scalars[k] = v.get<double>();
      s.train_step->optimizer().load_state(os);
      const json rng = meta_json(c, "trainer.rng");
      s.mask_gen.set_state(rng.at("mask").at(0).get<uint64_t>(), rng.at("mask").at(1).get<uint64_t>());
      const json& dr = rng.contains("dropout-ranks") ? rng.at("dropout-ranks").at(dist.rank()) : rng.at("dropout");
      s.dropout_gen.set_state(dr.at(0).get<uint64_t>(), dr.at(1).get<uint64_t>());
      const json pos = meta_json(c, "trainer.data-position");
      s.epoch = pos.at("epoch").get<int64_t>();
      s.batch = pos.at("batch").get<int64_t>();
      s.step = std::stoll(meta_at(c, "trainer.step"));
      s.elapsed_before = std::stod(meta_at(c, "trainer.elapsed-seconds"));
      for (const auto& e : extensions_) {
        const std::string pre = std::string(kExtensionPrefix) + e->name() + ".";
        e->load_state(with_prefix_removed(c.training_tensors, pre), meta_with_prefix_removed(c.metadata, pre));
      }
    } catch (const json::exception& e) {
      SONAR_FAIL("cannot resume from ", s.ckpt_path, ": bad trainer metadata: ", e.what(),
                 " (add --force to start over)");
    } catch (const std::logic_error& e) {  // std::stoll / std::stod
      SONAR_FAIL("cannot resume from ", s.ckpt_path, ": bad trainer metadata: ", e.what(),
                 " (add --force to start over)");
    } catch (const Error& e) {
      SONAR_FAIL("cannot resume from ", s.ckpt_path, ": ", e.what(), " (add --force to start over)");
    }
    SONAR_CHECK(s.step >= 0 && s.step <= p.steps, s.ckpt_path, ": step ", s.step, " outside [0, ", p.steps, "]");
  }

  // The data stream (validates the position against the epoch size).
  StreamOptions sto = run_stream_options(p, s.model->cfg.input_patch_size);
  sto.rank = dist.rank();
  sto.ranks = dist.size();
  sto.log = p.log ? p.log : default_log;  // every process: each skips only the clips of its own slices
  BatchStream stream(s.data, sto, s.epoch, s.batch);
  // The first batch is loaded before anything is written, so data that cannot be read at all fails cleanly.
  std::optional<TrainBatch> first_batch;
  if (s.step < p.steps) first_batch = stream.next();

  // ---- from here on the run folder is written (by process 0 alone) ----
  const std::string metrics_path = (fs::path(s.out) / kMetricsFile).string();
  if (!dist.is_root()) {
    // nothing to write
  } else if (resume) {
    fs::create_directories(s.out);
    trim_metrics(metrics_path, s.step);
  } else {
    fs::create_directories(s.out);
    if (p.force) {
      for (const char* f : {kCheckpointFile, kModelFile, kTokenizerFile, kRunFile}) fs::remove(fs::path(s.out) / f);
    }
    fs::remove(metrics_path);
    s.tokenizer.save((fs::path(s.out) / kTokenizerFile).string());
    json run = json::object();
    run["format"] = kTrainerFormat;
    run["options"] = cfg;
    run["model"] = s.model->cfg.to_json();
    run["tokenizer"] = {{"kind", s.tokenizer.kind()},
                        {"codes", s.tokenizer.num_codes()},
                        {"fingerprint", s.tokenizer.fingerprint()}};
    write_file_atomic((fs::path(s.out) / kRunFile).string(), run.dump(2) + "\n");
  }

  s.log(std::string(resume ? "resuming " : "starting ") + s.out + ": " + std::to_string(s.data.size()) +
        " clips, " + std::to_string(stream.batches_per_epoch()) + " batches of " + std::to_string(stream.batch_size()) +
        " per epoch, " + std::to_string(stream.crop_frames()) + " frames per crop; tokenizer " + s.tokenizer.kind() +
        " (" + std::to_string(s.tokenizer.num_codes()) + " codes); " + format_threads(omp_get_max_threads()) + (dist.multi() ? " in each of " + std::to_string(dist.size()) + " processes (" +
                                         std::to_string(stream.local_batch_size()) + " clips each per batch)"
                                   : std::string()) +
        (resume ? "; at step " + std::to_string(s.step) + "/" + std::to_string(p.steps) : ""));

  auto save = [&](bool finished) {
    // Every process's dropout stream (a collective: all processes save at the same steps).
    const std::vector<int64_t> rngs = dist.allgather(std::vector<int64_t>{
        static_cast<int64_t>(s.dropout_gen.seed()), static_cast<int64_t>(s.dropout_gen.offset())});
    if (!dist.is_root()) return;
    beats::SaveExtras ex;
    for (const auto& [k, t] : s.objective->predictor->state_dict()) ex.training_tensors[kPredictorPrefix + k] = t;
    ag::OptimizerState os = s.train_step->optimizer().save_state();
    for (const auto& [k, t] : os.tensors) ex.training_tensors[kOptimizerPrefix + k] = t;
    json sc = json::object();
    for (const auto& [k, v] : os.scalars) sc[k] = v;
    ex.metadata["trainer.format"] = kTrainerFormat;
    ex.metadata["trainer.step"] = std::to_string(s.step);
    ex.metadata["trainer.total-steps"] = std::to_string(p.steps);
    ex.metadata["trainer.finished"] = finished ? "1" : "0";
    ex.metadata["trainer.config"] = s.config.dump();
    ex.metadata["trainer.optimizer-scalars"] = sc.dump();
    json rng = json{{"mask", {s.mask_gen.seed(), s.mask_gen.offset()}},
                     {"dropout", {s.dropout_gen.seed(), s.dropout_gen.offset()}}};
    if (dist.multi()) {
      json all = json::array();
      for (int r = 0; r < dist.size(); ++r)
        all.push_back({static_cast<uint64_t>(rngs[2 * r]), static_cast<uint64_t>(rngs[2 * r + 1])});
      rng["dropout-ranks"] = all;
      ex.metadata["trainer.ranks"] = std::to_string(dist.size());
    }
    ex.metadata["trainer.rng"] = rng.dump();
    ex.metadata["trainer.data-position"] = json{{"epoch", stream.epoch()}, {"batch", stream.batch()}}.dump();
    ex.metadata["trainer.schedule"] = json{{"peak_lr", so.peak_lr}, {"warmup_steps", so.warmup_steps},
                                           {"total_steps", so.total_steps}, {"init_lr", so.init_lr},
                                           {"final_lr", so.final_lr}, {"decay", "cosine"}}
                                          .dump();
    char el[64];
    std::snprintf(el, sizeof el, "%.3f", s.elapsed_before + seconds_since(s.session_start));
    ex.metadata["trainer.elapsed-seconds"] = el;
    ex.metadata["trainer.tokenizer-fingerprint"] = s.tokenizer.fingerprint();
    for (const auto& e : extensions_) {
      std::map<std::string, Tensor> t;
      std::map<std::string, std::string> m;
      e->save_state(t, m);
      const std::string pre = std::string(kExtensionPrefix) + e->name() + ".";
      for (auto& [k, v] : t) ex.training_tensors[pre + k] = v;
      for (auto& [k, v] : m) ex.metadata[pre + k] = v;
    }
    if (finished) beats::save_beats((fs::path(s.out) / kModelFile).string(), *s.model);
    beats::save_beats(s.ckpt_path, *s.model, ex);
  };

  // ---- the loop ----
  require_precision_supported(p.precision);
  PrecisionGuard precision_scope(p.precision);
  result.start_step = s.step;
  result.resumed = s.resumed;
  s.session_start = Clock::now();
  Clock::time_point interval_start = s.session_start;
  double interval_wait = 0.0, interval_loss = 0.0, interval_acc = 0.0, interval_mlp = 0.0, interval_gn = 0.0;
  int64_t interval_steps = 0, interval_clips = 0, session_steps = 0;
  if (s.step >= p.steps) {  // every step was done but the final save did not complete
    if (dist.is_root())
      for (const auto& e : extensions_) e->finish(s.out);
    save(true);
    result.steps_done = s.step;
    result.finished = true;
    return result;
  }
  while (s.step < p.steps) {
    const Clock::time_point tw = Clock::now();
    TrainBatch tb = first_batch ? std::move(*first_batch) : stream.next();
    first_batch.reset();
    interval_wait += seconds_since(tw);

    StepBatch sb;
    sb.fbank = tb.fbank;
    sb.frame_mask = tb.frame_mask;
    sb.new_clips = tb.clips;
    sb.step = s.step;
    for (const auto& e : extensions_) e->on_batch(sb);
    sb.token_features = s.tokenizer.features(sb.fbank, sb.frame_mask);
    sb.start_labels = s.tokenizer.labels_of(sb.token_features);
    sb.labels = sb.start_labels;
    if (sb.frame_mask.defined()) {
      const int64_t ps = s.model->cfg.input_patch_size;
      sb.patch_padding = s.model->patch_mask_from_frames(sb.frame_mask, sb.fbank.size(1) / ps, sb.fbank.size(2) / ps,
                                                         p.mlp.padding);
    }
    for (const auto& e : extensions_) e->relabel(sb);

    // The patch masking: drawn over the whole (global) batch, so every process masks its clips as one process
    // holding all of them would.
    const int64_t ps = s.model->cfg.input_patch_size;
    const int64_t P = (sb.fbank.size(1) / ps) * (sb.fbank.size(2) / ps);
    beats::PatchMasking masking;
    if (!dist.multi()) {
      masking = beats::make_patch_masking(sb.fbank.size(0), P, sb.patch_padding, p.mlp.masking, s.mask_gen);
      sb.global_masked = masking.total_masked();
    } else {
      masking = global_masking_rows(sb, P, dist, *s.model, p.mlp, s.mask_gen, &sb.global_masked, &sb.global_visible);
    }
    if (!dist.multi())
      for (int64_t v : masking.num_visible) sb.global_visible += v;

    s.train_step->optimizer().set_lr(static_cast<float>(s.schedule->lr_at(s.step)));
    beats::MlpOutput out;
    beats::StepStats st;
    // Overlapped gradient sums: the layout follows the optimiser's parameters (rebuilt, identically on every
    // process, when the online codebook grows the head).
    const bool overlap = dist.multi() && p.overlap_allreduce;
    if (overlap) {
      const std::vector<ag::Var>& params = s.train_step->optimizer().params();
      if (!s.grad_sum || !s.grad_sum->covers(params))
        s.grad_sum = std::make_unique<OverlappedGradientSum>(params, dist, p.allreduce_bucket_bytes);
      s.grad_sum->begin();
    }
    // Only with several processes is there anything to do after the backward (and only then may the gradients
    // change there; without it TrainStep measures their norm during the backward).
    std::function<void()> sum_gradients;
    if (dist.multi())
      sum_gradients = [&]() {
        if (overlap)
          s.grad_sum->finish();
        else
          allreduce_gradients(s.train_step->optimizer().params(), dist, p.allreduce_bucket_bytes);
      };
    try {
      std::optional<ag::LeafGradReadyScope> leaf_ready;
      if (overlap) leaf_ready.emplace(s.grad_sum->hook());
      st = s.train_step->run(
          [&]() {
            nn::RngScope scope(s.dropout_gen);
            out = s.objective->forward_masked(ag::Var(sb.fbank), sb.patch_padding, sb.labels, masking);
            ag::Var loss = out.loss;
            // This process's share of the global mean (exactly 1 with one process: nothing is scaled).
            if (dist.multi())
              loss = ag::mul(loss, static_cast<float>(static_cast<double>(out.num_masked) /
                                                      static_cast<double>(sb.global_masked)));
            for (const auto& e : extensions_) {
              ag::Var extra = e->extra_loss(sb, out);
              if (extra.defined()) loss = ag::add(loss, extra);
            }
            return loss;
          },
          sum_gradients);
    } catch (const Error& e) {
      SONAR_FAIL("step ", s.step + 1, " of ", p.steps, ": ", e.what(), " (the last checkpoint is ", s.ckpt_path, ")");
    }
    double step_acc = out.masked_accuracy, step_mlp = out.loss.value().item<double>();
    if (dist.multi()) {
      // Global numbers for the progress line: the summed scaled losses, masked-patch-weighted accuracy.
      const double share = static_cast<double>(out.num_masked) / static_cast<double>(sb.global_masked);
      double v[3] = {st.loss, step_acc * share, step_mlp * share};
      dist.allreduce_sum(v, 3);
      st.loss = v[0];
      step_acc = v[1];
      step_mlp = v[2];
    }
    for (const auto& e : extensions_) e->after_step(sb, out);
    ++s.step;
    ++session_steps;

    StepRecord rec;
    rec.step = s.step;
    rec.loss = st.loss;
    rec.accuracy = step_acc;
    rec.lr = st.lr;
    rec.grad_norm = st.grad_norm;
    result.history.push_back(rec);
    interval_loss += st.loss;
    interval_acc += step_acc;
    interval_mlp += step_mlp;
    interval_gn += st.grad_norm;
    interval_clips += dist.sum(static_cast<int64_t>(sb.fbank.size(0)));
    ++interval_steps;

    if (s.step % p.log_every == 0 || s.step == p.steps) {
      const double dt = seconds_since(interval_start);
      const double session = seconds_since(s.session_start);
      Progress pr;
      pr.step = s.step;
      pr.total = p.steps;
      pr.loss = interval_loss / static_cast<double>(interval_steps);
      pr.accuracy = interval_acc / static_cast<double>(interval_steps);
      pr.lr = st.lr;
      pr.clips_per_second = dt > 0 ? static_cast<double>(interval_clips) / dt : 0.0;
      pr.elapsed_seconds = s.elapsed_before + session;
      pr.eta_seconds = session / static_cast<double>(session_steps) * static_cast<double>(p.steps - s.step);
      pr.data_wait = dt > 0 ? interval_wait / dt : 0.0;
      for (const auto& e : extensions_)
        for (auto& kv : e->progress()) pr.extra.push_back(kv);
      s.log(format_progress(pr));
      json mline = json::object();
      const double n = static_cast<double>(interval_steps);
      mline["step"] = s.step;
      mline["loss"] = number_or_null(pr.loss);
      mline["mlp_loss"] = number_or_null(interval_mlp / n);
      mline["masked_accuracy"] = number_or_null(pr.accuracy);
      mline["lr"] = number_or_null(pr.lr);
      mline["grad_norm"] = number_or_null(interval_gn / n);
      mline["clips_per_second"] = number_or_null(pr.clips_per_second);
      mline["elapsed_seconds"] = number_or_null(pr.elapsed_seconds);
      mline["steps_averaged"] = interval_steps;
      for (const auto& [k, v] : pr.extra) mline[k] = number_or_null(v);
      if (dist.is_root()) append_line(metrics_path, mline.dump());
      interval_start = Clock::now();
      interval_wait = interval_loss = interval_acc = interval_mlp = interval_gn = 0.0;
      interval_steps = interval_clips = 0;
    }

    if (s.step == p.steps) {
      if (dist.is_root())
        for (const auto& e : extensions_) e->finish(s.out);
      save(true);
      result.finished = true;
      stream.report_skips();  // a clip first met by the next epoch's prefetch is listed too
      if (stream.skipped_files() > 0)
        s.log("skipped " + std::to_string(stream.skipped_files()) +
              (stream.skipped_files() == 1 ? " clip" : " clips") + " that could not be used, drawn " +
              std::to_string(stream.skipped_draws()) + " times in this session (each listed above when first drawn)");
      s.log("finished: " + s.ckpt_path + " and " + (fs::path(s.out) / kModelFile).string() + " after " +
            format_duration(s.elapsed_before + seconds_since(s.session_start)));
      break;
    }
    if (s.step % p.save_every == 0) save(false);
    if (p.halt_after >= 0 && session_steps >= p.halt_after) {
      result.stopped = true;
      break;
    }
    if (dist.any(p.stop && p.stop->load()) || (p.stop_after >= 0 && session_steps >= p.stop_after)) {
      if (s.step % p.save_every != 0) save(false);
      result.stopped = true;
      s.log("stopped at step " + std::to_string(s.step) + "/" + std::to_string(p.steps) + "; checkpoint " +
            s.ckpt_path + " (run the same command again to resume)");
      break;
    }
  }
  result.steps_done = s.step;
  return result;
}

PretrainResult pretrain(const PretrainOptions& opts, std::vector<std::shared_ptr<TrainerExtension>> extensions) {
  Trainer t(opts, std::move(extensions));
  return t.run();
}

}  // namespace sonar::method
