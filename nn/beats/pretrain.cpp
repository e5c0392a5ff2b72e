// BEATs pre-training objectives and the optimiser step (see nn/beats/pretrain.h).
#include "nn/beats/pretrain.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <set>
#include <unordered_map>

#include "autograd/loss.h"
#include "autograd/ops.h"
#include "tensor/creation.h"
#include "tensor/index.h"
#include "tensor/precision.h"
#include "tensor/profile.h"
#include "tensor/reduce.h"

namespace sonar::beats {

// ---- masked label prediction ----

MaskedLabelPrediction::MaskedLabelPrediction(std::shared_ptr<BeatsBackbone> m, const MlpOptions& o, Generator* gen)
    : nn::Module("MaskedLabelPrediction"), opts(o) {
  SONAR_CHECK(m != nullptr, "MaskedLabelPrediction: no model");
  model = register_module("model", std::move(m));
  predictor = register_module("predictor", std::make_shared<LabelPredictor>(model->cfg, o.predictor, gen));
  layer_results = o.layer_results;
}

std::shared_ptr<nn::Module> MaskedLabelPrediction::create_like() const {
  auto m = std::dynamic_pointer_cast<BeatsBackbone>(model->clone());
  // clone() then copies every value, so a grown output layer takes its current size in the copy.
  return std::make_shared<MaskedLabelPrediction>(m, opts);
}

VisibleEncoding encode_with_masking(BeatsBackbone& model, const ag::Var& fbank, const Tensor& patch_padding,
                                    const PatchMasking& m, bool layer_results) {
  VisibleEncoding ve;
  ag::Var patches = model.embed_patches(fbank, &ve.time_patches, &ve.freq_patches);  // [B, P, E]
  const int64_t B = patches.size(0), P = patches.size(1), E = patches.size(2);
  SONAR_CHECK(m.batch == B && m.patches == P, "encode_with_masking: the masking is for ", m.batch, " clips of ",
              m.patches, " patches, the input has ", B, " of ", P);
  ve.patch_padding = patch_padding;
  ve.masking = m;
  ag::Var vis;
  {
    profile::Scope timed("masking");
    // Gather the visible patch embeddings (E wide, before the projection: the cheapest place), in order.
    vis = ag::reshape(ag::index_select(ag::reshape(patches, {B * P, E}), 0, m.visible_flat), {B, m.visible, E});
  }
  vis = model.project(vis);  // [B, V, C]
  bool fillers = false;
  for (int64_t b = 0; b < B; ++b) fillers = fillers || m.num_visible[b] < m.visible;
  EncoderOptions eo;
  eo.layer_results = layer_results;
  EncoderOutput eout = model.encoder->forward(vis, fillers ? m.visible_padding : Tensor(), eo);
  ve.encoded = eout.x;
  ve.layer_results = std::move(eout.layer_results);
  return ve;
}

Tensor MaskedLabelPrediction::patch_padding(const ag::Var& fbank, const Tensor& frame_mask) const {
  // Patch geometry and padding from the shapes alone (no embedding).
  const int64_t p = model->cfg.input_patch_size;
  SONAR_CHECK(fbank.dim() == 3, "MaskedLabelPrediction: fbank must be [B, T, F], got ", shape_str(fbank.shape()));
  SONAR_CHECK(fbank.size(1) >= p && fbank.size(2) >= p, "BEATs: the input has ", fbank.size(1), " frames x ",
              fbank.size(2), " mel bins; a patch needs ", p, " x ", p, " (a clip needs at least ", (p - 1) * 160 + 400,
              " samples at 16 kHz)");
  if (!frame_mask.defined()) return Tensor();
  const int64_t B = fbank.size(0);
  SONAR_CHECK(frame_mask.dim() == 2 && frame_mask.size(0) == B && frame_mask.size(1) == fbank.size(1),
              "MaskedLabelPrediction: frame mask must be [B, T] = ", shape_str({B, fbank.size(1)}), ", got ",
              shape_str(frame_mask.shape()));
  return model->patch_mask_from_frames(frame_mask, fbank.size(1) / p, fbank.size(2) / p, opts.padding);
}

PatchMasking MaskedLabelPrediction::draw_masking(const ag::Var& fbank, const Tensor& pad, Generator& gen) const {
  profile::Scope timed("masking");
  const int64_t p = model->cfg.input_patch_size;
  return make_patch_masking(fbank.size(0), (fbank.size(1) / p) * (fbank.size(2) / p), pad, opts.masking, gen);
}

VisibleEncoding MaskedLabelPrediction::encode_visible(const ag::Var& fbank, const Tensor& frame_mask, Generator& gen) {
  const Tensor pad = patch_padding(fbank, frame_mask);
  return encode_with_masking(*model, fbank, pad, draw_masking(fbank, pad, gen), layer_results);
}

MlpOutput MaskedLabelPrediction::forward(const ag::Var& fbank, const Tensor& frame_mask, const Tensor& labels,
                                         Generator& gen) {
  const Tensor pad = patch_padding(fbank, frame_mask);
  return forward_masked(fbank, pad, labels, draw_masking(fbank, pad, gen));
}

MlpOutput MaskedLabelPrediction::forward_masked(const ag::Var& fbank, const Tensor& patch_padding,
                                                const Tensor& labels, const PatchMasking& masking) {
  MlpOutput out;
  out.visible = encode_with_masking(*model, fbank, patch_padding, masking, layer_results);
  const PatchMasking& m = out.visible.masking;
  SONAR_CHECK(labels.defined() && labels.dtype() == DType::Int64 && labels.shape() == (Shape{m.batch, m.patches}),
              "MaskedLabelPrediction: labels must be int64 ", shape_str({m.batch, m.patches}), ", got ",
              labels.defined() ? labels.str() : std::string("undefined"));
  out.num_masked = m.total_masked();
  SONAR_CHECK(out.num_masked > 0, "MaskedLabelPrediction: no patch of the batch is masked (mask_ratio ",
              opts.masking.mask_ratio, ", ", m.batch, " clips of ", m.patches, " patches)");
  const int64_t K = predictor->num_classes();
  out.targets = index_select(labels.contiguous().reshape({m.batch * m.patches}), 0, m.masked_flat);
  const int64_t* t = out.targets.data<int64_t>();
  for (int64_t i = 0; i < out.num_masked; ++i)
    SONAR_CHECK(t[i] >= 0 && t[i] < K, "MaskedLabelPrediction: label ", t[i], " of masked patch ",
                m.masked_flat.data<int64_t>()[i], " (flat b * P + p) outside [0, ", K, ")");

  ag::Var h = predictor->hidden(out.visible.encoded, m);
  {
    profile::Scope timed("label_predictor");
    out.predicted = LabelPredictor::masked_rows(h, m);
    out.logits = predictor->logits(out.predicted);
  }
  profile::Scope timed("loss");
  out.loss = ag::cross_entropy(out.logits, out.targets, opts.label_smoothing);

  Tensor pred = argmax(out.logits.value(), 1);
  const int64_t* pr = pred.data<int64_t>();
  int64_t hits = 0;
  for (int64_t i = 0; i < out.num_masked; ++i) hits += pr[i] == t[i];
  out.masked_accuracy = static_cast<double>(hits) / static_cast<double>(out.num_masked);
  return out;
}

// ---- tokenizer distillation ----

TokenizerDistillation::TokenizerDistillation(std::shared_ptr<BeatsTokenizer> tok, const DistillOptions& o,
                                             Generator* gen)
    : nn::Module("TokenizerDistillation"), opts(o) {
  SONAR_CHECK(tok != nullptr, "TokenizerDistillation: no tokenizer");
  SONAR_CHECK(o.commitment_weight >= 0.0f, "TokenizerDistillation: commitment_weight ", o.commitment_weight,
              " is negative");
  tokenizer = register_module("tokenizer", std::move(tok));
  estimator = register_module("estimator", std::make_shared<TokenizerEstimator>(tokenizer->cfg, o.estimator, gen));
}

std::shared_ptr<nn::Module> TokenizerDistillation::create_like() const {
  auto t = std::dynamic_pointer_cast<BeatsTokenizer>(tokenizer->clone());
  DistillOptions o = opts;
  o.estimator.target_dim = estimator->target_dim;
  return std::make_shared<TokenizerDistillation>(t, o);
}

Tensor TokenizerDistillation::teacher_features(BeatsBackbone& teacher, const Tensor& fbank, const Tensor& frame_mask,
                                               PaddingMode padding) {
  ag::NoGradGuard no_grad;
  const bool was_training = teacher.is_training();
  teacher.eval();
  FeatureOptions fo;
  fo.padding = padding;
  Tensor x;
  try {
    x = teacher.forward_fbank(ag::Var(fbank), frame_mask, fo).x.value();
  } catch (...) {
    teacher.train(was_training);
    throw;
  }
  teacher.train(was_training);
  return x;
}

DistillOutput TokenizerDistillation::forward(const ag::Var& fbank, const Tensor& frame_mask, const Tensor& teacher) {
  DistillOutput out;
  FeatureOptions fo;
  fo.padding = opts.padding;
  // The tokenizer's encoder and quantize_layer over every patch; the quantizer only over the real ones, so
  // that padding neither moves the EMA codebook nor counts as usage (BeatsTokenizer::tokenize_fbank would
  // quantise every patch, as the official code does for labels).
  Features f = tokenizer->forward_fbank(fbank, frame_mask, fo);
  ag::Var zin = tokenizer->quantize_layer->forward(f.x);  // [B, P, D]
  const int64_t B = zin.size(0), P = zin.size(1), D = zin.size(2);
  SONAR_CHECK(teacher.defined() && teacher.dim() == 3 && teacher.size(0) == B && teacher.size(1) == P &&
                  teacher.size(2) == estimator->target_dim,
              "TokenizerDistillation: teacher features must be [", B, ", ", P, ", ", estimator->target_dim, "], got ",
              teacher.defined() ? shape_str(teacher.shape()) : std::string("undefined"));
  out.patch_padding = f.padding_mask;

  // Rows of the real patches (all of them without padding).
  std::vector<int64_t> real;
  const Tensor pad_c = out.patch_padding.defined() ? out.patch_padding.contiguous() : Tensor();
  const uint8_t* pad = pad_c.defined() ? pad_c.bytes() : nullptr;
  for (int64_t i = 0; i < B * P; ++i)
    if (!pad || !pad[i]) real.push_back(i);
  out.real_patches = static_cast<int64_t>(real.size());
  SONAR_CHECK(out.real_patches > 0, "TokenizerDistillation: every patch of the batch is padding");
  const Tensor real_idx = from_vector(real, {out.real_patches});

  QuantizerOutput q = tokenizer->quantize->forward(ag::index_select(ag::reshape(zin, {B * P, D}), 0, real_idx));
  out.labels = full({B * P}, -1.0, DType::Int64);
  const int64_t* qi = q.indices.data<int64_t>();
  int64_t* lab = out.labels.data<int64_t>();
  std::set<int64_t> used;
  for (int64_t r = 0; r < out.real_patches; ++r) {
    lab[real[r]] = qi[r];
    used.insert(qi[r]);
  }
  out.labels = out.labels.reshape({B, P});
  out.codes_used = static_cast<int64_t>(used.size());

  // The estimator sees the straight-through codes at the real patches and zeros at padded ones (which the
  // encoder zeroes and masks anyway).
  Tensor src = full({B * P}, static_cast<double>(out.real_patches), DType::Int64);
  int64_t* sp = src.data<int64_t>();
  for (int64_t r = 0; r < out.real_patches; ++r) sp[real[r]] = r;
  ag::Var table = ag::cat({q.z_q, ag::Var(zeros({1, D}))}, 0);
  ag::Var quantized = ag::reshape(ag::index_select(table, 0, src), {B, P, D});
  out.estimate = estimator->forward(quantized, out.patch_padding);  // [B, P, Ct]
  const int64_t Ct = estimator->target_dim;
  ag::Var est_rows = ag::index_select(ag::reshape(out.estimate, {B * P, Ct}), 0, real_idx);
  Tensor tgt_rows = index_select(teacher.contiguous().reshape({B * P, Ct}), 0, real_idx);
  ag::Var cos = ag::cosine_similarity(est_rows, ag::Var(tgt_rows), 1);  // [R]
  out.cosine_loss = ag::rsub(1.0f, ag::mean(cos));

  // Commitment: pull the normalised encoder output towards its (constant) code.
  out.commitment = ag::mean(ag::pow(ag::sub(q.z, ag::Var(q.z_q.value())), 2.0f));
  out.loss = ag::add(out.cosine_loss, ag::mul(out.commitment, opts.commitment_weight));
  return out;
}

// ---- optimiser step ----

std::vector<ag::ParamGroup> decay_param_groups(const nn::Module& m) {
  ag::ParamGroup decay, no_decay;
  no_decay.weight_decay = 0.0f;
  for (const auto& [name, p] : m.named_parameters()) {
    if (!p.requires_grad()) continue;
    auto ends_with = [&name](const std::string& s) {
      return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    const bool vector_like = p.dim() < 2 || ends_with("mask_emb") || ends_with("grep_a") || ends_with("weight_g");
    (vector_like ? no_decay : decay).params.push_back(p);
  }
  std::vector<ag::ParamGroup> groups;
  if (!decay.params.empty()) groups.push_back(std::move(decay));
  if (!no_decay.params.empty()) groups.push_back(std::move(no_decay));
  SONAR_CHECK(!groups.empty(), "decay_param_groups: ", m.type_name(), " has no trainable parameter");
  return groups;
}

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // elements below which a parameter is handled on one thread
constexpr double kClipEps = 1e-6;          // clip_grad_norm's denominator guard (PyTorch's)
}  // namespace

// Sum of squares of one gradient, in double (one parallel reduction for a large one).
static double square_sum(const Tensor& grad) {
  const Tensor g = grad.contiguous();
  const float* gp = g.data<float>();
  const int64_t n = g.numel();
  double s = 0.0;
#pragma omp parallel for simd reduction(+ : s) if (n > kParallelMin)
  for (int64_t k = 0; k < n; ++k) s += static_cast<double>(gp[k]) * gp[k];
  return s;
}

double ClippedAdamW::grad_norm() const { return grad_norm({}); }

double ClippedAdamW::grad_norm(const std::vector<double>& known) const {
  double sq = 0.0;
  for (size_t i = 0; i < flat_.size(); ++i) {
    const Tensor& g = flat_[i].param.grad();
    if (!g.defined()) continue;
    sq += i < known.size() && !std::isnan(known[i]) ? known[i] : square_sum(g);
  }
  return std::sqrt(sq);
}

ag::LeafGradReadyFn ClippedAdamW::square_sums_hook(std::vector<double>& sums) const {
  sums.assign(flat_.size(), std::numeric_limits<double>::quiet_NaN());
  std::unordered_map<const ag::VarImpl*, size_t> index;
  for (size_t i = 0; i < flat_.size(); ++i) index.emplace(flat_[i].param.impl().get(), i);
  return [&sums, index = std::move(index)](ag::VarImpl& leaf) {
    auto it = index.find(&leaf);
    if (it != index.end() && leaf.grad.defined()) sums[it->second] = square_sum(leaf.grad);
  };
}

void ClippedAdamW::step_scaled(float grad_scale) {
  SONAR_CHECK(std::isfinite(grad_scale) && grad_scale > 0.0f, "ClippedAdamW: gradient scale ", grad_scale,
              " must be positive and finite");
  // Validate every parameter first, so that a bad one leaves the whole model untouched.
  for (size_t i = 0; i < flat_.size(); ++i) {
    if (!flat_[i].param.grad().defined()) continue;
    checked_grad(i);
    for (const char* name : {"exp_avg", "exp_avg_sq"}) {
      auto it = buffers_[i].find(name);
      SONAR_CHECK(it == buffers_[i].end() || it->second.shape() == flat_[i].param.shape(), "ClippedAdamW: ", name,
                  " of parameter ", i, " is ", shape_str(it->second.shape()), " but the parameter is ",
                  shape_str(flat_[i].param.shape()), " (call grow_optimizer_state after growing a layer)");
    }
  }
  const ag::AdamWOptions& o = options();
  for (size_t i = 0; i < flat_.size(); ++i) {
    Slot& s = flat_[i];
    if (!s.param.grad().defined()) continue;
    const Tensor g = checked_grad(i);
    Tensor& pv = s.param.value();
    auto& buf = buffers_[i];
    if (buf.find("exp_avg") == buf.end()) buf["exp_avg"] = zeros(pv.shape());
    if (buf.find("exp_avg_sq") == buf.end()) buf["exp_avg_sq"] = zeros(pv.shape());
    const int64_t t = ++steps_[i];
    // The arithmetic of ag::AdamW::step, on g * grad_scale.
    const double bc1 = 1.0 - std::pow(static_cast<double>(o.beta1), static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(static_cast<double>(o.beta2), static_cast<double>(t));
    const double lr = static_cast<double>(this->lr()) * s.lr_scale;
    const float decay = static_cast<float>(1.0 - lr * s.weight_decay);
    const float step_size = static_cast<float>(lr / bc1);
    const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
    const float fb1 = o.beta1, fb2 = o.beta2, eps = o.eps, c = grad_scale;
    const bool scaled = grad_scale != 1.0f;
    const int64_t n = pv.numel();
    float* p = pv.data<float>();
    float* m = buf["exp_avg"].data<float>();
    float* v = buf["exp_avg_sq"].data<float>();
    const float* gp = g.data<float>();
#pragma omp parallel for simd if (n > kParallelMin)
    for (int64_t k = 0; k < n; ++k) {
      const float gk = scaled ? gp[k] * c : gp[k];
      p[k] *= decay;
      m[k] = fb1 * m[k] + (1.0f - fb1) * gk;
      v[k] = fb2 * v[k] + (1.0f - fb2) * gk * gk;
      p[k] -= step_size * m[k] / (std::sqrt(v[k]) * inv_sqrt_bc2 + eps);
    }
  }
}

TrainStep::TrainStep(const nn::Module& m, const TrainStepOptions& o) : opts_(o) {
  opt_ = std::make_unique<ClippedAdamW>(decay_param_groups(m), o.adamw);
  for (const ag::ParamGroup& g : opt_->param_groups())
    for (const ag::Var& p : g.params) params_.push_back(p);
  if (o.schedule) schedule_.emplace(*o.schedule);
}

StepStats TrainStep::run(const std::function<ag::Var()>& forward_loss, const std::function<void()>& after_backward) {
  StepStats s;
  s.step = step_;
  {
    profile::PhaseScope phase("optimizer");  // tensor/profile.h
    profile::Scope timed("zero_grad");
    opt_->zero_grad();
  }
  // bf16 products: the weights are converted once for this step's forward and backward (they only change in
  // the optimiser update below, after the cache is gone).
  std::optional<Bf16WeightCache> bf16_weights;
  if (matmul_precision() == Precision::BF16) {
    std::vector<Tensor> values;
    for (const ag::Var& p : params_) values.push_back(p.value());
    bf16_weights.emplace(values);
  }
  ag::Var loss = forward_loss();
  SONAR_CHECK(loss.defined() && loss.numel() == 1, "TrainStep: the loss must be a scalar, got ",
              loss.defined() ? shape_str(loss.shape()) : std::string("undefined"));
  s.loss = loss.value().item_double();
  SONAR_CHECK(std::isfinite(s.loss), "TrainStep: loss is ", s.loss, " at step ", step_);
  // The gradient norm's sums of squares are taken as the backward finishes each gradient (still in cache),
  // unless after_backward may change the gradients (a data-parallel sum) or someone else listens already;
  // the result is the same bits either way (TrainStep tests).
  std::vector<double> square_sums;
  {
    std::optional<ag::LeafGradReadyScope> measure;
    if (!after_backward && !ag::leaf_grad_ready_active()) measure.emplace(opt_->square_sums_hook(square_sums));
    loss.backward();
  }
  bf16_weights.reset();
  if (after_backward) after_backward();
  profile::PhaseScope phase("optimizer");
  {
    profile::Scope timed("grad_norm");
    s.grad_norm = opt_->grad_norm(square_sums);
  }
  SONAR_CHECK(std::isfinite(s.grad_norm), "TrainStep: gradient norm is ", s.grad_norm, " at step ", step_);
  // clip_grad_norm's rule: scale by max_norm / (norm + 1e-6) when that is below 1.
  double coef = 1.0;
  if (opts_.max_grad_norm > 0.0f) coef = std::min(1.0, static_cast<double>(opts_.max_grad_norm) / (s.grad_norm + kClipEps));
  if (schedule_) opt_->set_lr(static_cast<float>(schedule_->lr_at(step_)));
  s.lr = opt_->lr();
  profile::Scope timed("adamw");
  opt_->step_scaled(static_cast<float>(coef));
  ++step_;
  return s;
}

}  // namespace sonar::beats
