// NormEMA vector quantizer, cosine k-means and the random-projection tokenizer (see nn/beats/quantizer.h).
#include "nn/beats/quantizer.h"

#include <cmath>
#include <vector>

#include "autograd/ops.h"
#include "nn/init.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/index.h"
#include "tensor/matmul.h"
#include "tensor/reduce.h"

namespace sonar::beats {

namespace {
void check_rows(const Tensor& t, int64_t dim, const char* op) {
  SONAR_CHECK(t.defined() && t.dtype() == DType::Float32 && t.dim() == 2 && (dim < 0 || t.size(1) == dim), op,
              ": expected float32 [N, ", dim, "], got ", t.defined() ? shape_str(t.shape()) : "undefined");
}
}  // namespace

Tensor nearest_codes(const Tensor& z_in, const Tensor& codebook_in) {
  check_rows(codebook_in, -1, "nearest_codes (codebook)");
  check_rows(z_in, codebook_in.size(1), "nearest_codes");
  const Tensor z = z_in.contiguous(), w = codebook_in.contiguous();
  const int64_t N = z.size(0), K = w.size(0), D = z.size(1);
  // official: d = z.pow(2).sum(1, keepdim) + w.pow(2).sum(1) - 2 * (z @ w^T), all float32.
  Tensor zw = matmul(z, w, false, true);  // [N, K]
  const float* zp = z.data<float>();
  const float* wp = w.data<float>();
  const float* zwp = zw.contiguous().data<float>();
  std::vector<float> wsq(K);
  for (int64_t k = 0; k < K; ++k) {
    float s = 0.0f;
    for (int64_t j = 0; j < D; ++j) s += wp[k * D + j] * wp[k * D + j];
    wsq[k] = s;
  }
  Tensor out = Tensor::empty({N}, DType::Int64);
  int64_t* o = out.data<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    float zsq = 0.0f;
    for (int64_t j = 0; j < D; ++j) zsq += zp[n * D + j] * zp[n * D + j];
    int64_t best = 0;
    float best_d = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      const float d = (zsq + wsq[k]) - 2.0f * zwp[n * K + k];
      if (k == 0 || d < best_d) {
        best_d = d;
        best = k;
      }
    }
    o[n] = best;
  }
  return out;
}

KMeansResult kmeans_cosine(const Tensor& samples_in, int64_t k, int iters, Generator& gen) {
  check_rows(samples_in, -1, "kmeans_cosine");
  SONAR_CHECK(k > 0 && iters >= 0, "kmeans_cosine: need k > 0 and iters >= 0");
  const Tensor samples = samples_in.contiguous();
  const int64_t N = samples.size(0), D = samples.size(1);
  SONAR_CHECK(N > 0, "kmeans_cosine: no samples");
  // official sample_vectors: a random subset without replacement when there are enough samples.
  Tensor pick = N >= k ? randperm(N, gen).narrow(0, 0, k) : randint(0, N, {k}, gen);
  Tensor means = index_select(samples, 0, pick).contiguous();
  Tensor bins = zeros({k}, DType::Int64);
  const float* sp = samples.data<float>();
  for (int it = 0; it < iters; ++it) {
    Tensor buckets = argmax(matmul(samples, means, false, true), 1);  // nearest by dot product
    const int64_t* bp = buckets.data<int64_t>();
    std::vector<double> sums(k * D, 0.0);
    std::vector<int64_t> counts(k, 0);
    for (int64_t n = 0; n < N; ++n) {
      counts[bp[n]] += 1;
      for (int64_t j = 0; j < D; ++j) sums[bp[n] * D + j] += sp[n * D + j];
    }
    Tensor fresh = Tensor::empty({k, D});
    float* fp = fresh.data<float>();
    for (int64_t c = 0; c < k; ++c)
      for (int64_t j = 0; j < D; ++j)
        fp[c * D + j] = static_cast<float>(sums[c * D + j] / static_cast<double>(std::max<int64_t>(counts[c], 1)));
    fresh = l2_normalize(fresh, 1);
    float* mp = means.data<float>();
    const float* np = fresh.data<float>();
    for (int64_t c = 0; c < k; ++c)
      if (counts[c] > 0) std::copy(np + c * D, np + (c + 1) * D, mp + c * D);
    bins = from_vector(counts, {k});
  }
  return {means, bins};
}

// ---- EmbeddingEMA ----

EmbeddingEMA::EmbeddingEMA(int64_t K, int64_t D, bool km, Generator* gen)
    : nn::Module("EmbeddingEMA"), dim(D), kmeans_init(km) {
  SONAR_CHECK(K > 0 && D > 0, "EmbeddingEMA: sizes must be positive, got ", K, " x ", D);
  Tensor w = zeros({K, D});
  if (!km && gen) w = l2_normalize(randn({K, D}, *gen), 1);  // official: random normalised codes
  weight = register_buffer("weight", w);
  cluster_size = register_buffer("cluster_size", zeros({K}));
  embed_avg = register_buffer("embed_avg", w.clone());
  initted = register_buffer("initted", full({1}, km ? 0.0 : 1.0));
}

bool EmbeddingEMA::initialised() const { return initted.value().item<float>() != 0.0f; }

std::shared_ptr<nn::Module> EmbeddingEMA::create_like() const {
  return std::make_shared<EmbeddingEMA>(weight.size(0), dim, kmeans_init);
}

// ---- NormEMAVectorQuantizer ----

NormEMAVectorQuantizer::NormEMAVectorQuantizer(int64_t K, int64_t D, float b, float dcy, float e, bool km,
                                               Generator* gen)
    : nn::Module("NormEMAVectorQuantizer"), dim(D), beta(b), decay(dcy), eps(e) {
  SONAR_CHECK(dcy >= 0.0f && dcy <= 1.0f, "NormEMAVectorQuantizer: decay ", dcy, " outside [0, 1]");
  cluster_size = register_buffer("cluster_size", zeros({K}));
  embedding = register_module("embedding", std::make_shared<EmbeddingEMA>(K, D, km, gen));
}

std::shared_ptr<nn::Module> NormEMAVectorQuantizer::create_like() const {
  auto q = std::make_shared<NormEMAVectorQuantizer>(num_codes(), dim, beta, decay, eps, embedding->kmeans_init);
  q->update = update;
  q->track_usage_in_eval = track_usage_in_eval;
  return q;
}

void NormEMAVectorQuantizer::init_kmeans(const Tensor& samples, Generator& gen, int iters) {
  KMeansResult r = kmeans_cosine(samples, num_codes(), iters, gen);
  embedding->weight.value().copy_(r.means);
  embedding->cluster_size.value().copy_(r.bins);
  embedding->initted.value().fill_(1.0);
}

QuantizerOutput NormEMAVectorQuantizer::forward(const ag::Var& z_in) {
  SONAR_CHECK(z_in.dim() >= 1 && z_in.size(-1) == dim, "NormEMAVectorQuantizer: input must end in ", dim,
              ", got ", shape_str(z_in.shape()));
  QuantizerOutput out;
  out.z = ag::l2_normalize(z_in, -1);
  const Tensor flat = out.z.value().reshape({-1, dim}).contiguous();  // [N, D]
  const int64_t N = flat.size(0), K = num_codes();
  if (is_training() && !initialised()) init_kmeans(flat, nn::rng());  // official: k-means on the first batch
  out.indices = nearest_codes(flat, codebook());
  Tensor zq = index_select(codebook(), 0, out.indices).reshape(out.z.shape());

  const int64_t* idx = out.indices.data<int64_t>();
  std::vector<float> counts(K, 0.0f);
  for (int64_t n = 0; n < N; ++n) counts[idx[n]] += 1.0f;
  const Tensor bins = from_vector(counts, {K});
  Tensor& usage_t = cluster_size.value();
  if (!is_training() && track_usage_in_eval) {
    usage_t.copy_(add(mul(usage_t, decay), mul(bins, 1.0f - decay)));
  }
  if (is_training() && update) {
    usage_t.copy_(add(mul(usage_t, decay), mul(bins, 1.0f - decay)));
    // Normalised mean of the inputs assigned to each code; codes with no input keep their value.
    std::vector<double> sums(K * dim, 0.0);
    const float* fp = flat.data<float>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < dim; ++j) sums[idx[n] * dim + j] += fp[n * dim + j];
    Tensor mean_t = Tensor::empty({K, dim});
    float* mp = mean_t.data<float>();
    for (int64_t k = 0; k < K; ++k) {
      const double c = counts[k] > 0.0f ? counts[k] : 1.0;
      for (int64_t j = 0; j < dim; ++j) mp[k * dim + j] = static_cast<float>(sums[k * dim + j] / c);
    }
    mean_t = l2_normalize(mean_t, 1);
    Tensor& w = embedding->weight.value();
    Tensor target = where(eq(bins, zeros({K})).unsqueeze(1), w, mean_t);
    w.copy_(l2_normalize(add(mul(w, decay), mul(target, 1.0f - decay)), 1));
  }
  // loss = beta * mse(z_q.detach(), z); straight-through z_q = z + (z_q - z).detach().
  ag::Var zq_const(zq);
  out.loss = ag::mul(ag::mean(ag::pow(ag::sub(zq_const, out.z), 2.0f)), beta);
  out.z_q = ag::add(out.z, ag::Var(sub(zq, out.z.value())));
  return out;
}

void NormEMAVectorQuantizer::resize(int64_t new_k) {
  SONAR_CHECK(new_k > 0, "NormEMAVectorQuantizer::resize: size must be positive, got ", new_k);
  const int64_t old_k = num_codes(), keep = std::min(old_k, new_k);
  auto resized = [&](const Tensor& t) {
    Shape s = t.shape();
    s[0] = new_k;
    Tensor r = zeros(s, t.dtype());
    if (keep > 0) r.narrow(0, 0, keep).copy_(t.narrow(0, 0, keep));
    return r;
  };
  embedding->weight.value() = resized(embedding->weight.value());
  embedding->cluster_size.value() = resized(embedding->cluster_size.value());
  embedding->embed_avg.value() = resized(embedding->embed_avg.value());
  cluster_size.value() = resized(cluster_size.value());
}

void NormEMAVectorQuantizer::replace_codes(const Tensor& indices, const Tensor& vectors, float usage) {
  SONAR_CHECK(indices.dtype() == DType::Int64 && indices.dim() == 1, "replace_codes: indices must be int64 [n]");
  check_rows(vectors, dim, "replace_codes");
  SONAR_CHECK(vectors.size(0) == indices.size(0), "replace_codes: ", indices.size(0), " indices but ",
              vectors.size(0), " vectors");
  const Tensor v = l2_normalize(vectors.contiguous(), 1);
  const Tensor ic = indices.contiguous();
  const int64_t* ip = ic.data<int64_t>();
  for (int64_t i = 0; i < ic.size(0); ++i) {
    SONAR_CHECK(ip[i] >= 0 && ip[i] < num_codes(), "replace_codes: index ", ip[i], " outside [0, ", num_codes(), ")");
    embedding->weight.value().select(0, ip[i]).copy_(v.select(0, i));
    embedding->embed_avg.value().select(0, ip[i]).copy_(v.select(0, i));
    cluster_size.value().select(0, ip[i]).fill_(usage);
  }
}

void NormEMAVectorQuantizer::before_load(const std::string& prefix, const std::map<std::string, Tensor>& source) {
  auto it = source.find(prefix + "embedding.weight");
  if (it == source.end() || it->second.dim() != 2 || it->second.size(1) != dim) return;
  if (it->second.size(0) != num_codes()) resize(it->second.size(0));
}

// ---- RandomProjectionTokenizer ----

RandomProjectionTokenizer::RandomProjectionTokenizer(int64_t p, int64_t K, int64_t D, Generator* gen)
    : nn::Module("RandomProjectionTokenizer"), patch_size(p), num_codes(K), dim(D) {
  SONAR_CHECK(p > 0 && K > 0 && D > 0, "RandomProjectionTokenizer: sizes must be positive");
  Tensor proj = zeros({D, p * p}), codes = zeros({K, D});
  if (gen) {
    nn::init::xavier_normal_(proj, 1.0, *gen);
    codes = l2_normalize(randn({K, D}, *gen), 1);
  }
  projection = register_buffer("projection", proj);
  codebook = register_buffer("codebook", codes);
}

std::shared_ptr<nn::Module> RandomProjectionTokenizer::create_like() const {
  return std::make_shared<RandomProjectionTokenizer>(patch_size, num_codes, dim);
}

Tensor RandomProjectionTokenizer::patches(const Tensor& fbank_in) const {
  SONAR_CHECK(fbank_in.defined() && fbank_in.dtype() == DType::Float32 && fbank_in.dim() == 3,
              "RandomProjectionTokenizer: fbank must be float32 [B, T, F]");
  const int64_t B = fbank_in.size(0), T = fbank_in.size(1), F = fbank_in.size(2), p = patch_size;
  const int64_t tp = T / p, fp = F / p;
  SONAR_CHECK(tp > 0 && fp > 0, "RandomProjectionTokenizer: ", T, " x ", F, " fbank is smaller than one ", p, " x ",
              p, " patch");
  // [B, tp, p, fp, p] -> [B, tp, fp, p, p] -> [B, P, p*p]
  Tensor x = fbank_in.narrow(1, 0, tp * p).narrow(2, 0, fp * p).reshape({B, tp, p, fp, p});
  return x.permute({0, 1, 3, 2, 4}).contiguous().reshape({B, tp * fp, p * p});
}

Tensor RandomProjectionTokenizer::project(const Tensor& fbank) const {
  Tensor x = patches(fbank);
  return l2_normalize(linear(x, projection.value(), Tensor()), -1);
}

Tensor RandomProjectionTokenizer::labels(const Tensor& fbank) const {
  Tensor z = project(fbank);
  const int64_t B = z.size(0), P = z.size(1);
  return nearest_codes(z.reshape({B * P, dim}), codebook.value()).reshape({B, P});
}

}  // namespace sonar::beats
