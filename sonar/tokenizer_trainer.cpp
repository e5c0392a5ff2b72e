// The tokenizer-training run (`sonar train-tokenizer`): teacher, tokenizer and estimator set-up, the loop,
// checkpoints and resume (see sonar/tokenizer_trainer.h).
#include "sonar/tokenizer_trainer.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>

#include <nlohmann/json.hpp>

#include "audio/dataset.h"
#include "autograd/schedule.h"
#include "nn/beats/checkpoint.h"
#include "nn/beats/pretrain.h"
#include "sonar/batch_stream.h"
#include "sonar/run_folder.h"
#include "sonar/trainer.h"
#include "tensor/io.h"
#include "tensor/random.h"

namespace sonar::method {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Stream identifiers: each use of the run seed draws from its own sequence.
constexpr uint64_t kTokenizerInitStream = 0x544b494eULL;  // "TKIN": fresh tokenizer weights
constexpr uint64_t kEstimatorStream = 0x4553544dULL;      // "ESTM": estimator weights
constexpr uint64_t kDropoutStream = 0x44524f50ULL;        // "DROP": dropout, layer drop and the k-means init

constexpr const char* kEstimatorPrefix = "estimator.";
constexpr const char* kOptimizerPrefix = "optimizer.";

// A fingerprint of every state tensor of a module (two equal fingerprints: the same weights).
std::string module_fingerprint(const nn::Module& m) {
  HashChain hc;
  add_module_state(hc, m);
  return hex_of(hc.h);
}

// The teacher: a BEATs model (pre-trained or fine-tuned: its encoder's last layer is the target either way),
// frozen and in eval mode.
std::shared_ptr<beats::BeatsModel> load_teacher(const std::string& path) {
  beats::CheckpointData c = beats::read_checkpoint(path);
  SONAR_CHECK(c.kind == beats::ModelKind::Pretrained || c.kind == beats::ModelKind::Finetuned, path, ": this is a ",
              beats::kind_name(c.kind), " checkpoint, not a BEATs model (--teacher)");
  auto m = beats::build_beats(c);
  m->eval();
  m->set_requires_grad(false);
  return m;
}

// Adds one step's labels to a histogram of code assignments (labels < 0 are padded patches).
void count_labels(const Tensor& labels, std::vector<int64_t>& counts) {
  const Tensor l = labels.contiguous();
  const int64_t* p = l.data<int64_t>();
  for (int64_t i = 0; i < l.numel(); ++i)
    if (p[i] >= 0) ++counts[static_cast<size_t>(p[i])];
}

}  // namespace

CodeUsage code_usage(const std::vector<int64_t>& counts) {
  CodeUsage u;
  double total = 0.0;
  for (int64_t c : counts) {
    SONAR_CHECK(c >= 0, "code_usage: negative count ", c);
    total += static_cast<double>(c);
    u.codes_used += c > 0;
  }
  if (total <= 0.0) return u;
  double h = 0.0;
  for (int64_t c : counts) {
    if (c == 0) continue;
    const double q = static_cast<double>(c) / total;
    h -= q * std::log(q);
  }
  u.perplexity = std::exp(h);
  return u;
}

std::string format_tokenizer_progress(const TokenizerProgress& p) {
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "step %lld/%lld | loss %.4f | cosine %.4f | codes %lld/%lld | perplexity %.1f | lr %.2e | %.1f clips/s | "
                "elapsed %s | left %s | wait %.0f%%",
                static_cast<long long>(p.step), static_cast<long long>(p.total), p.loss, p.cosine_loss,
                static_cast<long long>(p.codes_used), static_cast<long long>(p.codes), p.perplexity, p.lr,
                p.clips_per_second, format_duration(p.elapsed_seconds).c_str(), format_duration(p.eta_seconds).c_str(),
                100.0 * std::clamp(p.data_wait, 0.0, 1.0));
  return buf;
}

namespace {

void validate(const TokenizerTrainOptions& p) {
  SONAR_CHECK(!p.teacher.empty(), "no teacher model given (--teacher)");
  check_run_options(p);
  SONAR_CHECK(p.init.empty() || p.codes == 0, "--codes sizes a fresh tokenizer's codebook; it cannot be combined "
              "with --init (whose codebook is kept)");
  SONAR_CHECK(std::isfinite(p.commitment_weight) && p.commitment_weight >= 0,
              "--commitment must be a finite number >= 0, got ", p.commitment_weight);
  SONAR_CHECK(p.estimator_layers >= 1 && p.estimator_layers <= 48, "--estimator-layers must be in [1, 48], got ",
              p.estimator_layers);
  if (p.init.empty()) preset_config(p.preset);  // throws on an unknown preset
}

// The tokenizer to start from: a BEATs tokenizer checkpoint, or a fresh preset with `codes` codes.
std::shared_ptr<beats::BeatsTokenizer> initial_tokenizer(const TokenizerTrainOptions& p, std::string* what) {
  if (p.init.empty()) {
    beats::BeatsConfig cfg = preset_config(p.preset);
    if (p.codes > 0) cfg.quant_n = p.codes;
    cfg.validate();
    Generator gen(random_bits(p.seed, kTokenizerInitStream));
    auto t = std::make_shared<beats::BeatsTokenizer>(cfg, &gen);
    *what = "fresh '" + p.preset + "' tokenizer (" + std::to_string(t->num_parameters()) + " parameters, " +
            std::to_string(cfg.quant_n) + " x " + std::to_string(cfg.quant_dim) +
            " codebook, k-means on the first batch)";
    return t;
  }
  beats::CheckpointData c = beats::read_checkpoint(p.init);
  SONAR_CHECK(c.kind == beats::ModelKind::Tokenizer, p.init, ": this is a ", beats::kind_name(c.kind),
              " checkpoint, not a BEATs tokenizer (--init)");
  auto t = beats::build_tokenizer(c);
  *what = p.init + " (" + std::to_string(t->num_parameters()) + " parameters, " +
          std::to_string(t->quantize->num_codes()) + " x " + std::to_string(t->quantize->dim) + " codebook" +
          (t->quantize->initialised() ? "" : ", k-means on the first batch") + ")";
  return t;
}

}  // namespace

TokenizerTrainResult train_tokenizer(const TokenizerTrainOptions& p) {
  validate(p);
  const auto log = p.log ? p.log : std::function<void(const std::string&)>(default_log);
  if (p.num_threads > 0) omp_set_num_threads(p.num_threads);
  const std::string out = p.out_dir;
  const std::string ckpt_path = (fs::path(out) / kCheckpointFile).string();
  const std::string tok_path = (fs::path(out) / kTokenizerFile).string();
  const std::string metrics_path = (fs::path(out) / kMetricsFile).string();
  TokenizerTrainResult result;
  result.checkpoint = ckpt_path;
  result.tokenizer = tok_path;
  result.total_steps = p.steps;

  // ---- read everything (nothing is written before this all succeeded) ----
  audio::Dataset data = read_training_data(p.data, p.splits);
  const std::string data_fp = data_fingerprint(data);
  std::shared_ptr<beats::BeatsModel> teacher = load_teacher(p.teacher);
  const std::string teacher_fingerprint = module_fingerprint(*teacher);
  const int64_t warmup = p.warmup_steps >= 0 ? p.warmup_steps : p.steps / 10;

  json cfg = json::object();
  add_run_config(cfg, p, data.size(), data_fp, warmup);
  cfg["teacher"] = absolute_path(p.teacher);
  cfg["teacher-fingerprint"] = teacher_fingerprint;
  cfg["commitment"] = p.commitment_weight;
  cfg["estimator-layers"] = p.estimator_layers;

  // An existing run in the folder: resume it, refuse, or (with force) start over.
  std::optional<beats::CheckpointData> resume;
  if (fs::exists(ckpt_path) && !p.force) {
    beats::CheckpointData c;
    try {
      c = beats::read_checkpoint(ckpt_path);
      SONAR_CHECK(meta_at(c, "trainer.format") == kTokenizerTrainerFormat, ckpt_path, ": trainer checkpoint format '",
                  meta_at(c, "trainer.format"), "', this command reads ", kTokenizerTrainerFormat);
    } catch (const Error& e) {
      SONAR_FAIL("cannot resume from ", ckpt_path, ": ", e.what(),
                 " (delete it to resume from nothing, or add --force to start over)");
    }
    json stored;
    bool finished = false;
    int64_t done = 0;
    try {
      stored = meta_json(c, "trainer.config");
      finished = meta_at(c, "trainer.finished") == "1";
      done = std::stoll(meta_at(c, "trainer.step"));
    } catch (const std::logic_error& e) {  // std::stoll
      SONAR_FAIL("cannot resume from ", ckpt_path, ": bad trainer metadata: ", e.what(), " (add --force to start over)");
    }
    SONAR_CHECK(!finished, out, " holds a finished run (", done, " steps); add --force to overwrite it, or choose "
                "another --out");
    for (const auto& [k, v] : cfg.items()) {
      const json sv = stored.contains(k) ? stored.at(k) : json();
      if (sv == v) continue;
      SONAR_FAIL(out, " holds a run started with other options (", k, ": ", json_value_str(sv), " there, ",
                 json_value_str(v), " now); rerun with the same options to resume it, or add --force to start over");
    }
    resume = std::move(c);
  }

  std::shared_ptr<beats::BeatsTokenizer> tokenizer;
  std::string tokenizer_what;
  if (resume) {
    try {
      tokenizer = beats::build_tokenizer(*resume);
    } catch (const Error& e) {
      SONAR_FAIL("cannot resume from ", ckpt_path, ": ", e.what(), " (add --force to start over)");
    }
    tokenizer_what = "from " + ckpt_path;
  } else {
    tokenizer = initial_tokenizer(p, &tokenizer_what);
  }
  const beats::BeatsConfig& tcfg = tokenizer->cfg;
  SONAR_CHECK(teacher->cfg.input_patch_size == tcfg.input_patch_size, p.teacher, ": the teacher's patches are ",
              teacher->cfg.input_patch_size, " wide but the tokenizer's are ", tcfg.input_patch_size);
  const int64_t want_frames = audio::fbank_num_frames(std::llround(p.crop_seconds * 16000.0));
  SONAR_CHECK(want_frames >= tcfg.input_patch_size, "--crop-seconds ", p.crop_seconds, " is shorter than one ",
              tcfg.input_patch_size, "-frame patch (", ((tcfg.input_patch_size - 1) * 160 + 400) / 16000.0, " s)");

  beats::DistillOptions dopt;
  dopt.estimator.layers = p.estimator_layers;
  dopt.estimator.target_dim = teacher->cfg.encoder_embed_dim;
  dopt.commitment_weight = p.commitment_weight;
  dopt.padding = beats::PaddingMode::Exact;
  std::shared_ptr<beats::TokenizerDistillation> objective;
  if (resume) {
    objective = std::make_shared<beats::TokenizerDistillation>(tokenizer, dopt);
  } else {
    Generator egen(random_bits(p.seed, kEstimatorStream));
    objective = std::make_shared<beats::TokenizerDistillation>(tokenizer, dopt, &egen);
  }
  const int64_t num_codes = tokenizer->quantize->num_codes();

  beats::TrainStepOptions tso;
  tso.adamw = p.adamw;
  tso.max_grad_norm = p.max_grad_norm;
  beats::TrainStep train_step(*objective, tso);  // lr set by the loop each step
  ag::LrScheduleOptions so;
  so.peak_lr = p.adamw.lr;
  so.warmup_steps = warmup;
  so.total_steps = p.steps;
  so.init_lr = 0.0;
  so.final_lr = p.final_lr;
  so.decay = ag::Decay::Cosine;
  const ag::LrSchedule schedule(so);
  Generator dropout_gen(random_bits(p.seed, kDropoutStream));
  int64_t step = 0, epoch = 0, batch = 0;
  double elapsed_before = 0.0;

  if (resume) {
    const beats::CheckpointData& c = *resume;
    try {
      objective->estimator->load_state_dict(with_prefix_removed(c.training_tensors, kEstimatorPrefix), true);
      ag::OptimizerState os;
      os.tensors = with_prefix_removed(c.training_tensors, kOptimizerPrefix);
      const json sc = meta_json(c, "trainer.optimizer-scalars");
      for (const auto& [k, v] : sc.items()) os.scalars[k] = v.get<double>();
      train_step.optimizer().load_state(os);
      const json rng = meta_json(c, "trainer.rng");
      dropout_gen.set_state(rng.at("dropout").at(0).get<uint64_t>(), rng.at("dropout").at(1).get<uint64_t>());
      const json pos = meta_json(c, "trainer.data-position");
      epoch = pos.at("epoch").get<int64_t>();
      batch = pos.at("batch").get<int64_t>();
      step = std::stoll(meta_at(c, "trainer.step"));
      elapsed_before = std::stod(meta_at(c, "trainer.elapsed-seconds"));
    } catch (const json::exception& e) {
      SONAR_FAIL("cannot resume from ", ckpt_path, ": bad trainer metadata: ", e.what(), " (add --force to start over)");
    } catch (const std::logic_error& e) {  // std::stoll / std::stod
      SONAR_FAIL("cannot resume from ", ckpt_path, ": bad trainer metadata: ", e.what(), " (add --force to start over)");
    } catch (const Error& e) {
      SONAR_FAIL("cannot resume from ", ckpt_path, ": ", e.what(), " (add --force to start over)");
    }
    SONAR_CHECK(step >= 0 && step <= p.steps, ckpt_path, ": step ", step, " outside [0, ", p.steps, "]");
  }
  objective->train();

  // The data stream (validates the position against the epoch size).
  StreamOptions sto = run_stream_options(p, tcfg.input_patch_size);
  BatchStream stream(data, sto, epoch, batch);
  // The first batch is loaded before anything is written, so data that cannot be read at all fails cleanly.
  std::optional<TrainBatch> first_batch;
  if (step < p.steps) first_batch = stream.next();

  // ---- from here on the run folder is written ----
  fs::create_directories(out);
  if (resume) {
    trim_metrics(metrics_path, step);
  } else {
    if (p.force) {
      for (const char* f : {kCheckpointFile, kTokenizerFile, kRunFile}) fs::remove(fs::path(out) / f);
    }
    fs::remove(metrics_path);
    json run = json::object();
    run["format"] = kTokenizerTrainerFormat;
    run["options"] = cfg;
    run["teacher"] = {{"kind", "BEATs model"}, {"config", teacher->cfg.to_json()}};
    run["tokenizer"] = tcfg.to_json();
    run["estimator"] = {{"layers", p.estimator_layers}, {"target_dim", objective->estimator->target_dim}};
    write_file_atomic((fs::path(out) / kRunFile).string(), run.dump(2) + "\n");
  }
  const Clock::time_point session_start = Clock::now();
  log(std::string(resume ? "resuming " : "starting ") + out + ": " + std::to_string(data.size()) + " clips, " +
      std::to_string(stream.batches_per_epoch()) + " batches of " + std::to_string(stream.batch_size()) +
      " per epoch, " + std::to_string(stream.crop_frames()) + " frames per crop; teacher " + p.teacher + " (" +
      std::to_string(teacher->cfg.encoder_layers) + " blocks, " + std::to_string(teacher->cfg.encoder_embed_dim) +
      " wide); tokenizer " + tokenizer_what + "; estimator " + std::to_string(p.estimator_layers) + " blocks; " +
      format_threads(omp_get_max_threads()) +
      (resume ? "; at step " + std::to_string(step) + "/" + std::to_string(p.steps) : ""));

  auto save = [&](bool finished) {
    beats::SaveExtras ex;
    for (const auto& [k, t] : objective->estimator->state_dict()) ex.training_tensors[kEstimatorPrefix + k] = t;
    ag::OptimizerState os = train_step.optimizer().save_state();
    for (const auto& [k, t] : os.tensors) ex.training_tensors[kOptimizerPrefix + k] = t;
    json sc = json::object();
    for (const auto& [k, v] : os.scalars) sc[k] = v;
    ex.metadata["trainer.format"] = kTokenizerTrainerFormat;
    ex.metadata["trainer.step"] = std::to_string(step);
    ex.metadata["trainer.total-steps"] = std::to_string(p.steps);
    ex.metadata["trainer.finished"] = finished ? "1" : "0";
    ex.metadata["trainer.config"] = cfg.dump();
    ex.metadata["trainer.optimizer-scalars"] = sc.dump();
    ex.metadata["trainer.rng"] = json{{"dropout", {dropout_gen.seed(), dropout_gen.offset()}}}.dump();
    ex.metadata["trainer.data-position"] = json{{"epoch", stream.epoch()}, {"batch", stream.batch()}}.dump();
    ex.metadata["trainer.schedule"] = json{{"peak_lr", so.peak_lr}, {"warmup_steps", so.warmup_steps},
                                           {"total_steps", so.total_steps}, {"init_lr", so.init_lr},
                                           {"final_lr", so.final_lr}, {"decay", "cosine"}}
                                          .dump();
    char el[64];
    std::snprintf(el, sizeof el, "%.3f", elapsed_before + seconds_since(session_start));
    ex.metadata["trainer.elapsed-seconds"] = el;
    ex.metadata["trainer.teacher-fingerprint"] = teacher_fingerprint;
    if (finished) beats::save_tokenizer(tok_path, *tokenizer);
    beats::save_tokenizer(ckpt_path, *tokenizer, ex);
  };

  // ---- the loop ----
  require_precision_supported(p.precision);
  PrecisionGuard precision_scope(p.precision);
  result.start_step = step;
  result.resumed = resume.has_value();
  if (step >= p.steps) {  // every step was done but the final save did not complete
    save(true);
    result.steps_done = step;
    result.finished = true;
    return result;
  }
  Clock::time_point interval_start = session_start;
  double interval_wait = 0.0, interval_loss = 0.0, interval_cos = 0.0, interval_commit = 0.0, interval_gn = 0.0;
  int64_t interval_steps = 0, interval_clips = 0, session_steps = 0;
  std::vector<int64_t> interval_counts(static_cast<size_t>(num_codes), 0);
  while (step < p.steps) {
    const Clock::time_point tw = Clock::now();
    TrainBatch tb = first_batch ? std::move(*first_batch) : stream.next();
    first_batch.reset();
    interval_wait += seconds_since(tw);

    const Tensor targets =
        beats::TokenizerDistillation::teacher_features(*teacher, tb.fbank, tb.frame_mask, dopt.padding);
    train_step.optimizer().set_lr(static_cast<float>(schedule.lr_at(step)));
    beats::DistillOutput dout;
    beats::StepStats st;
    try {
      st = train_step.run([&]() {
        nn::RngScope scope(dropout_gen);  // dropout, layer drop and the first batch's k-means
        dout = objective->forward(ag::Var(tb.fbank), tb.frame_mask, targets);
        return dout.loss;
      });
    } catch (const Error& e) {
      SONAR_FAIL("step ", step + 1, " of ", p.steps, ": ", e.what(), " (the last checkpoint is ", ckpt_path, ")");
    }
    ++step;
    ++session_steps;

    TokenizerStepRecord rec;
    rec.step = step;
    rec.loss = st.loss;
    rec.cosine_loss = dout.cosine_loss.value().item<double>();
    rec.commitment = dout.commitment.value().item<double>();
    rec.lr = st.lr;
    rec.grad_norm = st.grad_norm;
    rec.codes_used = dout.codes_used;
    rec.real_patches = dout.real_patches;
    result.history.push_back(rec);
    interval_loss += rec.loss;
    interval_cos += rec.cosine_loss;
    interval_commit += rec.commitment;
    interval_gn += rec.grad_norm;
    interval_clips += tb.clips;
    ++interval_steps;
    count_labels(dout.labels, interval_counts);

    if (step % p.log_every == 0 || step == p.steps) {
      const double dt = seconds_since(interval_start);
      const double session = seconds_since(session_start);
      const double n = static_cast<double>(interval_steps);
      const CodeUsage usage = code_usage(interval_counts);
      TokenizerProgress pr;
      pr.step = step;
      pr.total = p.steps;
      pr.loss = interval_loss / n;
      pr.cosine_loss = interval_cos / n;
      pr.codes_used = usage.codes_used;
      pr.codes = num_codes;
      pr.perplexity = usage.perplexity;
      pr.lr = st.lr;
      pr.clips_per_second = dt > 0 ? static_cast<double>(interval_clips) / dt : 0.0;
      pr.elapsed_seconds = elapsed_before + session;
      pr.eta_seconds = session / static_cast<double>(session_steps) * static_cast<double>(p.steps - step);
      pr.data_wait = dt > 0 ? interval_wait / dt : 0.0;
      log(format_tokenizer_progress(pr));
      json mline = json::object();
      mline["step"] = step;
      mline["loss"] = number_or_null(pr.loss);
      mline["cosine_loss"] = number_or_null(pr.cosine_loss);
      mline["commitment"] = number_or_null(interval_commit / n);
      mline["codes_used"] = usage.codes_used;
      mline["codes"] = num_codes;
      mline["perplexity"] = number_or_null(usage.perplexity);
      mline["lr"] = number_or_null(pr.lr);
      mline["grad_norm"] = number_or_null(interval_gn / n);
      mline["clips_per_second"] = number_or_null(pr.clips_per_second);
      mline["elapsed_seconds"] = number_or_null(pr.elapsed_seconds);
      mline["steps_averaged"] = interval_steps;
      append_line(metrics_path, mline.dump());
      interval_start = Clock::now();
      interval_wait = interval_loss = interval_cos = interval_commit = interval_gn = 0.0;
      interval_steps = interval_clips = 0;
      std::fill(interval_counts.begin(), interval_counts.end(), 0);
    }

    if (step == p.steps) {
      save(true);
      result.finished = true;
      log("finished: " + tok_path + " and " + ckpt_path + " after " +
          format_duration(elapsed_before + seconds_since(session_start)));
      break;
    }
    if (step % p.save_every == 0) save(false);
    if (p.halt_after >= 0 && session_steps >= p.halt_after) {
      result.stopped = true;
      break;
    }
    if (p.stop && p.stop->load()) {
      if (step % p.save_every != 0) save(false);
      result.stopped = true;
      log("stopped at step " + std::to_string(step) + "/" + std::to_string(p.steps) + "; checkpoint " + ckpt_path +
          " (run the same command again to resume)");
      break;
    }
  }
  result.steps_done = step;
  return result;
}

}  // namespace sonar::method
