// Dual-source self-distillation: the frozen start model and the frozen start tokenizer as teachers (see
// sonar/distill.h).
#include "sonar/distill.h"

#include <algorithm>

#include "autograd/loss.h"
#include "autograd/ops.h"
#include "tensor/creation.h"
#include "tensor/index.h"
#include "tensor/reduce.h"

namespace sonar::method {

namespace {

constexpr float kStandardiseEps = 1e-5f;  // variance floor of the mse loss's row standardisation

// The form both losses compare: rows L2-normalised (cosine) or standardised (mse). Student and teacher go
// through the same ops, so equal inputs give bit-identical outputs and the loss is exactly zero.
ag::Var normalised_rows(const ag::Var& x, const std::string& loss) {
  if (loss == "cosine") return ag::l2_normalize(x, -1);
  ag::Var centred = ag::sub(x, ag::mean(x, {-1}, true));
  ag::Var var = ag::mean(ag::mul(centred, centred), {-1}, true);
  return ag::mul(centred, ag::rsqrt(ag::add(var, kStandardiseEps)));
}

// Flat row indices b * V + j of the real visible patches (j < num_visible[b]) of a [B, V, C] encoding.
Tensor real_visible_rows(const beats::PatchMasking& m) {
  std::vector<int64_t> rows;
  for (int64_t b = 0; b < m.batch; ++b)
    for (int64_t j = 0; j < m.num_visible[b]; ++j) rows.push_back(b * m.visible + j);
  return from_vector(rows, {static_cast<int64_t>(rows.size())});
}

}  // namespace


ag::Var feature_distill_loss(const ag::Var& student, const Tensor& teacher, const std::string& loss) {
  SONAR_CHECK(student.dim() == 2 && teacher.shape() == student.shape(), "feature_distill_loss: student ",
              shape_str(student.shape()), " and teacher ", shape_str(teacher.shape()), " must both be [N, C]");
  SONAR_CHECK(student.size(0) > 0, "feature_distill_loss: no rows");
  SONAR_CHECK(loss == "cosine" || loss == "mse", "feature_distill_loss: unknown loss '", loss, "'");
  ag::Var t;
  {
    ag::NoGradGuard no_grad;
    t = ag::Var(normalised_rows(ag::Var(teacher), loss).value());
  }
  ag::Var d = ag::sub(normalised_rows(student, loss), t);
  ag::Var sq = ag::mul(d, d);
  if (loss == "cosine") return ag::mul(ag::mean(ag::sum(sq, {1})), 0.5f);  // 0.5 |a - b|^2 = 1 - cos
  return ag::mean(sq);
}

SelfDistillExtension::SelfDistillExtension(SelfDistillOptions o) : o_(std::move(o)) { validate(o_); }

nlohmann::json SelfDistillExtension::config() const {
  return {{"distill-model", o_.model_weight},
          {"distill-layers", o_.layers},
          {"distill-loss", o_.loss},
          {"distill-tokenizer", o_.tokenizer_weight}};
}

void SelfDistillExtension::prepare(Trainer& trainer) {
  trainer_ = &trainer;
  auto obj = trainer.objective();
  const int64_t blocks = obj->model->cfg.encoder_layers;
  for (int64_t l : o_.layers)
    SONAR_CHECK(l >= 1 && l <= blocks, "--distill-layers: block ", l, " does not exist (the model has ", blocks,
                " blocks)");
  if (o_.model_weight > 0) obj->layer_results = true;
  if (o_.tokenizer_weight > 0) obj->predictor->add_aux_head(trainer.tokenizer().num_codes());
}

void SelfDistillExtension::attach(Trainer& trainer) {
  trainer_ = &trainer;
  if (o_.model_weight > 0) teacher_ = trainer.start_model();
  auto pred = trainer.objective()->predictor;
  if (o_.tokenizer_weight > 0 && !trainer.resuming()) {
    // A fresh run: the auxiliary head starts as the main head, which was trained on the start tokenizer's
    // labels (a predictor reused from --init) or is freshly drawn. A resumed run has its own from the checkpoint.
    SONAR_CHECK(pred->head->out_features() == pred->aux_head->out_features(), "self-distillation: the label "
                "predictor has ", pred->head->out_features(), " classes but the start tokenizer ",
                pred->aux_head->out_features());
    pred->aux_head->weight.value().copy_(pred->head->weight.value());
    pred->aux_head->bias.value().copy_(pred->head->bias.value());
  }
}

ag::Var SelfDistillExtension::extra_loss(const StepBatch& batch, const beats::MlpOutput& out) {
  SONAR_CHECK(trainer_ != nullptr, "self-distillation: not attached to a trainer");
  ag::Var total;
  const beats::PatchMasking& m = out.visible.masking;
  if (o_.model_weight > 0) {
    const std::vector<ag::Var>& student = out.visible.layer_results;
    const int64_t blocks = static_cast<int64_t>(student.size()) - 1;
    SONAR_CHECK(blocks >= 1, "self-distillation: the objective kept no layer results");
    beats::VisibleEncoding teacher;
    {
      ag::NoGradGuard no_grad;
      teacher = beats::encode_with_masking(*teacher_, ag::Var(batch.fbank), out.visible.patch_padding, m, true);
    }
    const Tensor rows = real_visible_rows(m);
    const std::vector<int64_t> layers = o_.layers.empty() ? std::vector<int64_t>{blocks} : o_.layers;
    ag::Var sum_l;
    for (int64_t l : layers) {
      const int64_t C = student[l].size(2);
      ag::Var s = ag::index_select(ag::reshape(student[l], {m.batch * m.visible, C}), 0, rows);
      Tensor t = index_select(teacher.layer_results[l].value().contiguous().reshape({m.batch * m.visible, C}), 0, rows);
      ag::Var term = feature_distill_loss(s, t, o_.loss);
      sum_l = sum_l.defined() ? ag::add(sum_l, term) : term;
    }
    ag::Var model_loss = ag::div(sum_l, static_cast<float>(layers.size()));
    last_model_ = model_loss.value().item<double>();
    double w = o_.model_weight;
    // Data parallelism: this process's share of the global mean over real visible rows.
    if (batch.global_visible != rows.numel() && batch.global_visible > 0)
      w *= static_cast<double>(rows.numel()) / static_cast<double>(batch.global_visible);
    total = ag::mul(model_loss, static_cast<float>(w));
  }
  if (o_.tokenizer_weight > 0) {
    auto pred = trainer_->objective()->predictor;
    const Tensor targets =
        index_select(batch.start_labels.contiguous().reshape({m.batch * m.patches}), 0, m.masked_flat);
    ag::Var logits = pred->aux_logits(out.predicted);
    ag::Var tok_loss = ag::cross_entropy(logits, targets, trainer_->objective()->opts.label_smoothing);
    last_tok_ = tok_loss.value().item<double>();
    Tensor am = argmax(logits.value(), 1);
    const int64_t* a = am.data<int64_t>();
    const int64_t* t = targets.data<int64_t>();
    int64_t hits = 0;
    for (int64_t i = 0; i < targets.numel(); ++i) hits += a[i] == t[i];
    sum_acc_ += targets.numel() ? static_cast<double>(hits) / static_cast<double>(targets.numel()) : 0.0;
    double tw = o_.tokenizer_weight;
    if (batch.global_masked != targets.numel() && batch.global_masked > 0)
      tw *= static_cast<double>(targets.numel()) / static_cast<double>(batch.global_masked);
    ag::Var w = ag::mul(tok_loss, static_cast<float>(tw));
    total = total.defined() ? ag::add(total, w) : w;
  }
  sum_model_ += last_model_;
  sum_tok_ += last_tok_;
  ++n_;
  return total;
}

std::vector<std::pair<std::string, double>> SelfDistillExtension::progress() {
  std::vector<std::pair<std::string, double>> out;
  if (n_ == 0) return out;
  const double n = static_cast<double>(n_);
  if (o_.model_weight > 0) out.emplace_back("distill_model", sum_model_ / n);
  if (o_.tokenizer_weight > 0) {
    out.emplace_back("distill_tok", sum_tok_ / n);
    out.emplace_back("start_acc", sum_acc_ / n);
  }
  sum_model_ = sum_tok_ = sum_acc_ = 0.0;
  n_ = 0;
  return out;
}

}  // namespace sonar::method
