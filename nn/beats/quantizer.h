// Codebook quantizers for BEATs tokenizers.
//
// NormEMAVectorQuantizer is the official quantizer.py: inputs are L2-normalised, each goes to the nearest
// code (squared distance to L2-normalised codes, i.e. the largest cosine), the straight-through output
// carries the input's gradient, the loss is beta * mse(code, input), and in training the codes follow an
// EMA of the normalised mean of their assigned inputs (renormalised), with per-code usage (cluster_size)
// tracked by EMA. A codebook that is not yet initialised is set by cosine k-means on the first batch.
// For the online clustered codebook (sonar/), the codebook can be resized (grow: new codes start unused;
// shrink: codes past the new size are dropped) and individual codes replaced.
//
// RandomProjectionTokenizer is the iteration-0 tokenizer: a frozen random projection of each flattened
// fbank patch and a frozen random codebook; the label is the nearest code by cosine.
//
// Not here: the encoder that feeds the quantizer (nn/beats/tokenizer.h).
#pragma once
#include <memory>

#include "nn/module.h"

namespace sonar::beats {

// Cosine k-means of the official quantizer.py: `iters` rounds of assign-by-dot-product / mean /
// L2-normalise, empty clusters keeping their previous mean. samples [N, D] (L2-normalised).
struct KMeansResult {
  Tensor means;  // [k, D]
  Tensor bins;   // int64 [k]: samples assigned to each mean in the last round
};
KMeansResult kmeans_cosine(const Tensor& samples, int64_t k, int iters, Generator& gen);

// Index of the nearest code for each row: argmin_k (|z|^2 + |w_k|^2 - 2 z.w_k), computed in float32 in the
// official order, first index on ties. z [N, D], codebook [K, D]; returns int64 [N].
Tensor nearest_codes(const Tensor& z, const Tensor& codebook);

// The codebook state, named as official (quantize.embedding.*). All four are buffers (never trained by
// gradients): weight [K, D], cluster_size [K], embed_avg [K, D], initted [1] (1 when initialised).
class EmbeddingEMA : public nn::Module {
 public:
  EmbeddingEMA(int64_t num_tokens, int64_t dim, bool kmeans_init, Generator* gen = nullptr);
  bool initialised() const;
  ag::Var weight, cluster_size, embed_avg, initted;
  const int64_t dim;
  const bool kmeans_init;

 protected:
  std::shared_ptr<nn::Module> create_like() const override;
};

struct QuantizerOutput {
  ag::Var z;        // the L2-normalised input [..., D]
  ag::Var z_q;      // straight-through quantised output: value = code, gradient = identity to z
  ag::Var loss;     // beta * mean((code - z)^2), gradient to z only
  Tensor indices;   // int64 [N] over the flattened leading dims
};

class NormEMAVectorQuantizer : public nn::Module {
 public:
  NormEMAVectorQuantizer(int64_t num_codes, int64_t dim, float beta = 1.0f, float decay = 0.99f, float eps = 1e-5f,
                         bool kmeans_init = true, Generator* gen = nullptr);

  // z [..., D] (not yet normalised). Training mode with `update` on: k-means init if needed, EMA updates.
  QuantizerOutput forward(const ag::Var& z);

  int64_t num_codes() const { return embedding->weight.size(0); }
  const Tensor& codebook() const { return embedding->weight.value(); }  // [K, D]
  const Tensor& usage() const { return cluster_size.value(); }           // [K] EMA of assignments
  bool initialised() const { return embedding->initialised(); }

  // Sets the codebook from data by cosine k-means (what the first training batch does when uninitialised).
  void init_kmeans(const Tensor& samples, Generator& gen, int iters = 10);
  // Grows (new codes zero, unused) or shrinks the codebook and every per-code state.
  void resize(int64_t new_num_codes);
  // Replaces codes `indices` (int64 [n]) by `vectors` [n, D] (L2-normalised here) with usage `usage`.
  void replace_codes(const Tensor& indices, const Tensor& vectors, float usage);

  std::shared_ptr<EmbeddingEMA> embedding;
  ag::Var cluster_size;  // [K], the official statistic_code_usage buffer
  const int64_t dim;
  const float beta, decay, eps;
  bool update = true;               // EMA updates in training (official embedding.update)
  bool track_usage_in_eval = true;  // official: usage EMA is updated in eval mode too

 protected:
  std::shared_ptr<nn::Module> create_like() const override;
  // A checkpoint whose codebook has a different size resizes this one first.
  void before_load(const std::string& prefix, const std::map<std::string, Tensor>& source) override;
};

// The iteration-0 tokenizer: buffers projection [D, p*p] (xavier normal) and codebook [K, D] (normal,
// L2-normalised), both frozen. A patch is flattened frame-major (16 frames x 16 bins -> 256 values).
class RandomProjectionTokenizer : public nn::Module {
 public:
  RandomProjectionTokenizer(int64_t patch_size, int64_t num_codes, int64_t dim, Generator* gen = nullptr);
  // fbank [B, T, F] (normalised) -> labels int64 [B, P], patches time-major as in BEATs.
  Tensor labels(const Tensor& fbank) const;
  // The normalised projections [B, P, D] the labels are the nearest codes of.
  Tensor project(const Tensor& fbank) const;
  // Flattened patches [B, P, p*p].
  Tensor patches(const Tensor& fbank) const;

  const int64_t patch_size, num_codes, dim;
  ag::Var projection, codebook;

 protected:
  std::shared_ptr<nn::Module> create_like() const override;
};

}  // namespace sonar::beats
