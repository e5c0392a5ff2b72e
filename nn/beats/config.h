// BeatsConfig: every field of the official BEATsConfig and TokenizersConfig (microsoft/unilm beats/), with the
// official defaults, read from a checkpoint's `cfg` dict or from this project's JSON, plus the kind of
// model a checkpoint holds. Unknown keys are kept (the official code accepts any) and reported by
// `sonar info`. Not here: building models (nn/beats/beats.h, tokenizer.h) or reading files (checkpoint.h).
#pragma once
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "nn/pickle.h"

namespace sonar::beats {

enum class ModelKind {
  Pretrained,                 // BEATs encoder (BEATs.py, finetuned_model = False)
  Finetuned,                  // BEATs encoder + predictor head + label_dict
  Tokenizer,                  // BEATs-shaped encoder + quantize_layer + NormEMA codebook (Tokenizers.py)
  RandomProjectionTokenizer,  // iteration-0 tokenizer: frozen random projection + random codebook
};
const char* kind_name(ModelKind k);  // "pretrained", "finetuned", "tokenizer", "random_projection_tokenizer"
ModelKind kind_from_name(const std::string& name);  // throws naming the value

struct BeatsConfig {
  // patch embedding
  int64_t input_patch_size = -1;  // patches are input_patch_size x input_patch_size over (frames x mel bins)
  int64_t embed_dim = 512;        // patch embedding width
  bool conv_bias = false;
  // transformer
  int64_t encoder_layers = 12;
  int64_t encoder_embed_dim = 768;
  int64_t encoder_ffn_embed_dim = 3072;
  int64_t encoder_attention_heads = 12;
  std::string activation_fn = "gelu";  // gelu, gelu_accurate (gelu_fast), relu, tanh, linear, glu
  double layer_wise_gradient_decay_ratio = 1.0;
  bool layer_norm_first = false;  // pre-LN blocks
  bool deep_norm = false;         // post-LN with residual scaled by (2 * layers)^(1/4)
  // dropouts
  double dropout = 0.1;
  double attention_dropout = 0.1;
  double activation_dropout = 0.0;
  double encoder_layerdrop = 0.0;
  double dropout_input = 0.0;
  // convolutional positional embedding
  int64_t conv_pos = 128;
  int64_t conv_pos_groups = 16;
  // relative position bias
  bool relative_position_embedding = false;
  int64_t num_buckets = 320;
  int64_t max_distance = 1280;
  bool gru_rel_pos = false;
  // fine-tuned classifier head
  bool finetuned_model = false;
  double predictor_dropout = 0.1;
  int64_t predictor_class = 527;
  // tokenizer quantizer
  int64_t quant_n = 1024;
  int64_t quant_dim = 256;

  // Keys of the source dict this struct has no field for, rendered as text (Python repr or JSON).
  std::map<std::string, std::string> extra;

  // Field-by-field update from an official `cfg` dict (bools may be given as 0/1 ints, floats as ints).
  // Throws naming the key and both types when a value has the wrong type.
  static BeatsConfig from_pyvalue(const PyValue& cfg);
  static BeatsConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;  // every field (and `extra` as strings)

  // Throws sonar::Error naming the field when the configuration cannot describe a model.
  void validate() const;

  int64_t head_dim() const { return encoder_embed_dim / encoder_attention_heads; }
  // (2 * layers)^(1/4) with deep norm, else 1.
  double deep_norm_alpha() const;
};

// Human-readable multi-line rendering for `sonar info`.
std::string describe(const BeatsConfig& cfg, ModelKind kind);

}  // namespace sonar::beats
