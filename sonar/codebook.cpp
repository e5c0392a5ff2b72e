// The online clustered codebook (see sonar/codebook.h): the adapting codebook's state and its per-step update
// (EMA, dead-code re-initialisation, expansion), the predictor rows and AdamW moments that follow it, its
// checkpoint state and the adapted tokenizer file. Not here: the loop that calls the hooks (sonar/trainer.cpp).
#include "sonar/codebook.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <limits>
#include <numeric>
#include <vector>

#include "nn/beats/checkpoint.h"
#include "nn/beats/label_predictor.h"
#include "nn/init.h"
#include "sonar/distributed.h"
#include "tensor/creation.h"
#include "tensor/index.h"
#include "tensor/matmul.h"
#include "tensor/random.h"

namespace sonar::method {

namespace fs = std::filesystem;

namespace {

// Stream identifiers: each kind of draw of a step has its own sequence, seeded by (seed, step).
constexpr uint64_t kAnchorStream = 0x414e4348ULL;  // "ANCH": anchors of dead codes
constexpr uint64_t kRowStream = 0x524f5753ULL;     // "ROWS": fresh predictor rows
// A fresh predictor row: BEiT's head initialisation, as GrowableLinear::reset_parameters (truncated normal,
// std 0.02, cut at two standard deviations; bias zero).
constexpr double kFreshRowStd = 0.02;

uint64_t step_seed(uint64_t seed, uint64_t stream, int64_t step) {
  return random_bits(random_bits(seed, stream), static_cast<uint64_t>(step));
}

// Unit vector of a double row (a zero row stays zero; the features and codes are never zero in practice).
void normalise(std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x * x;
  const double n = std::sqrt(s);
  if (n > 0.0)
    for (double& x : v) x /= n;
}

// Best cosine and its code for every row of x [N, D] against codebook w [K, D] (both L2-normalised rows).
struct BestCode {
  std::vector<float> cos;
  std::vector<int64_t> code;
};
BestCode best_codes(const Tensor& x, const Tensor& w) {
  const int64_t N = x.size(0), K = w.size(0);
  BestCode b;
  b.cos.assign(N, -std::numeric_limits<float>::infinity());
  b.code.assign(N, 0);
  if (N == 0) return b;
  const Tensor s = matmul(x, w, false, true).contiguous();  // [N, K]
  const float* sp = s.data<float>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      if (sp[n * K + k] > b.cos[n]) {
        b.cos[n] = sp[n * K + k];
        b.code[n] = k;
      }
  return b;
}

double dot_rows(const float* a, const float* b, int64_t D) {
  double s = 0.0;
  for (int64_t j = 0; j < D; ++j) s += static_cast<double>(a[j]) * b[j];
  return s;
}

// Indices (into the optimiser's parameter order) of a parameter, or -1.
int64_t param_index(const ag::Optimizer& opt, const ag::Var& p) {
  const std::vector<ag::Var> params = opt.params();
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].same(p)) return static_cast<int64_t>(i);
  return -1;
}

// After the head's rows changed: pads the AdamW moments of its weight and bias with zero rows up to the head's
// size (as beats::grow_optimizer_state) and zeroes the moments of `reset_rows` (re-initialised codes), in one
// save_state / load_state round trip (the optimiser's only interface to its buffers; it copies every buffer, so
// an event costs about two passes over the optimiser state, see docs).
void reset_head_moments(ag::Optimizer& opt, const beats::GrowableLinear& head, const std::vector<int64_t>& reset_rows) {
  ag::OptimizerState st = opt.save_state();
  for (const ag::Var* p : {&head.weight, &head.bias}) {
    const int64_t i = param_index(opt, *p);
    SONAR_CHECK(i >= 0, "online codebook: the optimiser does not train the label predictor's head");
    for (const char* buf : {"exp_avg", "exp_avg_sq"}) {
      auto it = st.tensors.find("param." + std::to_string(i) + "." + buf);
      if (it == st.tensors.end()) continue;  // no step taken yet: the moments start at zero anyway
      Tensor t = it->second.contiguous();
      const int64_t have = t.size(0), want = p->size(0);
      SONAR_CHECK(have <= want, "online codebook: AdamW's ", buf, " of the head has ", have, " rows, more than the ",
                  want, " of the head");
      if (have < want) {
        Shape extra = t.shape();
        extra[0] = want - have;
        t = cat({t, zeros(extra)}, 0);
      }
      for (int64_t r : reset_rows) t.select(0, r).zero_();
      it->second = t;
    }
  }
  opt.load_state(st);
}

// Data parallelism: replaces this process's real features x [n, D] and their labels by the global batch's, in
// the order one process would hold them: the new clips' rows of process 0, 1, ..., then the added clips' rows
// of process 0, 1, ... (n_new_real: how many of this process's rows come from new clips). Every process gets
// the same x and labels.
void gather_global(const Distributed& group, int64_t n_new_real, Tensor& x, std::vector<int64_t>& labels) {
  const std::vector<int64_t> counts = group.allgather(std::vector<int64_t>{n_new_real, x.size(0)});
  const Tensor rows = group.allgather_rows(x.contiguous());
  const std::vector<int64_t> all_labels = group.allgather(labels);
  const int R = group.size();
  std::vector<int64_t> starts(R);
  int64_t total = 0;
  for (int r = 0; r < R; ++r) {
    starts[r] = total;
    total += counts[2 * r + 1];
  }
  SONAR_CHECK(rows.size(0) == total && static_cast<int64_t>(all_labels.size()) == total,
              "online codebook: gathered ", rows.size(0), " features and ", all_labels.size(), " labels, expected ",
              total);
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(total));
  for (int pass = 0; pass < 2; ++pass)
    for (int r = 0; r < R; ++r) {
      const int64_t lo = pass == 0 ? 0 : counts[2 * r], hi = pass == 0 ? counts[2 * r] : counts[2 * r + 1];
      for (int64_t i = lo; i < hi; ++i) order.push_back(starts[r] + i);
    }
  x = total > 0 ? index_select(rows, 0, from_vector(order, {total})).contiguous() : rows;
  labels.resize(static_cast<size_t>(total));
  for (int64_t g = 0; g < total; ++g) labels[g] = all_labels[order[g]];
}

}  // namespace


struct OnlineCodebookExtension::Impl {
  CodebookOptions o;
  Trainer* trainer = nullptr;
  std::shared_ptr<beats::BeatsTokenizer> start;  // the run's tokenizer (never modified here)
  int64_t dim = 0, start_codes = 0, max_codes = 0;
  Tensor weight;     // [K, D] L2-normalised codes
  Tensor embed_avg;  // [K, D] carried as the NormEMA quantizer keeps it (set for re-initialised/added codes)
  Tensor usage;      // [K] EMA of assignments per step
  int64_t updates = 0;                       // after_step calls with real features so far
  int64_t reinit_total = 0, added_total = 0;  // since the run started
  int64_t reinit_since = 0, added_since = 0;  // since the last progress() call
  // Novel share (features below novelty_cos / real features) summed over the steps since the last progress()
  // call that could grow, and their count.
  double novel_share_sum = 0.0;
  int64_t novel_share_steps = 0;
  // relabel's labels of the features it saw; after_step reuses them for the same features (the codebook does
  // not change in between), which saves one nearest-code search per step.
  Tensor relabel_features, relabel_labels;

  int64_t K() const { return weight.size(0); }

  // A feature is novel when its best cosine to the codebook is below novelty_cos.
  bool is_novel(float best_cos) const { return static_cast<double>(best_cos) < o.novelty_cos; }
  int64_t count_novel(const BestCode& b) const {
    int64_t n = 0;
    for (float c : b.cos) n += is_novel(c) ? 1 : 0;
    return n;
  }
  // Adds one step's novel share (n_novel of N real features) to the running sum progress() averages.
  void note_novel_share(int64_t n_novel, int64_t N) {
    novel_share_sum += static_cast<double>(n_novel) / static_cast<double>(N);
    ++novel_share_steps;
  }

  std::shared_ptr<beats::GrowableLinear> head() const { return trainer->objective()->predictor->head; }

  void check_attached(const char* what) const {
    SONAR_CHECK(trainer != nullptr && weight.defined(), "online codebook: ", what, " before attach");
  }

  void check_head_matches(const std::string& when) const {
    const int64_t rows = head()->out_features();
    SONAR_CHECK(rows == K(), "online codebook: ", when, ": the codebook has ", K(),
                " codes but the label predictor's head has ", rows, " rows");
  }

  // Dead codes by the usage share rule (none while there is no usage at all).
  std::vector<int64_t> dead_codes() const {
    const int64_t k = K();
    const float* u = usage.data<float>();
    double total = 0.0;
    for (int64_t i = 0; i < k; ++i) total += u[i];
    std::vector<int64_t> dead;
    if (!(total > 0.0)) return dead;
    const double threshold = o.dead_usage / static_cast<double>(k);
    for (int64_t i = 0; i < k; ++i)
      if (static_cast<double>(u[i]) / total < threshold) dead.push_back(i);
    return dead;
  }

  double perplexity() const {
    const int64_t k = K();
    const float* u = usage.data<float>();
    double total = 0.0;
    for (int64_t i = 0; i < k; ++i) total += u[i];
    if (!(total > 0.0)) return 0.0;
    double h = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      const double p = u[i] / total;
      if (p > 0.0) h -= p * std::log(p);
    }
    return std::exp(h);
  }

  double mean_usage() const {
    const float* u = usage.data<float>();
    double total = 0.0;
    for (int64_t i = 0; i < K(); ++i) total += u[i];
    return total / static_cast<double>(K());
  }

  // The EMA step on the real features x [N, D] with their nearest codes a (before the step). With several
  // processes the statistics are the global batch's: the feature count, per-code counts and per-code feature
  // sums are summed across processes (one all-reduce of 1 + K + K D doubles: double because the one-process
  // step accumulates in double, so the global sums equal its sums up to the order of two partial sums; the
  // bytes are under 1% of the gradient all-reduce's). Returns the global number of real features (0: nothing
  // moved).
  int64_t ema(const Tensor& x, const std::vector<int64_t>& a, const Distributed& group) {
    const int64_t N_local = x.size(0), k = K(), D = dim;
    const float d = o.decay;
    const double dd = static_cast<double>(d);
    // stats = [N, counts (K), sums (K x D)]
    std::vector<double> stats(static_cast<size_t>(1 + k + k * D), 0.0);
    double* counts = stats.data() + 1;
    double* sums = stats.data() + 1 + k;
    stats[0] = static_cast<double>(N_local);
    const float* xp = N_local > 0 ? x.data<float>() : nullptr;
    for (int64_t n = 0; n < N_local; ++n) {
      counts[a[n]] += 1.0;
      for (int64_t j = 0; j < D; ++j) sums[a[n] * D + j] += xp[n * D + j];
    }
    group.allreduce_sum(stats.data(), static_cast<int64_t>(stats.size()));
    const int64_t N = static_cast<int64_t>(stats[0]);
    if (N == 0) return 0;  // nothing real in the (global) batch: no statistic moves
    float* u = usage.data<float>();
    if (updates == 0) {
      // The carried-over usage keeps its shares but takes this run's scale (features per step).
      double total = 0.0;
      for (int64_t i = 0; i < k; ++i) total += u[i];
      if (total > 0.0)
        for (int64_t i = 0; i < k; ++i) u[i] = static_cast<float>(u[i] * (static_cast<double>(N) / total));
    }
    for (int64_t i = 0; i < k; ++i) u[i] = static_cast<float>(dd * u[i] + (1.0 - dd) * counts[i]);
    float* w = weight.data<float>();
    std::vector<double> target(D), v(D);
    for (int64_t i = 0; i < k; ++i) {
      if (counts[i] == 0.0) continue;  // no assignment: the code keeps its vector
      for (int64_t j = 0; j < D; ++j) target[j] = sums[i * D + j] / counts[i];
      normalise(target);
      for (int64_t j = 0; j < D; ++j) v[j] = dd * w[i * D + j] + (1.0 - dd) * target[j];
      normalise(v);
      for (int64_t j = 0; j < D; ++j) w[i * D + j] = static_cast<float>(v[j]);
    }
    ++updates;
    return N;
  }

  // Anchors for the dead codes, k-means++ style over D(x_n) = |x_n - nearest code|^2. Returns the feature row
  // of each re-initialised code (codes past the last drawable anchor are left as they are).
  std::vector<std::pair<int64_t, int64_t>> draw_anchors(const Tensor& x, const BestCode& b,
                                                        const std::vector<int64_t>& dead, int64_t step) const {
    std::vector<std::pair<int64_t, int64_t>> picks;  // (code, feature row)
    const int64_t N = x.size(0), D = dim;
    if (dead.empty() || N == 0) return picks;
    std::vector<double> dist(N);
    for (int64_t n = 0; n < N; ++n) dist[n] = std::max(0.0, 2.0 - 2.0 * static_cast<double>(b.cos[n]));
    Generator gen(step_seed(o.seed, kAnchorStream, step));
    const float* xp = x.data<float>();
    for (int64_t code : dead) {
      double total = 0.0;
      for (double v : dist) total += v;
      if (!(total > 0.0)) break;  // every feature sits on a code
      const double r = gen.next_uniform() * total;
      int64_t pick = -1;
      double acc = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        if (dist[n] <= 0.0) continue;
        acc += dist[n];
        pick = n;
        if (r < acc) break;
      }
      picks.emplace_back(code, pick);
      for (int64_t n = 0; n < N; ++n) {
        const double dn = std::max(0.0, 2.0 - 2.0 * dot_rows(xp + n * D, xp + pick * D, D));
        dist[n] = std::min(dist[n], dn);
      }
      dist[pick] = 0.0;
    }
    return picks;
  }

  // Novel features to add as codes: farthest first, skipping those close to one already chosen.
  std::vector<int64_t> pick_new(const Tensor& x, const BestCode& b) const {
    std::vector<int64_t> chosen;
    const int64_t N = x.size(0), D = dim;
    const int64_t room = std::min<int64_t>(o.max_new_per_step, max_codes - K());
    if (N == 0 || room <= 0) return chosen;
    std::vector<int64_t> novel;
    for (int64_t n = 0; n < N; ++n)
      if (is_novel(b.cos[n])) novel.push_back(n);
    if (!(static_cast<double>(novel.size()) > o.novelty_share * static_cast<double>(N))) return chosen;
    std::stable_sort(novel.begin(), novel.end(), [&](int64_t p, int64_t q) { return b.cos[p] < b.cos[q]; });
    const float* xp = x.data<float>();
    for (int64_t n : novel) {
      if (static_cast<int64_t>(chosen.size()) >= room) break;
      bool covered = false;
      for (int64_t c : chosen) covered = covered || dot_rows(xp + n * D, xp + c * D, D) >= o.novelty_cos;
      if (!covered) chosen.push_back(n);
    }
    return chosen;
  }
};

OnlineCodebookExtension::OnlineCodebookExtension(CodebookOptions o) : impl_(std::make_shared<Impl>()) {
  validate(o);
  SONAR_CHECK(o.mode == "online", "OnlineCodebookExtension: --codebook ", o.mode,
              " means no extension (construct it for --codebook online only)");
  impl_->o = std::move(o);
}

nlohmann::json OnlineCodebookExtension::config() const {
  const CodebookOptions& o = impl_->o;
  return {{"codebook", o.mode},
          {"codebook-decay", o.decay},
          {"dead-usage", o.dead_usage},
          {"novelty-cos", o.novelty_cos},
          {"novelty-share", o.novelty_share},
          {"grow-per-step", o.max_new_per_step},
          {"max-codes", o.max_codes},
          {"codebook-warmup", o.warmup_steps},
          {"new-rows", o.new_rows}};
}

void OnlineCodebookExtension::attach(Trainer& trainer) {
  Impl& m = *impl_;
  const LabelTokenizer& tok = trainer.tokenizer();
  SONAR_CHECK(tok.beats != nullptr, "--codebook online needs a trained BEATs tokenizer (--tokenizer), but the run's "
              "tokenizer is a ", tok.kind(), " with no trained codebook to adapt; give --tokenizer or use --codebook "
              "frozen");
  auto q = tok.beats->quantize;
  SONAR_CHECK(q->initialised(), "--codebook online needs a trained BEATs tokenizer (--tokenizer), but the run's "
              "tokenizer's codebook was never initialised (no k-means, no training); use --codebook frozen");
  const int64_t K = q->num_codes();
  SONAR_CHECK(m.o.max_codes == 0 || m.o.max_codes >= K, "--max-codes ", m.o.max_codes, " is below the codebook's ",
              K, " codes");
  m.trainer = &trainer;
  m.start = tok.beats;
  m.dim = q->dim;
  m.start_codes = K;
  m.max_codes = m.o.max_codes > 0 ? m.o.max_codes : K + K / 2;
  m.weight = q->codebook().to(DType::Float32).contiguous().clone();
  m.embed_avg = q->embedding->embed_avg.value().to(DType::Float32).contiguous().clone();
  m.usage = q->usage().to(DType::Float32).contiguous().clone();
  double total = 0.0;
  for (float v : m.usage.to_vector<float>()) total += v;
  if (!(total > 0.0))  // a tokenizer never trained past its k-means initialisation: the k-means bin counts
    m.usage = q->embedding->cluster_size.value().to(DType::Float32).contiguous().clone();
  m.updates = 0;
  m.reinit_total = m.added_total = m.reinit_since = m.added_since = 0;
  // A resumed run's head comes back grown from the checkpoint; load_state restores the matching codebook.
  if (!trainer.resuming()) {
    const int64_t rows = m.head()->out_features();
    SONAR_CHECK(rows == K, "--codebook online: the label predictor has ", rows,
                " classes but the tokenizer's codebook ", K,
                " codes (a predictor reused from --init whose codebook grew: start from that run's ",
                kAdaptedTokenizerFile, " with --tokenizer, or use --codebook frozen)");
  }
}

void OnlineCodebookExtension::relabel(StepBatch& batch) {
  Impl& m = *impl_;
  m.check_attached("relabel");
  const Tensor& f = batch.token_features;
  SONAR_CHECK(f.defined() && f.dim() == 3 && f.size(2) == m.dim, "online codebook: token features must be [B, P, ",
              m.dim, "], got ", f.defined() ? shape_str(f.shape()) : std::string("undefined"));
  const int64_t B = f.size(0), P = f.size(1);
  const Tensor labels = beats::nearest_codes(f.contiguous().reshape({B * P, m.dim}), m.weight);
  batch.labels = labels.clone().reshape({B, P});  // the batch's own copy: the cache stays ours
  m.relabel_features = f;
  m.relabel_labels = labels;
}

void OnlineCodebookExtension::after_step(const StepBatch& batch, const beats::MlpOutput&) {
  Impl& m = *impl_;
  m.check_attached("after_step");
  m.check_head_matches("step " + std::to_string(batch.step + 1));
  const Tensor& f = batch.token_features;
  SONAR_CHECK(f.defined() && f.dim() == 3 && f.size(2) == m.dim, "online codebook: token features must be [B, P, ",
              m.dim, "], got ", f.defined() ? shape_str(f.shape()) : std::string("undefined"));
  const int64_t B = f.size(0), P = f.size(1), D = m.dim;
  const Tensor& pad = batch.patch_padding;
  SONAR_CHECK(!pad.defined() || pad.shape() == (Shape{B, P}), "online codebook: patch padding ",
              pad.defined() ? shape_str(pad.shape()) : std::string(), " does not match the features [", B, ", ", P,
              "]");

  // The real patches' features x [N, D] and their nearest codes before the step (relabel's labels when it saw
  // these very features).
  const bool cached = m.relabel_features.defined() && m.relabel_features.shares_storage(f) &&
                      m.relabel_features.offset() == f.offset() && m.relabel_features.shape() == f.shape() &&
                      m.relabel_features.strides() == f.strides();
  const Tensor all_labels = cached ? m.relabel_labels.contiguous().reshape({B * P})
                                   : beats::nearest_codes(f.contiguous().reshape({B * P, D}), m.weight);
  m.relabel_features = m.relabel_labels = Tensor();
  const Tensor all = f.contiguous().reshape({B * P, D});
  std::vector<int64_t> real_rows;
  const uint8_t* pp = nullptr;
  Tensor pc;
  if (pad.defined()) {
    pc = pad.contiguous();
    pp = pc.bytes();
  }
  // Real rows of the new clips come first (the batch's first new_clips clips), then those of added clips.
  int64_t n_new_real = 0;
  for (int64_t i = 0; i < B * P; ++i)
    if (!pp || !pp[i]) {
      real_rows.push_back(i);
      if (i < batch.new_clips * P) ++n_new_real;
    }
  const int64_t N_local = static_cast<int64_t>(real_rows.size());
  Tensor x = N_local > 0 ? index_select(all, 0, from_vector(real_rows, {N_local})).contiguous() : zeros({0, D});
  std::vector<int64_t> assigned(N_local);
  {
    const Tensor lc = all_labels.contiguous();
    const int64_t* lp = lc.data<int64_t>();
    for (int64_t n = 0; n < N_local; ++n) assigned[n] = lp[real_rows[n]];
  }
  const Distributed& group = Distributed::world();
  const int64_t N = m.ema(x, assigned, group);  // global count of real features
  if (N == 0) return;
  if (batch.step < m.o.warmup_steps) return;

  // Re-initialise dead codes, then grow (one search of the codebook serves both unless codes were replaced).
  const std::vector<int64_t> dead = m.dead_codes();
  const bool may_grow = std::min<int64_t>(m.o.max_new_per_step, m.max_codes - m.K()) > 0;
  if (!group.multi() && dead.empty() && !may_grow) return;
  if (group.multi()) {
    // Every process holds the same codebook; the draws need the global batch's real features in one
    // process's order. They are gathered only when an event can happen: some code is dead, or the global
    // share of novel features exceeds novelty_share (decided with one all-reduce of two counts, made on every
    // step after the warm-up so that processes whose codebooks went apart fail here instead of waiting for
    // each other in different collectives).
    int64_t flags[2] = {dead.empty() ? 0 : 1, 0};  // processes with dead codes, novel features
    if (may_grow && N_local > 0) flags[1] = m.count_novel(best_codes(x, m.weight));
    group.allreduce_sum(flags, 2);
    SONAR_CHECK(flags[0] == 0 || flags[0] == group.size(), "online codebook, step ", batch.step + 1, ": ", flags[0],
                " of ", group.size(), " processes see dead codes: their codebooks differ (non-deterministic sums?)");
    if (may_grow) m.note_novel_share(flags[1], N);
    const bool novel = may_grow && static_cast<double>(flags[1]) > m.o.novelty_share * static_cast<double>(N);
    if (dead.empty() && !novel) return;
    gather_global(group, n_new_real, x, assigned);
    SONAR_CHECK(x.size(0) == N, "online codebook: gathered ", x.size(0), " features, the global count is ", N);
  }
  BestCode best = best_codes(x, m.weight);
  if (may_grow && !group.multi()) m.note_novel_share(m.count_novel(best), N);
  const double start_usage = m.mean_usage();
  const std::vector<std::pair<int64_t, int64_t>> reinit = m.draw_anchors(x, best, dead, batch.step);
  const float* xp = x.data<float>();
  float* w = m.weight.data<float>();
  float* ea = m.embed_avg.data<float>();
  float* u = m.usage.data<float>();
  for (const auto& [code, row] : reinit) {
    std::copy(xp + row * D, xp + (row + 1) * D, w + code * D);
    std::copy(xp + row * D, xp + (row + 1) * D, ea + code * D);
    u[code] = static_cast<float>(start_usage);
  }
  std::vector<int64_t> grow;
  if (may_grow) {
    if (!reinit.empty()) best = best_codes(x, m.weight);
    grow = m.pick_new(x, best);
  }
  const int64_t old_k = m.K(), n_new = static_cast<int64_t>(grow.size());
  if (n_new > 0) {
    const Tensor rows = index_select(x, 0, from_vector(grow, {n_new}));
    m.weight = cat({m.weight, rows}, 0);
    m.embed_avg = cat({m.embed_avg, rows}, 0);
    m.usage = cat({m.usage, full({n_new}, start_usage)}, 0);
  }
  if (group.multi()) {
    // The decisions must be the same everywhere (same inputs, same generators): checked, because processes that
    // went apart would train different heads silently.
    std::vector<int64_t> mine = {static_cast<int64_t>(reinit.size()), n_new};
    uint64_t h = 1469598103934665603ULL;
    auto mix = [&](int64_t v) { h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ULL; };
    for (const auto& [code, row] : reinit) mix(code), mix(row);
    for (int64_t g : grow) mix(g);
    mine.push_back(static_cast<int64_t>(h));
    const std::vector<int64_t> all_decisions = group.allgather(mine);
    for (int r = 1; r < group.size(); ++r)
      SONAR_CHECK(std::equal(all_decisions.begin() + 3 * r, all_decisions.begin() + 3 * r + 3, all_decisions.begin()),
                  "online codebook, step ", batch.step + 1, ": process ", r, " chose ", all_decisions[3 * r],
                  " re-initialisations and ", all_decisions[3 * r + 1], " new codes, process 0 ", all_decisions[0],
                  " and ", all_decisions[1], " (or other anchors): the processes' codebooks differ");
  }
  if (reinit.empty() && n_new == 0) return;

  // The predictor's rows follow: source rows are read before anything is written.
  auto head = m.head();
  const int64_t C = head->in_features();
  const Tensor old_w = head->weight.value().clone(), old_b = head->bias.value().clone();
  const float* owp = old_w.data<float>();
  const float* obp = old_b.data<float>();
  const bool nearest = m.o.new_rows == "nearest";
  Generator row_gen(step_seed(m.o.seed, kRowStream, batch.step));
  auto fill_row = [&](int64_t anchor_row, float* wrow, float* brow) {
    if (nearest) {
      const int64_t src = assigned[anchor_row];
      std::copy(owp + src * C, owp + (src + 1) * C, wrow);
      *brow = obp[src];
    } else {
      Tensor fresh = zeros({C});
      nn::init::trunc_normal_(fresh, 0.0, kFreshRowStd, -2.0 * kFreshRowStd, 2.0 * kFreshRowStd, row_gen);
      const float* fp = fresh.data<float>();
      std::copy(fp, fp + C, wrow);
      *brow = 0.0f;
    }
  };
  {
    float* hw = head->weight.value().data<float>();
    float* hb = head->bias.value().data<float>();
    for (const auto& [code, row] : reinit) fill_row(row, hw + code * C, hb + code);
  }
  if (n_new > 0) {
    Tensor new_w = zeros({n_new, C}), new_b = zeros({n_new});
    for (int64_t i = 0; i < n_new; ++i) fill_row(grow[i], new_w.data<float>() + i * C, new_b.data<float>() + i);
    head->add_rows(n_new, new_w);
    head->bias.value().narrow(0, old_k, n_new).copy_(new_b);
  }
  std::vector<int64_t> reset_rows;
  for (const auto& [code, row] : reinit) reset_rows.push_back(code);
  reset_head_moments(m.trainer->optimizer(), *head, reset_rows);
  m.reinit_total += static_cast<int64_t>(reinit.size());
  m.reinit_since += static_cast<int64_t>(reinit.size());
  m.added_total += n_new;
  m.added_since += n_new;
  m.check_head_matches("after growing");
}

std::vector<std::pair<std::string, double>> OnlineCodebookExtension::progress() {
  Impl& m = *impl_;
  if (!m.weight.defined()) return {};
  std::vector<std::pair<std::string, double>> out = {
      {"codebook_size", static_cast<double>(m.K())},
      {"perplexity", m.perplexity()},
      {"dead", static_cast<double>(m.dead_codes().size())},
      {"reinit", static_cast<double>(m.reinit_since)},
      {"added", static_cast<double>(m.added_since)}};
  if (m.novel_share_steps > 0)
    out.emplace_back("novel_share", m.novel_share_sum / static_cast<double>(m.novel_share_steps));
  m.reinit_since = m.added_since = 0;
  m.novel_share_sum = 0.0;
  m.novel_share_steps = 0;
  return out;
}

void OnlineCodebookExtension::save_state(std::map<std::string, Tensor>& tensors,
                                         std::map<std::string, std::string>& meta) const {
  const Impl& m = *impl_;
  m.check_attached("save_state");
  tensors["weight"] = m.weight.clone();
  tensors["embed_avg"] = m.embed_avg.clone();
  tensors["usage"] = m.usage.clone();
  meta["updates"] = std::to_string(m.updates);
  meta["reinit-total"] = std::to_string(m.reinit_total);
  meta["added-total"] = std::to_string(m.added_total);
  meta["reinit-since-log"] = std::to_string(m.reinit_since);
  meta["added-since-log"] = std::to_string(m.added_since);
  // The novel share's running sum as an exact hexadecimal float, so a resumed run logs the same line.
  char sum[64];
  std::snprintf(sum, sizeof sum, "%a", m.novel_share_sum);
  meta["novel-share-sum"] = sum;
  meta["novel-share-steps"] = std::to_string(m.novel_share_steps);
}

void OnlineCodebookExtension::load_state(const std::map<std::string, Tensor>& tensors,
                                         const std::map<std::string, std::string>& meta) {
  Impl& m = *impl_;
  m.check_attached("load_state");
  auto tensor = [&](const char* name) -> const Tensor& {
    auto it = tensors.find(name);
    SONAR_CHECK(it != tensors.end() && it->second.defined(), "online codebook: the checkpoint has no codebook '", name,
                "'");
    return it->second;
  };
  auto count = [&](const char* name) -> int64_t {
    auto it = meta.find(name);
    SONAR_CHECK(it != meta.end(), "online codebook: the checkpoint has no '", name, "' counter");
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(it->second, &used);
    } catch (const std::logic_error&) {
      used = 0;
    }
    SONAR_CHECK(used == it->second.size() && v >= 0, "online codebook: counter '", name, "' = '", it->second,
                "' is not a count");
    return static_cast<int64_t>(v);
  };
  const Tensor& w = tensor("weight");
  const Tensor& ea = tensor("embed_avg");
  const Tensor& u = tensor("usage");
  SONAR_CHECK(w.dtype() == DType::Float32 && w.dim() == 2 && w.size(1) == m.dim && w.size(0) > 0,
              "online codebook: the checkpoint's codebook is ", shape_str(w.shape()), ", expected [K, ", m.dim, "]");
  const int64_t K = w.size(0);
  SONAR_CHECK(ea.dtype() == DType::Float32 && ea.shape() == w.shape() && u.dtype() == DType::Float32 &&
                  u.shape() == (Shape{K}),
              "online codebook: the checkpoint's embed_avg ", shape_str(ea.shape()), " and usage ",
              shape_str(u.shape()), " do not match its ", K, " codes");
  SONAR_CHECK(K >= m.start_codes && K <= m.max_codes, "online codebook: the checkpoint's codebook has ", K,
              " codes, outside [", m.start_codes, ", --max-codes ", m.max_codes, "]");
  const int64_t rows = m.head()->out_features();
  SONAR_CHECK(rows == K, "online codebook: the checkpoint's codebook has ", K,
              " codes but its label predictor head has ", rows, " rows");
  m.weight = w.contiguous().clone();
  m.embed_avg = ea.contiguous().clone();
  m.usage = u.contiguous().clone();
  m.updates = count("updates");
  m.reinit_total = count("reinit-total");
  m.added_total = count("added-total");
  m.reinit_since = count("reinit-since-log");
  m.added_since = count("added-since-log");
  // Checkpoints written before the novel share was logged have neither entry: its sum starts afresh.
  m.novel_share_sum = 0.0;
  m.novel_share_steps = 0;
  if (meta.count("novel-share-steps")) {
    m.novel_share_steps = count("novel-share-steps");
    const auto it = meta.find("novel-share-sum");
    SONAR_CHECK(it != meta.end(), "online codebook: the checkpoint has 'novel-share-steps' but no 'novel-share-sum'");
    char* end = nullptr;
    m.novel_share_sum = std::strtod(it->second.c_str(), &end);
    SONAR_CHECK(!it->second.empty() && end == it->second.c_str() + it->second.size() && m.novel_share_sum >= 0.0 &&
                    m.novel_share_sum <= static_cast<double>(m.novel_share_steps),
                "online codebook: 'novel-share-sum' = '", it->second, "' is not a share sum over ",
                m.novel_share_steps, " steps");
  }
  SONAR_CHECK(m.added_total == K - m.start_codes, "online codebook: the checkpoint counts ", m.added_total,
              " added codes but its codebook grew by ", K - m.start_codes);
}

void OnlineCodebookExtension::finish(const std::string& out_dir) {
  const Impl& m = *impl_;
  m.check_attached("finish");
  // The start tokenizer with the adapted codebook: same encoder and quantize_layer, quant_n = the new size.
  beats::BeatsConfig cfg = m.start->cfg;
  cfg.quant_n = m.K();
  auto tok = std::make_shared<beats::BeatsTokenizer>(cfg);
  std::map<std::string, Tensor> state;
  for (const auto& [k, v] : m.start->state_dict()) state[k] = v;
  // embedding.cluster_size holds the k-means bin counts of the codebook's initialisation (nothing reads them):
  // carried for the start codes, zero for added ones.
  {
    const Tensor old_bins = state.at("quantize.embedding.cluster_size");
    Tensor bins = zeros({m.K()});
    const int64_t keep = std::min<int64_t>(old_bins.size(0), m.K());
    bins.narrow(0, 0, keep).copy_(old_bins.narrow(0, 0, keep));
    state["quantize.embedding.cluster_size"] = bins;
  }
  state["quantize.embedding.weight"] = m.weight;
  state["quantize.embedding.embed_avg"] = m.embed_avg;
  state["quantize.cluster_size"] = m.usage;
  tok->load_state_dict(state, true);
  beats::save_tokenizer((fs::path(out_dir) / kAdaptedTokenizerFile).string(), *tok);
}

const Tensor& OnlineCodebookExtension::codebook() const { return impl_->weight; }
const Tensor& OnlineCodebookExtension::usage() const { return impl_->usage; }
const Tensor& OnlineCodebookExtension::embed_avg() const { return impl_->embed_avg; }
int64_t OnlineCodebookExtension::max_codes() const { return impl_->max_codes; }
int64_t OnlineCodebookExtension::reinit_total() const { return impl_->reinit_total; }
int64_t OnlineCodebookExtension::added_total() const { return impl_->added_total; }

}  // namespace sonar::method
