// Linear-probe evaluation: metrics, pooled clip features, the logistic-regression classifier and the split
// logic (see sonar/probe.h).
#include "sonar/probe.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <numeric>
#include <set>
#include <tuple>

#include "audio/loader.h"
#include "autograd/loss.h"
#include "autograd/ops.h"
#include "autograd/optim.h"
#include "nn/beats/checkpoint.h"
#include "sonar/trainer.h"
#include "tensor/creation.h"
#include "tensor/io.h"
#include "tensor/index.h"
#include "tensor/random.h"
#include "tensor/reduce.h"

namespace sonar::method {

namespace fs = std::filesystem;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr float kStdFloor = 1e-6f;  // features constant over the training set are centred, not scaled up
constexpr double kFeatureReportSeconds = 10.0;  // a progress line at most this often while extracting features

}  // namespace

// ---- metrics ----

double accuracy(const std::vector<int64_t>& truth, const std::vector<int64_t>& pred) {
  SONAR_CHECK(truth.size() == pred.size(), "accuracy: ", truth.size(), " true labels but ", pred.size(), " predictions");
  if (truth.empty()) return kNaN;
  int64_t hits = 0;
  for (size_t i = 0; i < truth.size(); ++i) hits += truth[i] == pred[i];
  return static_cast<double>(hits) / static_cast<double>(truth.size());
}

std::vector<double> class_f1(const std::vector<int64_t>& truth, const std::vector<int64_t>& pred, int64_t K) {
  SONAR_CHECK(truth.size() == pred.size(), "macro_f1: ", truth.size(), " true labels but ", pred.size(), " predictions");
  SONAR_CHECK(K > 0, "macro_f1: num_classes must be positive, got ", K);
  std::vector<int64_t> tp(K, 0), fp(K, 0), fn(K, 0);
  for (size_t i = 0; i < truth.size(); ++i) {
    const int64_t t = truth[i], p = pred[i];
    SONAR_CHECK(t >= 0 && t < K && p >= 0 && p < K, "macro_f1: label ", t, " or prediction ", p, " outside [0, ", K, ")");
    if (t == p) {
      ++tp[t];
    } else {
      ++fp[p];
      ++fn[t];
    }
  }
  std::vector<double> f1(K, kNaN);
  for (int64_t c = 0; c < K; ++c) {
    const int64_t denom = 2 * tp[c] + fp[c] + fn[c];
    if (denom > 0) f1[c] = 2.0 * static_cast<double>(tp[c]) / static_cast<double>(denom);  // else never seen
  }
  return f1;
}

namespace {
// Mean of the finite values (NaN when there is none); `used` receives their number.
double finite_mean(const std::vector<double>& v, int64_t* used = nullptr) {
  double sum = 0.0;
  int64_t n = 0;
  for (double x : v)
    if (!std::isnan(x)) {
      sum += x;
      ++n;
    }
  if (used) *used = n;
  return n > 0 ? sum / static_cast<double>(n) : kNaN;
}
}  // namespace

double macro_f1(const std::vector<int64_t>& truth, const std::vector<int64_t>& pred, int64_t K) {
  const std::vector<double> f1 = class_f1(truth, pred, K);
  return truth.empty() ? kNaN : finite_mean(f1);
}

double average_precision(const std::vector<double>& scores, const std::vector<uint8_t>& positive) {
  SONAR_CHECK(scores.size() == positive.size(), "average_precision: ", scores.size(), " scores but ", positive.size(),
              " targets");
  const int64_t n = static_cast<int64_t>(scores.size());
  int64_t total_pos = 0;
  for (uint8_t p : positive) total_pos += p != 0;
  if (total_pos == 0) return kNaN;
  for (double s : scores) SONAR_CHECK(!std::isnan(s), "average_precision: a score is NaN");
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  double ap = 0.0, prev_recall = 0.0;
  int64_t tp = 0, seen = 0;
  for (int64_t i = 0; i < n;) {
    int64_t j = i;
    while (j < n && scores[order[j]] == scores[order[i]]) {  // one threshold for a run of tied scores
      tp += positive[order[j]] != 0;
      ++j;
    }
    seen = j;
    const double recall = static_cast<double>(tp) / static_cast<double>(total_pos);
    const double precision = static_cast<double>(tp) / static_cast<double>(seen);
    ap += (recall - prev_recall) * precision;
    prev_recall = recall;
    i = j;
  }
  return ap;
}

std::vector<double> class_average_precision(const Tensor& scores, const Tensor& targets) {
  SONAR_CHECK(scores.defined() && targets.defined() && scores.dim() == 2 && targets.shape() == scores.shape(),
              "mean_average_precision: scores and targets must both be [N, K], got ",
              scores.defined() ? shape_str(scores.shape()) : "undefined", " and ",
              targets.defined() ? shape_str(targets.shape()) : "undefined");
  const int64_t N = scores.size(0), K = scores.size(1);
  const Tensor s = scores.to(DType::Float32).contiguous(), t = targets.to(DType::Float32).contiguous();
  const float* sp = s.data<float>();
  const float* tp = t.data<float>();
  std::vector<double> aps(K);
  for (int64_t k = 0; k < K; ++k) {
    std::vector<double> sc(N);
    std::vector<uint8_t> pos(N);
    for (int64_t i = 0; i < N; ++i) {
      sc[i] = sp[i * K + k];
      pos[i] = tp[i * K + k] != 0.0f;
    }
    aps[k] = average_precision(sc, pos);
  }
  return aps;
}

double mean_average_precision(const Tensor& scores, const Tensor& targets, int64_t* classes_used) {
  return finite_mean(class_average_precision(scores, targets), classes_used);
}

// ---- features ----

std::vector<std::vector<float>> mean_pooled_features(beats::BeatsBackbone& model, const audio::Batch& batch,
                                                     int64_t num_layers, std::vector<int64_t>* real_patches) {
  beats::FeatureOptions fo;
  fo.padding = beats::PaddingMode::Exact;
  fo.num_layers = num_layers;
  beats::Features f = model.forward_fbank(ag::Var(batch.fbank), batch.frame_mask, fo);
  const Tensor x = f.x.value().contiguous();  // [B, P, C]
  const int64_t B = x.size(0), P = x.size(1), C = x.size(2);
  const Tensor pad = f.padding_mask.defined() ? f.padding_mask.contiguous() : Tensor();
  const uint8_t* pm = pad.defined() ? pad.bytes() : nullptr;
  const float* xp = x.data<float>();
  std::vector<std::vector<float>> rows(B, std::vector<float>(C, 0.0f));
  real_patches->assign(B, 0);
  for (int64_t i = 0; i < B; ++i) {
    std::vector<double> acc(C, 0.0);
    int64_t real = 0;
    for (int64_t p = 0; p < P; ++p) {
      if (pm && pm[i * P + p]) continue;
      ++real;
      const float* row = xp + (i * P + p) * C;
      for (int64_t c = 0; c < C; ++c) acc[c] += row[c];
    }
    (*real_patches)[i] = real;
    if (real == 0) continue;
    for (int64_t c = 0; c < C; ++c) rows[i][c] = static_cast<float>(acc[c] / static_cast<double>(real));
  }
  return rows;
}

Tensor clip_features(beats::BeatsBackbone& model, const audio::Dataset& ds, const ProbeFeatureOptions& o,
                     const std::function<void(int64_t, int64_t)>& progress, FeatureSkips* skipped) {
  const int64_t L = model.cfg.encoder_layers;
  SONAR_CHECK(o.layer >= 0 && o.layer <= L, "layer ", o.layer, " outside [0, ", L, "] (0 = the last block)");
  SONAR_CHECK(ds.size() > 0, "clip_features: ", ds.origin, " has no clips");
  SONAR_CHECK(o.max_seconds > 0, "clip_features: max_seconds must be positive, got ", o.max_seconds);
  FeatureSkips local;
  FeatureSkips& sk = skipped ? *skipped : local;
  sk = FeatureSkips();
  audio::LoaderOptions lo;
  lo.batch_size = std::max<int64_t>(1, o.batch_size);
  lo.crop = audio::CropMode::Full;
  lo.clip_seconds = o.max_seconds;
  lo.shuffle = false;
  lo.strict = false;  // a bad clip is recorded and the others still computed
  lo.num_workers = o.workers;
  lo.keep_waveforms = false;
  lo.cache_dir = o.cache_dir;
  // lo.min_seconds stays at one fbank frame: shorter clips are padded to one patch below.
  std::mutex bad_mutex;
  lo.on_bad_file = [&](const std::string& path, const std::string& reason) {
    std::lock_guard<std::mutex> lock(bad_mutex);
    sk.reasons.emplace_back(path, reason);
  };
  audio::DataLoader loader(ds, lo);

  const int64_t N = ds.size(), C = model.cfg.encoder_embed_dim, patch = model.cfg.input_patch_size;
  Tensor feats = zeros({N, C});
  float* out = feats.data<float>();
  std::vector<uint8_t> seen(static_cast<size_t>(N), 0);
  const bool was_training = model.is_training();
  model.eval();
  ag::NoGradGuard no_grad;
  int64_t done = 0;
  try {
    while (auto b = loader.next()) {
      // Clips with fewer real frames than one patch: extend the batch to at least one patch of frames and mark
      // the first `patch` frames of such a clip as real (the frames past its end are zeros, the normalised
      // mean level), so exact padding keeps that one patch.
      Tensor fbank = b->fbank, mask = b->frame_mask;
      const int64_t B = fbank.size(0), T = fbank.size(1), F = fbank.size(2);
      std::vector<int64_t> real_frames(static_cast<size_t>(B), T);
      if (mask.defined()) {
        const Tensor mc = mask.contiguous();
        const uint8_t* mp = mc.bytes();
        for (int64_t i = 0; i < B; ++i) {
          int64_t r = 0;
          for (int64_t t = 0; t < T; ++t) r += mp[i * T + t] ? 0 : 1;
          real_frames[i] = r;
        }
      }
      bool any_short = false;
      for (int64_t r : real_frames) any_short = any_short || r < patch;
      if (any_short) {
        const int64_t T2 = std::max(T, patch);
        Tensor f2 = zeros({B, T2, F});
        Tensor m2 = zeros({B, T2}, DType::Bool);
        const Tensor fc = fbank.contiguous();
        const Tensor mc = mask.defined() ? mask.contiguous() : Tensor();
        for (int64_t i = 0; i < B; ++i) {
          std::copy(fc.data<float>() + i * T * F, fc.data<float>() + (i + 1) * T * F, f2.data<float>() + i * T2 * F);
          uint8_t* mrow = m2.bytes() + i * T2;
          if (real_frames[i] >= patch) {  // unchanged; the added frames are padding
            for (int64_t t = 0; t < T2; ++t) mrow[t] = t < T ? (mc.defined() ? mc.bytes()[i * T + t] : 0) : 1;
          } else {  // one real patch
            for (int64_t t = 0; t < T2; ++t) mrow[t] = t < patch ? 0 : 1;
            ++sk.padded;
          }
        }
        fbank = f2;
        mask = m2;
      }
      audio::Batch padded = *b;
      padded.fbank = fbank;
      padded.frame_mask = mask;
      std::vector<int64_t> real;
      const std::vector<std::vector<float>> rows = mean_pooled_features(model, padded, o.layer, &real);
      for (int64_t i = 0; i < B; ++i) {
        SONAR_CHECK(real[i] > 0, b->paths[i], ": no unpadded patch to pool");
        std::copy(rows[i].begin(), rows[i].end(), out + b->indices[i] * C);
        seen[static_cast<size_t>(b->indices[i])] = 1;
      }
      done += B;
      if (progress) progress(done, N);
    }
  } catch (...) {
    model.train(was_training);
    throw;
  }
  model.train(was_training);
  for (int64_t i = 0; i < N; ++i)
    if (!seen[static_cast<size_t>(i)]) sk.items.push_back(i);
  SONAR_CHECK(static_cast<int64_t>(sk.items.size()) == static_cast<int64_t>(sk.reasons.size()), "clip_features: ",
              N - done, " of ", N, " clips are missing but ", sk.reasons.size(), " were reported bad");
  if (!skipped && !sk.items.empty()) {
    std::string first;
    for (size_t k = 0; k < std::min<size_t>(3, sk.reasons.size()); ++k)
      first += (k ? "; " : "") + sk.reasons[k].first + ": " + sk.reasons[k].second;
    SONAR_FAIL(ds.origin, ": ", sk.items.size(), " of ", N, " clips cannot be used (", first,
               sk.reasons.size() > 3 ? "; ..." : "", ")");
  }
  return feats;
}

// ---- the classifier ----

namespace {

// (x - mean) * inv_std per column; x float32 [N, C].
Tensor standardise(const Tensor& x, const Tensor& mean, const Tensor& inv_std) {
  const int64_t N = x.size(0), C = x.size(1);
  Tensor z = Tensor::empty({N, C});
  const Tensor xc = x.contiguous();
  const float *xp = xc.data<float>(), *mp = mean.data<float>(), *sp = inv_std.data<float>();
  float* zp = z.data<float>();
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < C; ++c) zp[i * C + c] = (xp[i * C + c] - mp[c]) * sp[c];
  return z;
}

}  // namespace

Tensor LinearProbe::logits(const Tensor& x) const {
  SONAR_CHECK(x.defined() && x.dim() == 2 && x.dtype() == DType::Float32 && x.size(1) == mean.size(0),
              "LinearProbe: features must be float32 [N, ", mean.size(0), "], got ",
              x.defined() ? x.str() : std::string("undefined"));
  ag::NoGradGuard no_grad;
  return ag::linear(ag::Var(standardise(x, mean, inv_std)), ag::Var(weight), ag::Var(bias)).value();
}

namespace {

ag::Var probe_loss(const ag::Var& logits, const Tensor& y, bool multi_label) {
  return multi_label ? ag::binary_cross_entropy_with_logits(logits, y) : ag::cross_entropy(logits, y);
}

void check_targets(const Tensor& x, const Tensor& y, int64_t K, bool multi_label, const char* what) {
  SONAR_CHECK(x.defined() && x.dim() == 2 && x.dtype() == DType::Float32, "linear probe: ", what,
              " features must be float32 [N, C], got ", x.defined() ? x.str() : std::string("undefined"));
  if (x.size(0) == 0) return;
  if (multi_label) {
    SONAR_CHECK(y.defined() && y.dtype() == DType::Float32 && y.shape() == (Shape{x.size(0), K}), "linear probe: ",
                what, " targets must be float32 ", shape_str({x.size(0), K}), ", got ",
                y.defined() ? y.str() : std::string("undefined"));
  } else {
    SONAR_CHECK(y.defined() && y.dtype() == DType::Int64 && y.shape() == (Shape{x.size(0)}), "linear probe: ", what,
                " labels must be int64 ", shape_str({x.size(0)}), ", got ", y.defined() ? y.str() : std::string("undefined"));
    const Tensor yc = y.contiguous();
    const int64_t* yp = yc.data<int64_t>();
    for (int64_t i = 0; i < y.size(0); ++i)
      SONAR_CHECK(yp[i] >= 0 && yp[i] < K, "linear probe: ", what, " label ", yp[i], " outside [0, ", K, ")");
  }
}

}  // namespace

LinearProbe train_linear_probe(const Tensor& x_train, const Tensor& y_train, const Tensor& x_val, const Tensor& y_val,
                               int64_t K, bool multi_label, const LinearProbeOptions& o) {
  SONAR_CHECK(K >= (multi_label ? 1 : 2), "linear probe: ", K, " classes is too few");
  check_targets(x_train, y_train, K, multi_label, "training");
  SONAR_CHECK(x_train.size(0) > 0, "linear probe: no training items");
  const bool has_val = x_val.defined() && x_val.size(0) > 0;
  if (has_val) {
    check_targets(x_val, y_val, K, multi_label, "validation");
    SONAR_CHECK(x_val.size(1) == x_train.size(1), "linear probe: validation features are ", x_val.size(1),
                " wide, training features ", x_train.size(1));
  }
  SONAR_CHECK(o.epochs > 0 && o.batch_size > 0 && o.patience > 0 && o.lr > 0, "linear probe: epochs (", o.epochs,
              "), batch size (", o.batch_size, "), patience (", o.patience, ") and lr (", o.lr, ") must be positive");
  const int64_t N = x_train.size(0), C = x_train.size(1);

  LinearProbe pr;
  pr.multi_label = multi_label;
  {  // standardisation from the training features, in double
    const Tensor xc = x_train.contiguous();
    const float* xp = xc.data<float>();
    std::vector<double> m(C, 0.0), v(C, 0.0);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < C; ++c) m[c] += xp[i * C + c];
    for (int64_t c = 0; c < C; ++c) m[c] /= static_cast<double>(N);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < C; ++c) v[c] += (xp[i * C + c] - m[c]) * (xp[i * C + c] - m[c]);
    pr.mean = Tensor::empty({C});
    pr.inv_std = Tensor::empty({C});
    for (int64_t c = 0; c < C; ++c) {
      pr.mean.data<float>()[c] = static_cast<float>(m[c]);
      pr.inv_std.data<float>()[c] = 1.0f / std::max(kStdFloor, static_cast<float>(std::sqrt(v[c] / N)));
    }
  }
  const Tensor ztr = standardise(x_train, pr.mean, pr.inv_std);
  const Tensor zva = has_val ? standardise(x_val, pr.mean, pr.inv_std) : Tensor();

  ag::Var W(Tensor::empty({K, C}), true), b(Tensor::empty({K}), true);
  W.value().zero_();
  b.value().zero_();
  ag::AdamWOptions ao;
  ao.lr = o.lr;
  ao.weight_decay = o.weight_decay;
  ag::AdamW opt({ag::ParamGroup({W}), ag::ParamGroup({b}, 1.0f, 0.0f)}, ao);

  auto val_loss = [&]() {
    ag::NoGradGuard ng;
    return probe_loss(ag::linear(ag::Var(zva), W, b), y_val, multi_label).value().item_double();
  };
  // The best epoch is chosen among the trained ones (epoch 1 on): the all-zero start predicts nothing.
  pr.best_val_loss = has_val ? std::numeric_limits<double>::infinity() : kNaN;

  const uint64_t order_seed = random_bits(o.seed, 0x50524f42ULL);  // "PROB"
  for (int64_t epoch = 1; epoch <= o.epochs; ++epoch) {
    const std::vector<int64_t> order = audio::shuffled_indices(N, random_bits(order_seed, static_cast<uint64_t>(epoch)));
    for (int64_t s = 0; s < N; s += o.batch_size) {
      const int64_t e = std::min(N, s + o.batch_size);
      Tensor idx = from_vector(std::vector<int64_t>(order.begin() + s, order.begin() + e), {e - s});
      Tensor xb = index_select(ztr, 0, idx);
      Tensor yb = index_select(y_train, 0, idx);
      opt.zero_grad();
      ag::Var loss = probe_loss(ag::linear(ag::Var(xb), W, b), yb, multi_label);
      SONAR_CHECK(std::isfinite(loss.value().item_double()), "linear probe: the loss is not finite at epoch ", epoch);
      loss.backward();
      opt.step();
    }
    pr.epochs_run = epoch;
    if (!has_val) {
      pr.best_epoch = epoch;
      continue;
    }
    const double vl = val_loss();
    if (vl < pr.best_val_loss || pr.best_epoch == 0) {
      pr.best_val_loss = vl;
      pr.best_epoch = epoch;
      pr.weight = W.value().clone();
      pr.bias = b.value().clone();
    } else if (epoch - pr.best_epoch >= o.patience) {
      break;
    }
  }
  if (!has_val) {
    pr.weight = W.value().clone();
    pr.bias = b.value().clone();
  }
  return pr;
}

SplitMetrics evaluate_probe(const LinearProbe& probe, const Tensor& x, const Tensor& y, int64_t K) {
  SplitMetrics m;
  m.n = x.defined() ? x.size(0) : 0;
  m.loss = m.accuracy = m.macro_f1 = m.mAP = kNaN;
  if (m.n == 0) return m;
  check_targets(x, y, K, probe.multi_label, "evaluation");
  const Tensor logits = probe.logits(x);
  {
    ag::NoGradGuard ng;
    m.loss = probe_loss(ag::Var(logits), y, probe.multi_label).value().item_double();
  }
  if (probe.multi_label) {
    m.class_scores = class_average_precision(logits, y);
    m.mAP = finite_mean(m.class_scores);
  } else {
    const std::vector<int64_t> pred = argmax(logits, 1).to_vector<int64_t>();
    const std::vector<int64_t> truth = y.contiguous().to_vector<int64_t>();
    m.accuracy = accuracy(truth, pred);
    m.class_scores = class_f1(truth, pred, K);
    m.macro_f1 = finite_mean(m.class_scores);
  }
  return m;
}

// ---- the whole evaluation ----

namespace {

std::string canonical_split(const std::string& s) {
  std::string l;
  for (char c : s) l += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (l == "valid" || l == "validation" || l == "dev" || l == "val") return "val";
  if (l == "eval" || l == "evaluation" || l == "test") return "test";
  if (l == "train" || l == "training") return "train";
  return s;
}

bool is_integer(const std::string& s) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(s[i])) && !(i == 0 && s[i] == '-' && s.size() > 1)) return false;
  return true;
}

}  // namespace

// Dealing each class's groups round-robin gives every fold a share of every class with at least K groups.
std::vector<std::string> probe_group_folds(const audio::Dataset& ds, int64_t K, uint64_t seed) {
  SONAR_CHECK(K >= 2, "group folds must be at least 2, got ", K);
  const std::vector<std::vector<int64_t>> units = audio::group_units(ds);
  std::map<std::string, std::vector<size_t>> by_class;  // class name -> its units, in order
  for (size_t u = 0; u < units.size(); ++u) {
    const auto& labels = ds.items[units[u].front()].labels;
    by_class[labels.empty() ? std::string() : labels.front()].push_back(u);
  }
  std::vector<std::string> fold(ds.size());
  int64_t next = 0;
  for (const auto& [cls, members] : by_class) {
    const uint64_t class_seed = random_bits(seed, std::hash<std::string>{}(cls));
    for (int64_t m : audio::shuffled_indices(static_cast<int64_t>(members.size()), class_seed)) {
      const std::string f = std::to_string(next % K + 1);
      for (int64_t i : units[members[m]]) fold[i] = f;
      ++next;
    }
  }
  return fold;
}

namespace {

// A seeded, group-aware hold-out of about `fraction` of `items` (indices into ds): items sharing a non-empty
// group stay on one side. Returns {kept, held_out}, each ascending.
std::pair<std::vector<int64_t>, std::vector<int64_t>> hold_out(const audio::Dataset& ds,
                                                               const std::vector<int64_t>& items, double fraction,
                                                               uint64_t seed) {
  const std::vector<std::vector<int64_t>> units = audio::group_units(ds, items);
  const int64_t target = static_cast<int64_t>(std::llround(fraction * static_cast<double>(items.size())));
  std::vector<int64_t> kept, held;
  for (int64_t u : audio::shuffled_indices(static_cast<int64_t>(units.size()), seed)) {
    auto& dst = static_cast<int64_t>(held.size()) < target ? held : kept;
    dst.insert(dst.end(), units[u].begin(), units[u].end());
  }
  std::sort(kept.begin(), kept.end());
  std::sort(held.begin(), held.end());
  return {kept, held};
}

Tensor rows(const Tensor& t, const std::vector<int64_t>& idx) {
  if (idx.empty()) {
    Shape s = t.shape();
    s[0] = 0;
    return Tensor::empty(s, t.dtype());
  }
  return index_select(t, 0, from_vector(idx, {static_cast<int64_t>(idx.size())}));
}

nlohmann::json metrics_json(const SplitMetrics& m, bool multi) {
  nlohmann::json j;
  j["n"] = m.n;
  j["loss"] = m.loss;
  if (multi) {
    j["mAP"] = m.mAP;
  } else {
    j["accuracy"] = m.accuracy;
    j["macro_f1"] = m.macro_f1;
  }
  return j;
}

std::string metrics_line(const SplitMetrics& m, bool multi) {
  char buf[160];
  if (multi) {
    std::snprintf(buf, sizeof buf, "mAP %.4f (%lld clips)", m.mAP, static_cast<long long>(m.n));
  } else {
    std::snprintf(buf, sizeof buf, "accuracy %.4f | macro-F1 %.4f (%lld clips)", m.accuracy, m.macro_f1,
                  static_cast<long long>(m.n));
  }
  return buf;
}

// Means over folds; a class's score is the mean over the folds where it has one.
SplitMetrics mean_metrics(const std::vector<SplitMetrics>& ms) {
  SplitMetrics r;
  std::vector<double> loss, acc, f1, map;
  size_t classes = 0;
  for (const auto& m : ms) {
    r.n += m.n;
    loss.push_back(m.loss);
    acc.push_back(m.accuracy);
    f1.push_back(m.macro_f1);
    map.push_back(m.mAP);
    classes = std::max(classes, m.class_scores.size());
  }
  r.loss = finite_mean(loss);
  r.accuracy = finite_mean(acc);
  r.macro_f1 = finite_mean(f1);
  r.mAP = finite_mean(map);
  r.class_scores.assign(classes, kNaN);
  for (size_t c = 0; c < classes; ++c) {
    std::vector<double> v;
    for (const auto& m : ms)
      if (c < m.class_scores.size()) v.push_back(m.class_scores[c]);
    r.class_scores[c] = finite_mean(v);
  }
  return r;
}

// {class: score} (null where the class has none): F1 or AP per class.
nlohmann::json class_scores_json(const std::vector<double>& scores, const std::vector<std::string>& classes) {
  nlohmann::json j = nlohmann::json::object();
  for (size_t c = 0; c < scores.size() && c < classes.size(); ++c)
    j[classes[c]] = std::isnan(scores[c]) ? nlohmann::json(nullptr) : nlohmann::json(scores[c]);
  return j;
}

}  // namespace

nlohmann::json ProbeReport::to_json() const {
  nlohmann::json j;
  j["checkpoint"] = checkpoint;
  j["data"] = data;
  j["task"] = multi_label ? "multi-label" : "single-label";
  j["classes"] = classes;
  j["layer"] = layer;
  if (group_folds > 0) j["group_folds"] = group_folds;
  j["blocks"] = blocks;
  j["feature_dim"] = feature_dim;
  j["dropped_unlabelled"] = dropped;
  j["padded_short_clips"] = padded;
  nlohmann::json sk = nlohmann::json::array();
  for (const auto& [path, reason] : skipped) sk.push_back({{"path", path}, {"reason", reason}});
  j["skipped_clips"] = sk;
  if (multi_label) {
    j["test_mAP"] = test.mAP;
    j["val_mAP"] = val.mAP;
  } else {
    j["test_accuracy"] = test.accuracy;
    j["test_macro_f1"] = test.macro_f1;
    j["val_accuracy"] = val.accuracy;
    j["val_macro_f1"] = val.macro_f1;
  }
  j[multi_label ? "test_class_AP" : "test_class_F1"] = class_scores_json(test.class_scores, classes);
  j["test_loss"] = test.loss;
  j["test_clips"] = test.n;
  nlohmann::json fl = nlohmann::json::array();
  for (const auto& f : folds) {
    nlohmann::json o;
    o["test_split"] = f.test_split;
    o["train_clips"] = f.train;
    o["val_clips"] = f.val;
    o["test_clips"] = f.test;
    o["best_epoch"] = f.best_epoch;
    o["epochs_run"] = f.epochs_run;
    o["val"] = metrics_json(f.val_metrics, multi_label);
    o["test"] = metrics_json(f.test_metrics, multi_label);
    fl.push_back(o);
  }
  j["folds"] = fl;
  j["feature_seconds"] = feature_seconds;
  return j;
}

ProbeReport run_probe(const ProbeOptions& o) {
  auto log = o.log ? o.log : [](const std::string& s) {
    std::printf("%s\n", s.c_str());
    std::fflush(stdout);
  };
  SONAR_CHECK(!o.data.empty(), "no labelled data given (--data)");
  SONAR_CHECK(o.checkpoint.empty() != o.preset.empty(), "give either a checkpoint or a preset (not both)");
  SONAR_CHECK(o.task == "auto" || o.task == "single" || o.task == "multi", "task must be auto, single or multi, got '",
              o.task, "'");
  SONAR_CHECK(o.val_fraction >= 0 && o.val_fraction < 1, "the validation fraction must be in [0, 1), got ",
              o.val_fraction);

  // ---- labels and splits (checked before the model runs) ----
  audio::Dataset ds = audio::read_source(o.data);
  SONAR_CHECK(ds.size() > 0, o.data, ": no clips");
  SONAR_CHECK(ds.num_classes() > 0, o.data, ": no labels (a linear probe needs a labelled manifest)");
  SONAR_CHECK(!(o.task == "single" && ds.multi_label()), o.data,
              ": some clips have several labels; use the multi-label task");
  ProbeReport rep;
  rep.checkpoint = o.checkpoint.empty() ? "preset:" + o.preset : o.checkpoint;
  rep.data = o.data;
  rep.group_folds = o.group_folds;
  rep.multi_label = o.task == "multi" || (o.task == "auto" && ds.multi_label());
  rep.classes = ds.classes;
  const int64_t K = ds.num_classes();
  if (!rep.multi_label) {
    SONAR_CHECK(K >= 2, o.data, ": a single-label task needs at least 2 classes, found ", K);
    std::vector<int64_t> keep;
    for (int64_t i = 0; i < ds.size(); ++i)
      if (ds.label_index(i) >= 0) keep.push_back(i);
    rep.dropped = ds.size() - static_cast<int64_t>(keep.size());
    ds = ds.subset(keep);
    SONAR_CHECK(ds.size() > 0, o.data, ": no clip has a label");
  }
  std::vector<std::string> split(ds.size());
  std::set<std::string> values;
  for (int64_t i = 0; i < ds.size(); ++i) {
    split[i] = canonical_split(ds.items[i].split);
    values.insert(split[i]);
  }
  struct Plan {
    std::string test_split;
    std::vector<int64_t> train, val, test;
  };
  std::vector<Plan> plans;
  const uint64_t hold_seed = random_bits(o.classifier.seed, 0x56414cULL);  // "VAL"
  if (o.group_folds != 0) {  // probe_group_folds refuses K < 2
    split = probe_group_folds(ds, o.group_folds, random_bits(o.classifier.seed, 0x464f4c44ULL));  // "FOLD"
    values = std::set<std::string>(split.begin(), split.end());
    SONAR_CHECK(static_cast<int64_t>(values.size()) == o.group_folds, o.data, ": ", o.group_folds,
                " group folds need at least as many groups, found ", values.size());
  }
  if (o.group_folds == 0 && values.count("train") && values.count("test")) {
    Plan p;
    p.test_split = "test";
    std::vector<int64_t> other;
    for (int64_t i = 0; i < ds.size(); ++i) {
      if (split[i] == "train") p.train.push_back(i);
      else if (split[i] == "val") p.val.push_back(i);
      else if (split[i] == "test") p.test.push_back(i);
      else other.push_back(i);
    }
    SONAR_CHECK(other.empty(), o.data, ": ", other.size(), " clips have a split other than train/val/test (e.g. '",
                other.empty() ? "" : ds.items[other[0]].split, "')");
    if (p.val.empty() && o.val_fraction > 0) std::tie(p.train, p.val) = hold_out(ds, p.train, o.val_fraction, hold_seed);
    plans.push_back(std::move(p));
  } else {
    bool folds = values.size() >= 2;
    for (const auto& v : values) folds = folds && is_integer(v);
    std::string listed;
    for (const auto& v : values) listed += (listed.empty() ? "'" : ", '") + v + "'";
    SONAR_CHECK(folds, o.data, ": cannot tell training from test clips: the split values are ", listed,
                "; the probe needs train/test (and optionally val) or numeric folds");
    for (const auto& f : values) {
      Plan p;
      p.test_split = f;
      std::vector<int64_t> rest;
      for (int64_t i = 0; i < ds.size(); ++i) (split[i] == f ? p.test : rest).push_back(i);
      if (o.val_fraction > 0) {
        std::tie(p.train, p.val) = hold_out(ds, rest, o.val_fraction, random_bits(hold_seed, std::hash<std::string>{}(f)));
      } else {
        p.train = rest;
      }
      plans.push_back(std::move(p));
    }
  }
  for (const auto& p : plans) {
    SONAR_CHECK(!p.train.empty(), o.data, ": no training clips when '", p.test_split, "' is the test split");
    SONAR_CHECK(!p.test.empty(), o.data, ": no test clips in split '", p.test_split, "'");
  }

  // ---- the model ----
  std::shared_ptr<beats::BeatsBackbone> model;
  if (!o.checkpoint.empty()) {
    beats::CheckpointData c = beats::read_checkpoint(o.checkpoint);
    if (c.kind == beats::ModelKind::Pretrained || c.kind == beats::ModelKind::Finetuned) {
      model = beats::build_beats(c);
    } else if (c.kind == beats::ModelKind::Tokenizer) {
      model = beats::build_tokenizer(c);
    } else {
      SONAR_FAIL(o.checkpoint, ": a ", beats::kind_name(c.kind), " checkpoint has no encoder to probe");
    }
  } else {
    Generator gen(o.model_seed);
    model = std::make_shared<beats::BeatsModel>(preset_config(o.preset), &gen);
  }
  rep.blocks = model->cfg.encoder_layers;
  SONAR_CHECK(o.features.layer >= 0 && o.features.layer <= rep.blocks, "--layer ", o.features.layer, " outside [0, ",
              rep.blocks, "] (0 = the last block)");
  rep.layer = o.features.layer == 0 ? rep.blocks : o.features.layer;
  rep.feature_dim = model->cfg.encoder_embed_dim;
  log("probe: " + rep.checkpoint + " (block " + std::to_string(rep.layer) + " of " + std::to_string(rep.blocks) + ", " +
      std::to_string(rep.feature_dim) + "-d features) on " + o.data + ": " +
      (rep.multi_label ? "multi-label, " : "single-label, ") + std::to_string(K) + " classes, " +
      std::to_string(ds.size()) + " clips" +
      (rep.dropped > 0 ? " (" + std::to_string(rep.dropped) + " unlabelled left out)" : ""));

  const auto t0 = std::chrono::steady_clock::now();
  auto last_report = t0;
  FeatureSkips skips;
  Tensor feats = clip_features(*model, ds, o.features, [&](int64_t done, int64_t total) {
    const auto now = std::chrono::steady_clock::now();
    if (done < total && std::chrono::duration<double>(now - last_report).count() >= kFeatureReportSeconds) {
      const double el = std::chrono::duration<double>(now - t0).count();
      char line[160];
      std::snprintf(line, sizeof line, "features: %lld/%lld clips, %.1f clips/s, left %s", static_cast<long long>(done),
                    static_cast<long long>(total), done / el,
                    format_duration(el / done * static_cast<double>(total - done)).c_str());
      log(line);
      last_report = now;
    }
  }, &skips);
  rep.feature_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  char buf[160];
  std::snprintf(buf, sizeof buf, "features: %lld clips in %.1f s", static_cast<long long>(ds.size()),
                rep.feature_seconds);
  log(buf);
  rep.padded = skips.padded;
  rep.skipped = skips.reasons;
  if (skips.padded > 0)
    log("features: " + std::to_string(skips.padded) + " clips shorter than one patch (" +
        std::to_string(model->cfg.input_patch_size) + " frames) were padded to one");
  if (!skips.items.empty()) {
    // Every clip that could not be used is listed, and the others are evaluated without it.
    log("features: " + std::to_string(skips.items.size()) + " of " + std::to_string(ds.size()) +
        " clips cannot be used and are left out:");
    for (const auto& [path, reason] : skips.reasons) log("  skipped " + path + ": " + reason);
    const std::set<int64_t> bad(skips.items.begin(), skips.items.end());
    for (auto& p : plans)
      for (auto* v : {&p.train, &p.val, &p.test})
        v->erase(std::remove_if(v->begin(), v->end(), [&](int64_t i) { return bad.count(i) > 0; }), v->end());
    for (const auto& p : plans) {
      SONAR_CHECK(!p.train.empty(), o.data, ": no usable training clips when '", p.test_split, "' is the test split");
      SONAR_CHECK(!p.test.empty(), o.data, ": no usable test clips in split '", p.test_split, "'");
    }
  }

  Tensor targets;
  if (rep.multi_label) {
    targets = Tensor::empty({ds.size(), K});
    for (int64_t i = 0; i < ds.size(); ++i) targets.select(0, i).copy_(ds.target(i));
  } else {
    std::vector<int64_t> lab(ds.size());
    for (int64_t i = 0; i < ds.size(); ++i) lab[i] = ds.label_index(i);
    targets = from_vector(lab, {ds.size()});
  }

  std::vector<SplitMetrics> tests, vals;
  for (const auto& p : plans) {
    FoldResult fr;
    fr.test_split = p.test_split;
    fr.train = static_cast<int64_t>(p.train.size());
    fr.val = static_cast<int64_t>(p.val.size());
    fr.test = static_cast<int64_t>(p.test.size());
    LinearProbe lp = train_linear_probe(rows(feats, p.train), rows(targets, p.train), rows(feats, p.val),
                                        rows(targets, p.val), K, rep.multi_label, o.classifier);
    fr.best_epoch = lp.best_epoch;
    fr.epochs_run = lp.epochs_run;
    fr.val_metrics = evaluate_probe(lp, rows(feats, p.val), rows(targets, p.val), K);
    fr.test_metrics = evaluate_probe(lp, rows(feats, p.test), rows(targets, p.test), K);
    std::snprintf(buf, sizeof buf, "classifier (test split '%s'): train %lld, val %lld, test %lld clips; best epoch %lld of %lld",
                  fr.test_split.c_str(), static_cast<long long>(fr.train), static_cast<long long>(fr.val),
                  static_cast<long long>(fr.test), static_cast<long long>(fr.best_epoch),
                  static_cast<long long>(fr.epochs_run));
    log(buf);
    if (plans.size() > 1) log("  test: " + metrics_line(fr.test_metrics, rep.multi_label));
    tests.push_back(fr.test_metrics);
    vals.push_back(fr.val_metrics);
    rep.folds.push_back(fr);
  }
  rep.test = mean_metrics(tests);
  rep.val = mean_metrics(vals);
  log(std::string(plans.size() > 1 ? "test (mean over folds): " : "test: ") + metrics_line(rep.test, rep.multi_label));
  return rep;
}

std::vector<ProbeTask> read_probe_tasks(const std::string& path) {
  SONAR_CHECK(fs::is_regular_file(path), "tasks file ", path, " does not exist");
  const fs::path folder = fs::path(path).parent_path();
  std::vector<audio::CsvRow> rows;
  try {
    rows = audio::parse_csv(read_file(path), ',');
  } catch (const Error& e) {
    SONAR_FAIL(path, ": ", e.what());
  }
  std::vector<ProbeTask> tasks;
  std::set<std::string> names;
  std::vector<std::string> header;
  int col_task = -1, col_manifest = -1, col_type = -1;
  for (const audio::CsvRow& row : rows) {
    if (row.comment) continue;
    const std::vector<std::string>& f = row.fields;
    if (header.empty()) {
      header = f;
      for (size_t i = 0; i < f.size(); ++i) {
        if (f[i] == "task") col_task = static_cast<int>(i);
        if (f[i] == "manifest") col_manifest = static_cast<int>(i);
        if (f[i] == "type") col_type = static_cast<int>(i);
      }
      std::string got;
      for (size_t i = 0; i < f.size(); ++i) got += (i ? "," : "") + f[i];
      SONAR_CHECK(col_task >= 0 && col_manifest >= 0 && col_type >= 0, path, " line ", row.line,
                  ": the header needs the columns task, manifest and type, got '", got, "'");
      continue;
    }
    SONAR_CHECK(f.size() == header.size(), path, " line ", row.line, ": ", f.size(), " fields, the header has ",
                header.size());
    ProbeTask t;
    t.name = f[col_task];
    SONAR_CHECK(!t.name.empty(), path, " line ", row.line, ": empty task name");
    SONAR_CHECK(names.insert(t.name).second, path, " line ", row.line, ": task '", t.name, "' appears twice");
    const std::string& type = f[col_type];
    SONAR_CHECK(type == "multiclass" || type == "multilabel", path, " line ", row.line, ": task '", t.name,
                "' has type '", type, "' (known: multiclass, multilabel)");
    t.task = type == "multiclass" ? "single" : "multi";
    const fs::path m = fs::path(f[col_manifest]).is_absolute() ? fs::path(f[col_manifest]) : folder / f[col_manifest];
    SONAR_CHECK(!f[col_manifest].empty() && fs::is_regular_file(m), path, " line ", row.line, ": manifest of task '",
                t.name, "' (", m.string(), ") does not exist");
    t.manifest = m.string();
    tasks.push_back(t);
  }
  SONAR_CHECK(!tasks.empty(), path, ": no tasks");
  return tasks;
}

}  // namespace sonar::method
