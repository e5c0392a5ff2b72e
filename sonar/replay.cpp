// Task-relevant stratified replay (see sonar/replay.h): clip embeddings with their disk cache, strata (labels or
// cosine k-means++), relevance and shares, the seeded draws, and the background loader of replayed crops. Not
// the training loop (sonar/trainer.cpp) and not the other SONAR parts.
#include "sonar/replay.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <numeric>
#include <optional>
#include <sstream>

#include "audio/fbank_cache.h"
#include "audio/loader.h"
#include "sonar/probe.h"
#include "autograd/var.h"
#include "sonar/distributed.h"
#include "tensor/index.h"
#include "tensor/io.h"
#include "tensor/random.h"

namespace sonar::method {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Stream identifiers: each use of the replay seed draws from its own sequence.
constexpr uint64_t kDrawStream = 0x44524157ULL;       // "DRAW": stratum, member and crop of each slot
constexpr uint64_t kNewSampleStream = 0x4e455753ULL;  // "NEWS": the sample of new-domain clips embedded
constexpr uint64_t kKmeansStream = 0x4b4d4e53ULL;     // "KMNS": k-means++ initialisation
// Left-out clips named in the start line (the rest are counted).
constexpr size_t kListedSkips = 8;
// Examples per stratum in replay_plan.csv.
constexpr size_t kExamplesPerStratum = 3;

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Chained 128-bit hash over several byte ranges.
struct HashChain {
  audio::Hash128 h{0x7265706c6179ULL, 0x68617368ULL};
  void add(const void* data, size_t n) { h = audio::hash_bytes(data, n, h.lo ^ (h.hi * 0x9e3779b97f4a7c15ULL)); }
  void add(const std::string& s) { add(s.data(), s.size()); }
  template <class T> void add_value(const T& v) { add(&v, sizeof v); }
};

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// Rows of a float tensor [N, D] in double, L2-normalised (a zero row stays zero).
std::vector<double> normalised_rows(const std::vector<double>& x, int64_t n, int64_t d) {
  std::vector<double> out(x);
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int64_t j = 0; j < d; ++j) s += out[i * d + j] * out[i * d + j];
    const double inv = s > 0 ? 1.0 / std::sqrt(s) : 0.0;
    for (int64_t j = 0; j < d; ++j) out[i * d + j] *= inv;
  }
  return out;
}

std::vector<double> to_double(const Tensor& t, const char* what) {
  SONAR_CHECK(t.defined() && t.dim() == 2, what, " must be [N, D], got ",
              t.defined() ? shape_str(t.shape()) : std::string("undefined"));
  const Tensor c = t.to(DType::Float32).contiguous();
  const float* p = c.data<float>();
  return std::vector<double>(p, p + c.numel());
}

double dot(const double* a, const double* b, int64_t d) {
  double s = 0;
  for (int64_t j = 0; j < d; ++j) s += a[j] * b[j];
  return s;
}

// Relevance on normalised rows (see stratum_relevance).
std::vector<double> relevance_of(const std::vector<double>& u, int64_t n, const std::vector<double>& c, int64_t s,
                                 int64_t d, double temperature) {
  std::vector<double> rel(s, 0.0), logits(s);
  for (int64_t i = 0; i < n; ++i) {
    double mx = -INFINITY;
    for (int64_t k = 0; k < s; ++k) {
      logits[k] = dot(&u[i * d], &c[k * d], d) / temperature;
      mx = std::max(mx, logits[k]);
    }
    double z = 0;
    for (int64_t k = 0; k < s; ++k) z += (logits[k] = std::exp(logits[k] - mx));
    for (int64_t k = 0; k < s; ++k) rel[k] += logits[k] / z;
  }
  for (double& r : rel) r /= static_cast<double>(n);
  return rel;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string q = "\"";
  for (char ch : s) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return q + "\"";
}

std::string absolute_path(const std::string& p) {
  if (p.empty()) return p;
  return fs::absolute(fs::path(p)).lexically_normal().string();
}

// "a.wav (too short: ...), b.wav (...), and 3 more"
std::string list_skipped(const std::vector<std::pair<std::string, std::string>>& skipped) {
  std::string s;
  for (size_t i = 0; i < skipped.size() && i < kListedSkips; ++i)
    s += (i ? "; " : "") + skipped[i].first + " (" + skipped[i].second + ")";
  if (skipped.size() > kListedSkips) s += "; and " + std::to_string(skipped.size() - kListedSkips) + " more";
  return s;
}

}  // namespace

// ---- the pieces ----

std::vector<double> stratum_relevance(const Tensor& new_emb, const Tensor& centroids, double temperature) {
  SONAR_CHECK(std::isfinite(temperature) && temperature > 0, "stratum_relevance: temperature must be positive, got ",
              temperature);
  const std::vector<double> x = to_double(new_emb, "stratum_relevance: new-domain embeddings");
  const std::vector<double> c = to_double(centroids, "stratum_relevance: centroids");
  const int64_t n = new_emb.size(0), d = new_emb.size(1), s = centroids.size(0);
  SONAR_CHECK(centroids.size(1) == d, "stratum_relevance: centroids ", shape_str(centroids.shape()),
              " and embeddings ", shape_str(new_emb.shape()), " differ in width");
  SONAR_CHECK(n > 0 && s > 0, "stratum_relevance: needs at least one embedding and one centroid, got ", n, " and ", s);
  return relevance_of(normalised_rows(x, n, d), n, normalised_rows(c, s, d), s, d, temperature);
}

std::vector<double> replay_shares(const std::vector<double>& relevance, double floor) {
  SONAR_CHECK(!relevance.empty(), "replay_shares: no strata");
  SONAR_CHECK(std::isfinite(floor) && floor >= 0 && floor <= 1, "replay_shares: floor must be in [0, 1], got ", floor);
  const double S = static_cast<double>(relevance.size());
  std::vector<double> out;
  out.reserve(relevance.size());
  for (double r : relevance) out.push_back((1.0 - floor) * r + floor / S);
  return out;
}

std::vector<int64_t> kmeans_pp(const Tensor& emb, int64_t k, uint64_t seed, int iters) {
  const std::vector<double> raw = to_double(emb, "kmeans_pp: embeddings");
  const int64_t n = emb.size(0), d = emb.size(1);
  SONAR_CHECK(k >= 1 && k <= n, "kmeans_pp: ", k, " clusters for ", n, " rows (need 1 <= k <= rows)");
  SONAR_CHECK(iters >= 1, "kmeans_pp: iterations must be >= 1, got ", iters);
  const std::vector<double> x = normalised_rows(raw, n, d);
  Generator gen(seed);

  // k-means++ initialisation with the squared chord distance 2 - 2 cos of unit vectors.
  std::vector<double> centres(k * d);
  std::vector<double> dist(n, INFINITY);
  auto set_centre = [&](int64_t c, int64_t row) {
    std::copy(&x[row * d], &x[row * d] + d, &centres[c * d]);
    for (int64_t i = 0; i < n; ++i) dist[i] = std::min(dist[i], std::max(0.0, 2.0 - 2.0 * dot(&x[i * d], &x[row * d], d)));
  };
  set_centre(0, gen.next_int(0, n));
  for (int64_t c = 1; c < k; ++c) {
    double total = 0;
    for (double v : dist) total += v;
    int64_t pick = -1;
    if (total > 0) {
      const double u = gen.next_uniform() * total;
      double cum = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (dist[i] <= 0) continue;
        cum += dist[i];
        pick = i;
        if (cum > u) break;
      }
    } else {
      pick = gen.next_int(0, n);  // every row sits on a centre: duplicates; any row will do
    }
    set_centre(c, pick);
  }

  std::vector<int64_t> assign(n, -1), prev;
  std::vector<double> own_cos(n);
  for (int it = 0; it < iters; ++it) {
    for (int64_t i = 0; i < n; ++i) {
      int64_t best = 0;
      double bc = -INFINITY;
      for (int64_t c = 0; c < k; ++c) {
        const double v = dot(&x[i * d], &centres[c * d], d);
        if (v > bc) {
          bc = v;
          best = c;
        }
      }
      assign[i] = best;
      own_cos[i] = bc;
    }
    // No empty cluster: each takes the row farthest from its own centre among clusters of two or more rows.
    std::vector<int64_t> count(k, 0);
    for (int64_t a : assign) ++count[a];
    for (int64_t c = 0; c < k; ++c) {
      if (count[c] > 0) continue;
      int64_t far = -1;
      for (int64_t i = 0; i < n; ++i)
        if (count[assign[i]] > 1 && (far < 0 || own_cos[i] < own_cos[far])) far = i;
      SONAR_CHECK(far >= 0, "kmeans_pp: internal error: no row to move into an empty cluster");
      --count[assign[far]];
      assign[far] = c;
      own_cos[far] = 1.0;
      ++count[c];
    }
    // Centres: normalised means of their members.
    std::fill(centres.begin(), centres.end(), 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < d; ++j) centres[assign[i] * d + j] += x[i * d + j];
    centres = normalised_rows(centres, k, d);
    if (assign == prev) break;
    prev = assign;
  }
  return assign;
}

std::string module_fingerprint(const nn::Module& m) {
  HashChain hc;
  for (const auto& [name, t] : m.state_dict()) {
    hc.add(name);
    const Tensor c = t.contiguous();
    hc.add(std::string(dtype_name(c.dtype())) + shape_str(c.shape()));
    hc.add(c.raw_data(), c.nbytes());
  }
  return hc.h.hex();
}

// ---- embeddings ----

ClipEmbeddings embed_clips(beats::BeatsBackbone& model, const audio::Dataset& ds, const EmbedOptions& o) {
  const int64_t L = model.cfg.encoder_layers;
  SONAR_CHECK(o.layer >= 0 && o.layer <= L, "--replay-layer ", o.layer, ": the model has ", L,
              " blocks (1-based; 0 = the last)");
  SONAR_CHECK(std::isfinite(o.max_seconds) && o.max_seconds > 0, "embed_clips: max_seconds must be positive, got ",
              o.max_seconds);
  const int64_t layer = o.layer == 0 ? L : o.layer;
  const int64_t C = model.cfg.encoder_embed_dim, N = ds.size();

  std::string folder;
  if (!o.cache_dir.empty()) {
    folder = (fs::path(o.cache_dir) / (module_fingerprint(model) + "-L" + std::to_string(layer) + "-" +
                                       std::to_string(std::llround(o.max_seconds * 1000.0))))
                 .string();
  }

  ClipEmbeddings r;
  std::vector<std::optional<std::vector<float>>> rows(N);
  std::vector<std::string> entry(N);
  std::vector<int64_t> todo;
  for (int64_t i = 0; i < N; ++i) {
    const std::string& path = ds.items[i].path;
    if (!folder.empty()) {
      try {
        entry[i] = (fs::path(folder) / (audio::hash_file(path).hex() + ".npy")).string();
      } catch (const Error& e) {
        std::string reason = e.what();
        if (reason.rfind(path + ": ", 0) == 0) reason = reason.substr(path.size() + 2);
        r.skipped.emplace_back(path, reason);
        continue;
      }
      std::error_code ec;
      if (fs::exists(entry[i], ec)) {
        try {
          const Tensor t = load_npy(entry[i]);
          if (t.dtype() == DType::Float32 && t.dim() == 1 && t.size(0) == C) {
            const Tensor tc = t.contiguous();
            rows[i] = std::vector<float>(tc.data<float>(), tc.data<float>() + C);
            ++r.cached;
            continue;
          }
        } catch (const Error&) {
          // unreadable entry: computed again and rewritten
        }
      }
    }
    todo.push_back(i);
  }

  if (!todo.empty()) {
    const Clock::time_point t0 = Clock::now();
    audio::LoaderOptions lo;
    lo.batch_size = 1;  // one clip per pass: no padding, and an embedding never depends on its batch mates
    lo.crop = audio::CropMode::Full;
    lo.clip_seconds = o.max_seconds;
    lo.shuffle = false;
    lo.strict = false;
    lo.num_workers = o.workers;
    lo.prefetch_batches = 4;
    lo.keep_waveforms = false;
    lo.cache_dir = o.fbank_cache_dir;
    lo.min_seconds = ((model.cfg.input_patch_size - 1) * 160 + 400) / 16000.0;  // one patch
    std::mutex skip_mu;
    lo.on_bad_file = [&](const std::string& path, const std::string& reason) {
      std::lock_guard<std::mutex> lock(skip_mu);
      r.skipped.emplace_back(path, reason);
    };
    audio::DataLoader loader(ds.subset(todo), lo);
    const bool was_training = model.is_training();
    model.eval();
    ag::NoGradGuard no_grad;
    try {
      while (auto b = loader.next()) {
        std::vector<int64_t> real;
        std::vector<std::vector<float>> pooled = mean_pooled_features(model, *b, layer, &real);
        const int64_t B = static_cast<int64_t>(pooled.size());
        for (int64_t bi = 0; bi < B; ++bi) {
          const int64_t item = todo[b->indices[bi]];
          if (real[bi] == 0) {
            r.skipped.emplace_back(b->paths[bi], "no real patch to pool");
            continue;
          }
          std::vector<float> row = std::move(pooled[bi]);
          if (!folder.empty()) {
            Tensor t = from_vector(row, {C});
            if (o.deferred_writes) {
              o.deferred_writes->emplace_back(entry[item], t);
            } else {
              fs::create_directories(folder);
              save_npy(entry[item], t);
            }
          }
          rows[item] = std::move(row);
          ++r.computed;
          if (o.progress) o.progress(r.computed, static_cast<int64_t>(todo.size()));
        }
        if (o.stop && o.stop->load())
          throw Stopped(detail::concat("replay: stopped while embedding (", r.computed, " of ", todo.size(),
                                       " clips of ", ds.origin, " done",
                                       o.deferred_writes ? "" : ", kept in the cache", ")"));
      }
    } catch (...) {
      model.train(was_training);
      throw;
    }
    model.train(was_training);
    r.compute_seconds = seconds_since(t0);
  }

  for (int64_t i = 0; i < N; ++i)
    if (rows[i]) r.items.push_back(i);
  r.emb = Tensor::empty({static_cast<int64_t>(r.items.size()), C});
  float* out = r.emb.data<float>();
  for (size_t k = 0; k < r.items.size(); ++k) std::copy(rows[r.items[k]]->begin(), rows[r.items[k]]->end(), out + k * C);
  return r;
}

// ---- the extension ----

struct ReplayExtension::Impl {
  ReplayOptions o;
  Trainer* trainer = nullptr;
  audio::Dataset prior;
  std::vector<Stratum> strata;
  std::vector<double> cumulative;  // cumulative shares
  std::string strata_kind;         // "labels", "k-means" or "uniform"
  uint64_t draw_seed = 0;
  std::string fingerprint;
  std::vector<std::pair<std::string, std::string>> prior_skipped;

  // run settings (from the trainer)
  double crop_seconds = 10.0, max_clip_seconds = 60.0;
  int64_t nominal_batch = 0, nominal_replay = 0, total_steps = 0;  // global (all processes)
  // Data parallelism: this process loads and appends the slots [slot_begin, slot_begin + local_replay) of
  // every step's nominal_replay slots (all of them with one process).
  int rank = 0, ranks = 1;
  int64_t slot_begin = 0, local_replay = 0;
  int workers = 1, prefetch = 4;
  std::string fbank_cache, out_dir;

  // outputs
  bool plan_written = false;
  std::vector<std::pair<std::string, Tensor>> deferred;

  // background loading of the drawn clips
  struct Segment {
    std::unique_ptr<audio::DataLoader> loader;
    int64_t first = 0, steps = 0, next = 0;  // steps [first, first + steps); next: the step it yields next
  };
  Segment cur, ahead;

  // counters
  ReplayStats stats;
  int64_t interval_replayed = 0, interval_clips = 0;

  ReplayDraw draw(int64_t step, int64_t slot) const {
    SONAR_CHECK(!strata.empty(), "replay: no plan yet (attach first)");
    Generator g(random_bits(random_bits(draw_seed, static_cast<uint64_t>(step)), static_cast<uint64_t>(slot)));
    ReplayDraw d;
    const double u = g.next_uniform();
    auto it = std::upper_bound(cumulative.begin(), cumulative.end(), u);
    int64_t s = it - cumulative.begin();
    if (s >= static_cast<int64_t>(strata.size())) {  // rounding: the last stratum with a share
      s = static_cast<int64_t>(strata.size()) - 1;
      while (s > 0 && strata[s].share <= 0) --s;
    }
    d.stratum = s;
    const auto& m = strata[s].members;
    d.item = m[g.next_int(0, static_cast<int64_t>(m.size()))];
    d.crop_seed = g.next_u64();
    return d;
  }

  Segment open(int64_t first) const {
    Segment sg;
    sg.first = first;
    sg.next = first;
    sg.steps = std::min(o.segment_steps, total_steps - first);
    audio::Dataset ds;
    ds.origin = prior.origin + " (replayed)";
    for (int64_t t = first; t < first + sg.steps; ++t)
      for (int64_t j = slot_begin; j < slot_begin + local_replay; ++j) {
        audio::AudioItem it;
        it.path = prior.items[draw(t, j).item].path;
        ds.items.push_back(std::move(it));
      }
    audio::LoaderOptions lo;
    lo.batch_size = local_replay;
    lo.clip_seconds = max_clip_seconds;
    lo.crop = audio::CropMode::Full;
    lo.shuffle = false;
    lo.drop_last = false;
    lo.strict = true;  // every clip was read when the plan was made: one that fails now is an error
    lo.num_workers = workers;
    lo.prefetch_batches = prefetch;
    lo.keep_waveforms = false;
    lo.cache_dir = fbank_cache;
    lo.min_seconds = 0.0;
    sg.loader = std::make_unique<audio::DataLoader>(std::move(ds), lo);
    return sg;
  }

  // The local_replay crops of `step` (slots slot_begin...), [local_replay, Tc, F] and [local_replay, Tc].
  CropBatch crops(int64_t step) {
    const bool in_cur = cur.loader && step >= cur.next && step < cur.first + cur.steps;
    if (!in_cur) {
      if (ahead.loader && step >= ahead.next && step < ahead.first + ahead.steps) {
        cur = std::move(ahead);
      } else {
        cur = open(step);
      }
      ahead = Segment();
    }
    std::optional<audio::Batch> b;
    for (;;) {
      try {
        b = cur.loader->next();
      } catch (const Error& e) {
        SONAR_FAIL("replay: ", e.what());
      }
      SONAR_CHECK(b.has_value(), "replay: the loader of steps [", cur.first, ", ", cur.first + cur.steps,
                  ") ran dry before step ", step);
      cur.next = cur.first + b->index + 1;
      if (cur.first + b->index == step) break;
    }
    SONAR_CHECK(b->size() == local_replay, "replay: step ", step, " loaded ", b->size(), " clips, expected ",
                local_replay);
    const int64_t end = cur.first + cur.steps;
    if (!ahead.loader && end < total_steps && end - cur.next <= prefetch) ahead = open(end);
    std::vector<uint64_t> seeds(local_replay);
    for (int64_t j = 0; j < local_replay; ++j) seeds[j] = draw(step, slot_begin + j).crop_seed;
    return crop_windows(*b, crop_seconds, seeds);
  }

  // Process 0 alone writes (the others never collect deferred cache entries).
  void write_outputs() {
    if (rank != 0) return;
    for (const auto& [path, t] : deferred) {
      fs::create_directories(fs::path(path).parent_path());
      save_npy(path, t);
    }
    deferred.clear();
    if (plan_written) return;
    std::ostringstream csv;
    csv << "stratum,size,relevance,share,examples\n";
    for (const auto& s : strata) {
      std::string ex;
      for (size_t i = 0; i < s.members.size() && i < kExamplesPerStratum; ++i)
        ex += (i ? ";" : "") + prior.items[s.members[i]].path;
      csv << csv_field(s.name) << ',' << s.members.size() << ',' << fmt("%.6f", s.relevance) << ','
          << fmt("%.6f", s.share) << ',' << csv_field(ex) << '\n';
    }
    fs::create_directories(out_dir);
    write_file_atomic((fs::path(out_dir) / kReplayPlanFile).string(), csv.str());
    plan_written = true;
  }

  void compute_fingerprint() {
    HashChain hc;
    hc.add(o.mode);
    hc.add_value(draw_seed);
    hc.add_value(nominal_replay);
    for (const auto& it : prior.items) hc.add(absolute_path(it.path) + "\n");  // whatever the working folder
    for (const auto& s : strata) {
      hc.add(s.name);
      hc.add_value(s.share);
      hc.add(s.members.data(), s.members.size() * sizeof(int64_t));
    }
    fingerprint = hc.h.hex();
  }
};

ReplayExtension::ReplayExtension(ReplayOptions o) : impl_(std::make_shared<Impl>()) {
  validate(o);
  SONAR_CHECK(o.mode != "none", "replay mode 'none' means no replay: the replay extension is not used");
  SONAR_CHECK(!o.prior.empty(), "--replay ", o.mode, " needs the prior pool (--prior MANIFEST|DIR|LIST)");
  impl_->o = std::move(o);
  impl_->draw_seed = random_bits(impl_->o.seed, kDrawStream);
}

nlohmann::json ReplayExtension::config() const {
  const ReplayOptions& o = impl_->o;
  return {{"replay", o.mode},
          {"prior", absolute_path(o.prior)},
          {"prior-splits", o.prior_splits},
          {"strata", o.strata},
          {"replay-ratio", o.ratio},
          {"replay-floor", o.floor},
          {"replay-temperature", o.temperature},
          {"replay-layer", o.layer},
          {"replay-max-new-clips", o.max_new_clips},
          {"replay-center", o.center}};
}

void ReplayExtension::attach(Trainer& trainer) {
  Impl& m = *impl_;
  const ReplayOptions& o = m.o;
  m.trainer = &trainer;
  m.cur = Impl::Segment();
  m.ahead = Impl::Segment();
  m.stats = ReplayStats();
  m.interval_clips = m.interval_replayed = 0;
  m.plan_written = false;
  const PretrainOptions& p = trainer.options();
  m.crop_seconds = p.crop_seconds;
  m.max_clip_seconds = p.max_clip_seconds;
  m.total_steps = p.steps;
  m.workers = p.loader_workers;
  m.prefetch = std::max(1, p.prefetch_batches);
  m.fbank_cache = p.cache_dir;
  m.out_dir = p.out_dir;
  m.nominal_batch = std::min<int64_t>(p.batch_size, trainer.data().size());
  m.nominal_replay = std::llround(o.ratio * static_cast<double>(m.nominal_batch));
  const Distributed& dist = Distributed::world();
  m.rank = dist.rank();
  m.ranks = dist.size();
  m.slot_begin = m.nominal_replay * m.rank / m.ranks;
  m.local_replay = m.nominal_replay * (m.rank + 1) / m.ranks - m.slot_begin;

  // The pool, and the checks that need no model.
  m.prior = audio::read_source(o.prior);
  if (!o.prior_splits.empty()) m.prior = audio::select_split(m.prior, o.prior_splits);
  SONAR_CHECK(m.prior.size() > 0, "--prior ", o.prior, ": no audio clips", o.prior_splits.empty() ? "" :
              " in the selected splits (--prior-splits)");
  int64_t labelled = 0;
  for (const auto& it : m.prior.items) labelled += it.labels.empty() ? 0 : 1;
  if (o.mode == "stratified" && o.strata == "labels")
    SONAR_CHECK(labelled > 0, "--strata labels: the prior pool ", o.prior, " has no labels (use --strata K for ",
                "k-means clusters of the start model's embeddings, or --strata auto)");

  auto model = trainer.start_model();
  const int64_t L = model->cfg.encoder_layers;
  SONAR_CHECK(o.layer >= 0 && o.layer <= L, "--replay-layer ", o.layer, ": the model has ", L,
              " blocks (1-based; 0 = the last)");
  const int64_t layer = o.layer == 0 ? L : o.layer;

  // The cache: written now, unless it lies in a run folder the trainer has not created yet (nothing may be
  // written there before everything was read); then at the first step.
  const std::string cache = o.cache_dir.empty() ? (fs::path(p.out_dir) / "embeddings").string() : o.cache_dir;
  const bool defer = o.cache_dir.empty() && !fs::exists(p.out_dir);
  m.deferred.clear();
  // Every process computes (or reads) the same embeddings; only process 0 writes cache entries: the others
  // hand theirs to this list, which is dropped.
  std::vector<std::pair<std::string, Tensor>> not_written;

  if (o.mode == "uniform") {
    // No embeddings: read every clip once to leave out the unusable ones.
    audio::LoaderOptions lo;
    lo.batch_size = 1;
    lo.crop = audio::CropMode::Full;
    lo.clip_seconds = p.max_clip_seconds;
    lo.shuffle = false;
    lo.num_workers = p.loader_workers;
    lo.keep_waveforms = false;
    lo.compute_fbank = false;
    lo.min_seconds = ((model->cfg.input_patch_size - 1) * 160 + 400) / 16000.0;
    lo.on_bad_file = [&](const std::string& path, const std::string& reason) {
      m.prior_skipped.emplace_back(path, reason);
    };
    m.prior_skipped.clear();
    Stratum all;
    all.name = "all";
    audio::DataLoader loader(m.prior, lo);
    while (auto b = loader.next())
      for (int64_t i : b->indices) all.members.push_back(i);
    SONAR_CHECK(!all.members.empty(), "--prior ", o.prior, ": no usable clip among ", m.prior.size(),
                " (each must be readable audio of at least one patch): ", list_skipped(m.prior_skipped));
    all.relevance = 1.0;
    all.share = 1.0;
    m.strata = {all};
    m.strata_kind = "uniform";
    m.stats.prior_clips = m.prior.size();
    m.stats.prior_usable = static_cast<int64_t>(all.members.size());
  } else {
    EmbedOptions eo;
    eo.stop = p.stop;
    std::string what = "prior";
    Clock::time_point last_line = Clock::now(), started = Clock::now();
    eo.progress = [&](int64_t done, int64_t total) {
      if (seconds_since(last_line) < kEmbedProgressSeconds || done == total) return;
      last_line = Clock::now();
      const double el = seconds_since(started);
      trainer.log("replay: embedding " + what + " clips " + std::to_string(done) + "/" + std::to_string(total) +
                  " | elapsed " + format_duration(el) + " | left " +
                  format_duration(el / static_cast<double>(done) * static_cast<double>(total - done)));
    };
    eo.layer = layer;
    eo.max_seconds = p.max_clip_seconds;
    eo.cache_dir = cache;
    eo.fbank_cache_dir = p.cache_dir;
    eo.workers = p.loader_workers;
    eo.deferred_writes = m.rank != 0 ? &not_written : defer ? &m.deferred : nullptr;
    ClipEmbeddings pe = embed_clips(*model, m.prior, eo);
    m.prior_skipped = pe.skipped;
    SONAR_CHECK(!pe.items.empty(), "--prior ", o.prior, ": no usable clip among ", m.prior.size(),
                " (each must be readable audio of at least one patch): ", list_skipped(pe.skipped));

    // The new-domain sample.
    const audio::Dataset& data = trainer.data();
    std::vector<int64_t> pick;
    if (o.max_new_clips > 0 && data.size() > o.max_new_clips) {
      pick = audio::shuffled_indices(data.size(), random_bits(o.seed, kNewSampleStream));
      pick.resize(o.max_new_clips);
      std::sort(pick.begin(), pick.end());
    } else {
      pick.resize(data.size());
      std::iota(pick.begin(), pick.end(), 0);
    }
    what = "new-domain";
    started = Clock::now();
    ClipEmbeddings ne = embed_clips(*model, data.subset(pick), eo);
    SONAR_CHECK(!ne.items.empty(), "replay: none of the ", pick.size(), " new-domain clips sampled could be embedded: ",
                list_skipped(ne.skipped));

    m.stats.prior_clips = m.prior.size();
    m.stats.prior_usable = static_cast<int64_t>(pe.items.size());
    m.stats.new_embedded = static_cast<int64_t>(ne.items.size());
    m.stats.computed = pe.computed + ne.computed;
    m.stats.cached = pe.cached + ne.cached;
    m.stats.embed_seconds = pe.compute_seconds + ne.compute_seconds;
    {
      std::string line = "replay: embeddings (block " + std::to_string(layer) + " of " + std::to_string(L) + ") of " +
                         std::to_string(pe.items.size()) + " prior and " + std::to_string(ne.items.size()) +
                         " new-domain clips: " + std::to_string(m.stats.computed) + " computed";
      if (m.stats.computed > 0)
        line += " in " + fmt("%.1f", m.stats.embed_seconds) + " s (" +
                fmt("%.1f", 1000.0 * m.stats.embed_seconds / static_cast<double>(m.stats.computed)) + " ms per clip)";
      line += ", " + std::to_string(m.stats.cached) + " from the cache " + cache;
      trainer.log(line);
    }
    if (!ne.skipped.empty())
      trainer.log("replay: " + std::to_string(ne.skipped.size()) + " new-domain clips not embedded: " +
                  list_skipped(ne.skipped));

    // Geometry: centred (optionally) and normalised rows in double.
    const int64_t C = pe.emb.size(1), Np = pe.emb.size(0), Nn = ne.emb.size(0);
    std::vector<double> up = to_double(pe.emb, "prior embeddings"), un = to_double(ne.emb, "new embeddings");
    if (o.center) {
      std::vector<double> mean(C, 0.0);
      for (int64_t i = 0; i < Np; ++i)
        for (int64_t c = 0; c < C; ++c) mean[c] += up[i * C + c];
      for (double& v : mean) v /= static_cast<double>(Np);
      for (int64_t i = 0; i < Np; ++i)
        for (int64_t c = 0; c < C; ++c) up[i * C + c] -= mean[c];
      for (int64_t i = 0; i < Nn; ++i)
        for (int64_t c = 0; c < C; ++c) un[i * C + c] -= mean[c];
    }
    up = normalised_rows(up, Np, C);
    un = normalised_rows(un, Nn, C);

    // Strata: which rows (positions in pe.items) belong to each.
    std::vector<std::pair<std::string, std::vector<int64_t>>> groups;
    const double share_labelled = [&] {
      int64_t n = 0;
      for (int64_t it : pe.items) n += m.prior.items[it].labels.empty() ? 0 : 1;
      return static_cast<double>(n) / static_cast<double>(pe.items.size());
    }();
    const bool use_labels = o.strata == "labels" || (o.strata == "auto" && share_labelled >= kAutoLabelShare);
    if (use_labels) {
      std::map<std::string, std::vector<int64_t>> by_label;
      std::vector<int64_t> unlabelled;
      for (int64_t r = 0; r < Np; ++r) {
        const auto& labels = m.prior.items[pe.items[r]].labels;
        if (labels.empty()) unlabelled.push_back(r);
        std::vector<std::string> uniq(labels.begin(), labels.end());
        std::sort(uniq.begin(), uniq.end());
        uniq.erase(std::unique(uniq.begin(), uniq.end()), uniq.end());
        for (const auto& l : uniq) by_label[l].push_back(r);
      }
      SONAR_CHECK(!by_label.empty(), "--strata labels: no usable clip of the prior pool ", o.prior, " has a label");
      for (auto& [l, rows] : by_label) groups.emplace_back(l, std::move(rows));
      if (!unlabelled.empty()) groups.emplace_back("(unlabelled)", std::move(unlabelled));
      m.strata_kind = "labels";
    } else {
      int64_t K = o.strata == "auto" || o.strata == "labels" ? kAutoClusters : std::stoll(o.strata);
      if (K > Np) {
        trainer.log("replay: " + std::to_string(K) + " clusters asked but only " + std::to_string(Np) +
                    " usable prior clips; using " + std::to_string(Np));
        K = Np;
      }
      std::vector<float> uf(up.begin(), up.end());
      const std::vector<int64_t> a = kmeans_pp(from_vector(uf, {Np, C}), K, random_bits(o.seed, kKmeansStream));
      std::vector<std::vector<int64_t>> members(K);
      for (int64_t r = 0; r < Np; ++r) members[a[r]].push_back(r);
      for (int64_t k = 0; k < K; ++k)
        if (!members[k].empty()) groups.emplace_back("cluster-" + std::to_string(k), std::move(members[k]));
      m.strata_kind = "k-means";
    }

    // Centroids (means of the members' rows), relevance, shares.
    const int64_t S = static_cast<int64_t>(groups.size());
    std::vector<double> cent(S * C, 0.0);
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t r : groups[s].second)
        for (int64_t c = 0; c < C; ++c) cent[s * C + c] += up[r * C + c];
      for (int64_t c = 0; c < C; ++c) cent[s * C + c] /= static_cast<double>(groups[s].second.size());
    }
    const std::vector<double> rel = relevance_of(un, Nn, normalised_rows(cent, S, C), S, C, o.temperature);
    const std::vector<double> share = replay_shares(rel, o.floor);
    m.strata.clear();
    for (int64_t s = 0; s < S; ++s) {
      Stratum st;
      st.name = groups[s].first;
      for (int64_t r : groups[s].second) st.members.push_back(pe.items[r]);
      st.relevance = rel[s];
      st.share = share[s];
      m.strata.push_back(std::move(st));
    }
  }
  if (!m.prior_skipped.empty())
    trainer.log("replay: left out " + std::to_string(m.prior_skipped.size()) + " of " +
                std::to_string(m.prior.size()) + " prior clips: " + list_skipped(m.prior_skipped));

  m.cumulative.clear();
  double cum = 0;
  for (const auto& s : m.strata) m.cumulative.push_back(cum += s.share);
  m.compute_fingerprint();
  if (dist.multi()) {
    // The draws assume one plan: every process must have built the same one.
    const std::string root_plan = dist.broadcast(m.fingerprint);
    const bool differs = dist.any(root_plan != m.fingerprint);
    SONAR_CHECK(!differs, "replay: the processes built different replay plans (process 0: ", root_plan,
                ", process ", m.rank, ": ", m.fingerprint, "); the prior pool's files, the cache or the embeddings "
                "differ between processes (run every process with the same files and thread count)");
  }

  // The summary line.
  std::vector<size_t> order(m.strata.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return m.strata[a].share > m.strata[b].share; });
  std::string top;
  for (size_t i = 0; i < order.size() && i < 3; ++i)
    top += (i ? ", " : "") + m.strata[order[i]].name + " " + fmt("%.3f", m.strata[order[i]].share);
  std::string per_step = std::to_string(m.nominal_replay) + " prior clips per step (ratio " + fmt("%g", o.ratio) +
                         " x batch " + std::to_string(m.nominal_batch) + ")";
  if (m.nominal_replay == 0) per_step += ": the ratio rounds to no clip, nothing is replayed";
  if (o.mode == "uniform") {
    trainer.log("replay: uniform over " + std::to_string(m.stats.prior_usable) + " prior clips; " + per_step);
  } else {
    trainer.log("replay: stratified, " + std::to_string(m.strata.size()) + " strata (" + m.strata_kind + ") over " +
                std::to_string(m.stats.prior_usable) + " prior clips; top shares " + top + "; " + per_step);
  }
}

void ReplayExtension::on_batch(StepBatch& batch) {
  Impl& m = *impl_;
  SONAR_CHECK(m.trainer != nullptr, "replay: on_batch before attach");
  m.write_outputs();  // the run folder exists from the first step on
  const int64_t B = batch.fbank.size(0);
  // The global batch: every process holds the same number of new clips (the trainer splits full batches).
  const int64_t global_new = batch.new_clips * m.ranks;
  SONAR_CHECK(m.ranks == 1 || global_new == m.nominal_batch, "replay: process ", m.rank, " of ", m.ranks, " holds ",
              batch.new_clips, " new clips in step ", batch.step, ", expected ", m.nominal_batch / m.ranks,
              " (data parallelism needs equal shares of full batches)");
  const int64_t R = std::llround(m.o.ratio * static_cast<double>(global_new));
  SONAR_CHECK(R <= m.nominal_replay, "replay: ", global_new, " new clips in a step of a run whose batches hold ",
              m.nominal_batch);
  // This process's slots of the R: [lo, hi), a part of the slots it loads (all of them at full batches).
  const int64_t lo = R * m.rank / m.ranks, hi = R * (m.rank + 1) / m.ranks, local = hi - lo;
  SONAR_CHECK(lo >= m.slot_begin && hi <= m.slot_begin + m.local_replay, "replay: slots [", lo, ", ", hi,
              ") of step ", batch.step, " are not among the slots process ", m.rank, " loads");
  m.interval_clips += B + local;
  m.interval_replayed += local;
  m.stats.replayed += R;
  if (local == 0) return;
  const Clock::time_point t0 = Clock::now();
  CropBatch c = m.crops(batch.step);
  m.stats.wait_seconds += seconds_since(t0);
  SONAR_CHECK(c.fbank.size(1) == batch.fbank.size(1) && c.fbank.size(2) == batch.fbank.size(2),
              "replay: crops of ", shape_str(c.fbank.shape()), " do not fit the batch ", shape_str(batch.fbank.shape()));
  if (local < m.local_replay) {
    c.fbank = c.fbank.narrow(0, lo - m.slot_begin, local).contiguous();
    c.frame_mask = c.frame_mask.narrow(0, lo - m.slot_begin, local).contiguous();
  }
  Tensor mask = batch.frame_mask;
  if (!mask.defined()) {
    mask = Tensor::empty({B, batch.fbank.size(1)}, DType::Bool);
    mask.zero_();
  }
  batch.fbank = cat({batch.fbank, c.fbank}, 0);
  batch.frame_mask = cat({mask, c.frame_mask}, 0);
}

std::vector<std::pair<std::string, double>> ReplayExtension::progress() {
  Impl& m = *impl_;
  // Global: summed over the processes (every process calls progress at the same steps).
  int64_t counts[2] = {m.interval_replayed, m.interval_clips};
  Distributed::world().allreduce_sum(counts, 2);
  const double share = counts[1] > 0 ? static_cast<double>(counts[0]) / static_cast<double>(counts[1]) : 0.0;
  m.interval_clips = m.interval_replayed = 0;
  return {{"replay_share", share}};
}

void ReplayExtension::finish(const std::string&) {
  Impl& m = *impl_;
  m.write_outputs();
  if (m.trainer)
    m.trainer->log("replay: " + std::to_string(m.stats.replayed) + " prior clips replayed this session; the training "
                   "thread waited " + fmt("%.2f", m.stats.wait_seconds) + " s for them");
  m.cur = Impl::Segment();
  m.ahead = Impl::Segment();
}

void ReplayExtension::save_state(std::map<std::string, Tensor>&, std::map<std::string, std::string>& meta) const {
  meta["plan"] = impl_->fingerprint;
}

void ReplayExtension::load_state(const std::map<std::string, Tensor>&, const std::map<std::string, std::string>& meta) {
  auto it = meta.find("plan");
  SONAR_CHECK(it != meta.end(), "the checkpoint has no replay plan fingerprint");
  SONAR_CHECK(it->second == impl_->fingerprint, "the replay plan differs from the checkpoint's (plan ", it->second,
              " there, ", impl_->fingerprint, " now: the prior pool's files, their readability or the start model "
              "changed)");
}

const std::vector<Stratum>& ReplayExtension::plan() const { return impl_->strata; }
const audio::Dataset& ReplayExtension::prior_pool() const { return impl_->prior; }
ReplayDraw ReplayExtension::draw(int64_t step, int64_t slot) const { return impl_->draw(step, slot); }
std::string ReplayExtension::plan_fingerprint() const { return impl_->fingerprint; }
ReplayStats ReplayExtension::stats() const { return impl_->stats; }

}  // namespace sonar::method
