// BEATs models: the shared front end and encoder (BeatsBackbone) and the BEATs model with its optional
// fine-tuned classifier head (BeatsModel), computing exactly what the official BEATs.py computes.
//
// Shapes (B clips, S samples at 16 kHz, T fbank frames, F = 128 mel bins, p = input_patch_size,
// E = embed_dim, C = encoder_embed_dim, P = (T / p) * (F / p) patches, time-major: patch = t * (F / p) + f):
//   wave [B, S] --fbank (x 2^15, Kaldi, 128 bins), (x - 15.41663) / (2 * 6.55582)--> [B, T, F]
//   --patch_embedding (Conv2d 1 -> E, kernel = stride = p; leftover frames dropped)--> [B, E, T/p, F/p]
//   --flatten, transpose--> [B, P, E] --layer_norm--> --post_extract_proj (when E != C)--> [B, P, C]
//   --encoder (nn/beats/encoder.h)--> [B, P, C]
//   fine-tuned head: predictor (Linear C -> classes) per patch, mean over unpadded patches, sigmoid.
//
// Not here: the tokenizer (nn/beats/tokenizer.h) or checkpoint files (nn/beats/checkpoint.h).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nn/beats/config.h"
#include "nn/beats/encoder.h"
#include "nn/beats/padding.h"
#include "nn/layers.h"

namespace sonar::beats {

constexpr int64_t kSampleRate = 16000;
constexpr int64_t kMelBins = 128;

// wave float32 [B, S] (or [S]) at 16 kHz in [-1, 1] -> normalised fbank [B, T, 128], each row's fbank
// computed over the whole row (padding included), as the official preprocess does.
Tensor preprocess(const Tensor& wave);

struct FeatureOptions {
  PaddingMode padding = PaddingMode::Official;
  bool layer_results = false;  // fill Features::layer_results (see EncoderOptions)
  int64_t num_layers = 0;      // stop after this many blocks (0 = all)
};

struct Features {
  ag::Var x;                           // [B, P, C]
  Tensor padding_mask;                 // bool [B, P] (1 = padding); undefined when no mask was given
  std::vector<ag::Var> layer_results;  // [0] = encoder input, [i] = output of block i (when requested)
  int64_t time_patches = 0, freq_patches = 0;
};

// The layers BEATs.py and Tokenizers.py share, with their names: post_extract_proj, patch_embedding,
// encoder, layer_norm.
class BeatsBackbone : public nn::Module {
 public:
  BeatsBackbone(const BeatsConfig& cfg, const char* type_name);

  // fbank [B, T, F] (normalised) -> layer-normalised patch embeddings [B, P, E].
  ag::Var embed_patches(const ag::Var& fbank, int64_t* time_patches = nullptr, int64_t* freq_patches = nullptr);
  // Patch embeddings [B, P, E] -> encoder input width [B, P, C] (post_extract_proj and input dropout).
  ag::Var project(const ag::Var& patches);
  // The whole feature path from a normalised fbank. frame_mask bool/uint8 [B, T] (1 = padded frame) or
  // undefined. In exact mode the mask must be trailing padding.
  Features forward_fbank(const ag::Var& fbank, const Tensor& frame_mask, const FeatureOptions& opts = {});
  // From waveforms [B, S] (or [S]) with an optional sample-level padding mask [B, S] (1 = padding).
  Features extract_features(const Tensor& wave, const Tensor& padding_mask = Tensor(),
                            const FeatureOptions& opts = {});
  // Patch-level mask for a frame-level mask (official: the quirky downsampling; exact: true lengths).
  Tensor patch_mask_from_frames(const Tensor& frame_mask, int64_t time_patches, int64_t freq_patches,
                                PaddingMode mode) const;

  // The official initialisation of a fresh model (patch embedding and projections with PyTorch defaults,
  // encoder with init_bert_params, weight-normalised positional convolution, deep-norm xavier gains).
  void reset_parameters(Generator& gen);

  const BeatsConfig cfg;
  std::shared_ptr<nn::Linear> post_extract_proj;  // null when embed_dim == encoder_embed_dim
  std::shared_ptr<nn::Conv2d> patch_embedding;
  std::shared_ptr<nn::Dropout> dropout_input;
  std::shared_ptr<TransformerEncoder> encoder;
  std::shared_ptr<nn::LayerNorm> layer_norm;
};

// The current values of m's parameters (for a Bf16WeightCache over a forward or a training step).
std::vector<Tensor> parameter_values(const nn::Module& m);

// Pooled classifier output.
struct Prediction {
  ag::Var logits;  // [B, classes], averaged over unpadded patches
  ag::Var probs;   // sigmoid(logits)
};

// BEATs.py: the backbone plus, when cfg.finetuned_model, predictor_dropout and predictor.
class BeatsModel : public BeatsBackbone {
 public:
  // gen: initialise as the official code does; null: zeros, to be loaded from a checkpoint.
  explicit BeatsModel(const BeatsConfig& cfg, Generator* gen = nullptr);
  bool has_predictor() const { return predictor != nullptr; }
  // The fine-tuned head over features (official pooling: masked patches excluded when any is masked).
  Prediction predict(const Features& f);
  // extract_features + predict.
  Prediction classify(const Tensor& wave, const Tensor& padding_mask = Tensor(), const FeatureOptions& opts = {});

  std::shared_ptr<nn::Dropout> predictor_dropout;
  std::shared_ptr<nn::Linear> predictor;
  // The checkpoint's label_dict: class index -> label (empty when the checkpoint had none).
  std::map<int64_t, std::string> labels;

 protected:
  std::shared_ptr<nn::Module> create_like() const override;
};

}  // namespace sonar::beats
