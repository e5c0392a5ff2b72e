// BEATs front end, feature extraction, classifier head and the official initialisation (see nn/beats/beats.h).
#include "nn/beats/beats.h"

#include <cmath>
#include <optional>

#include "audio/fbank.h"
#include "nn/init.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/precision.h"
#include "tensor/profile.h"
#include "tensor/reduce.h"

namespace sonar::beats {

Tensor preprocess(const Tensor& wave_in) {
  SONAR_CHECK(wave_in.defined() && wave_in.dtype() == DType::Float32, "BEATs preprocess: waveform must be float32");
  SONAR_CHECK(wave_in.dim() == 1 || wave_in.dim() == 2, "BEATs preprocess: waveform must be [S] or [B, S], got ",
              shape_str(wave_in.shape()));
  Tensor wave = wave_in.dim() == 1 ? wave_in.unsqueeze(0) : wave_in;
  profile::Scope timed("fbank");
  audio::FbankOptions opts;  // 128 bins, 25 ms / 10 ms at 16 kHz, input scaled by 2^15: BEATs' settings
  Tensor fb = audio::fbank_batch(wave.contiguous(), opts);
  return audio::normalize_fbank(fb, audio::kBeatsFbankMean, audio::kBeatsFbankStd);
}

// ---- BeatsBackbone ----

BeatsBackbone::BeatsBackbone(const BeatsConfig& c, const char* type_name) : nn::Module(type_name), cfg(c) {
  cfg.validate();
  // Registration order of the official module: post_extract_proj, patch_embedding, encoder, layer_norm.
  if (cfg.embed_dim != cfg.encoder_embed_dim)
    post_extract_proj = register_module("post_extract_proj", std::make_shared<nn::Linear>(cfg.embed_dim, cfg.encoder_embed_dim));
  nn::Conv2dOptions po;
  po.in_channels = 1;
  po.out_channels = cfg.embed_dim;
  po.kernel_size = {cfg.input_patch_size, cfg.input_patch_size};
  po.stride = {cfg.input_patch_size, cfg.input_patch_size};
  po.bias = cfg.conv_bias;
  patch_embedding = register_module("patch_embedding", std::make_shared<nn::Conv2d>(po));
  dropout_input = register_module("dropout_input", std::make_shared<nn::Dropout>(static_cast<float>(cfg.dropout_input)));
  encoder = register_module("encoder", std::make_shared<TransformerEncoder>(cfg));
  layer_norm = register_module("layer_norm", std::make_shared<nn::LayerNorm>(cfg.embed_dim));
}

ag::Var BeatsBackbone::embed_patches(const ag::Var& fbank, int64_t* time_patches, int64_t* freq_patches) {
  SONAR_CHECK(fbank.dim() == 3, "BEATs: fbank must be [B, T, F], got ", shape_str(fbank.shape()));
  const int64_t B = fbank.size(0), T = fbank.size(1), F = fbank.size(2), p = cfg.input_patch_size;
  SONAR_CHECK(T >= p && F >= p, "BEATs: the input has ", T, " frames x ", F, " mel bins; a patch needs ", p, " x ",
              p, " (a clip needs at least ", (p - 1) * 160 + 400, " samples at 16 kHz)");
  profile::Scope timed("patch_embedding");  // the convolution, the reshape and the layer norm
  ag::Var x = patch_embedding->forward(ag::unsqueeze(fbank, 1));  // [B, E, T/p, F/p]
  const int64_t tp = x.size(2), fp = x.size(3);
  if (time_patches) *time_patches = tp;
  if (freq_patches) *freq_patches = fp;
  x = ag::transpose(ag::reshape(x, {B, cfg.embed_dim, tp * fp}), 1, 2);  // [B, P, E], time-major patches
  return layer_norm->forward(x);
}

ag::Var BeatsBackbone::project(const ag::Var& patches) {
  profile::Scope timed("post_extract_proj");
  ag::Var x = post_extract_proj ? post_extract_proj->forward(patches) : patches;
  return dropout_input->forward(x);
}

Tensor BeatsBackbone::patch_mask_from_frames(const Tensor& frame_mask, int64_t tp, int64_t fp, PaddingMode mode) const {
  if (mode == PaddingMode::Official) return official_downsample_mask(frame_mask, tp * fp);
  return exact_patch_mask(lengths_from_mask(frame_mask), tp, fp, cfg.input_patch_size);
}

std::vector<Tensor> parameter_values(const nn::Module& m) {
  std::vector<Tensor> v;
  for (const ag::Var& p : m.parameters()) v.push_back(p.value());
  return v;
}

Features BeatsBackbone::forward_fbank(const ag::Var& fbank, const Tensor& frame_mask, const FeatureOptions& opts) {
  // bf16 products: every weight converted once for this forward (tensor/precision.h); nothing in float32.
  std::optional<Bf16WeightCache> bf16_weights;
  if (matmul_precision() == Precision::BF16) bf16_weights.emplace(parameter_values(*this));
  Features f;
  ag::Var x = embed_patches(fbank, &f.time_patches, &f.freq_patches);
  if (frame_mask.defined()) {
    SONAR_CHECK(frame_mask.dim() == 2 && frame_mask.size(0) == fbank.size(0) && frame_mask.size(1) == fbank.size(1),
                "BEATs: frame mask must be [B, T] = ", shape_str({fbank.size(0), fbank.size(1)}), ", got ",
                shape_str(frame_mask.shape()));
    f.padding_mask = patch_mask_from_frames(frame_mask, f.time_patches, f.freq_patches, opts.padding);
  }
  x = project(x);
  EncoderOptions eo;
  eo.layer_results = opts.layer_results;
  eo.num_layers = opts.num_layers;
  EncoderOutput out = encoder->forward(x, f.padding_mask, eo);
  f.x = out.x;
  f.layer_results = std::move(out.layer_results);
  return f;
}

Features BeatsBackbone::extract_features(const Tensor& wave, const Tensor& padding_mask, const FeatureOptions& opts) {
  Tensor fb = preprocess(wave);
  Tensor frame_mask;
  if (padding_mask.defined()) {
    const int64_t B = fb.size(0), S = wave.dim() == 1 ? wave.size(0) : wave.size(1);
    SONAR_CHECK(padding_mask.dim() == 2 && padding_mask.size(0) == B && padding_mask.size(1) == S,
                "BEATs: padding mask must be [B, S] = ", shape_str({B, S}), ", got ", shape_str(padding_mask.shape()));
    if (opts.padding == PaddingMode::Official) {
      frame_mask = official_downsample_mask(padding_mask, fb.size(1));  // official: samples -> frames
    } else {
      // Exact: a clip's real frames are those that fit whole in its real samples.
      std::vector<int64_t> lengths = lengths_from_mask(padding_mask);
      const int64_t T = fb.size(1);
      frame_mask = Tensor::empty({B, T}, DType::Bool);
      uint8_t* m = frame_mask.bytes();
      for (int64_t b = 0; b < B; ++b) {
        const int64_t real = audio::fbank_num_frames(lengths[b]);
        for (int64_t t = 0; t < T; ++t) m[b * T + t] = t >= real ? 1 : 0;
      }
    }
  }
  return forward_fbank(ag::Var(fb), frame_mask, opts);
}

void BeatsBackbone::reset_parameters(Generator& gen) {
  patch_embedding->reset_parameters(gen);  // PyTorch's Conv2d default (the official code keeps it)
  if (post_extract_proj) post_extract_proj->reset_parameters(gen);
  nn::init::ones_(layer_norm->weight.value());
  nn::init::zeros_(layer_norm->bias.value());

  const int64_t C = cfg.encoder_embed_dim;
  // pos_conv: N(0, sqrt(4 / (conv_pos * C))) weight, zero bias, then weight_norm(dim=2) splits it.
  auto conv = std::dynamic_pointer_cast<nn::Conv1d>((*encoder->pos_conv)[0]);
  nn::init::normal_(conv->weight_v.value(), 0.0, std::sqrt(4.0 / static_cast<double>(cfg.conv_pos * C)), gen);
  nn::init::zeros_(conv->bias.value());
  conv->weight_g.value().copy_(norm(conv->weight_v.value(), 2.0, {0, 1}, true));
  nn::init::ones_(encoder->layer_norm->weight.value());
  nn::init::zeros_(encoder->layer_norm->bias.value());

  // init_bert_params over the encoder: every Linear N(0, 0.02) with zero bias, every Embedding N(0, 0.02).
  for (const auto& [name, m] : encoder->named_modules()) {
    (void)name;
    auto* mm = const_cast<nn::Module*>(m.get());
    if (auto* lin = dynamic_cast<nn::Linear*>(mm)) {
      nn::init::normal_(lin->weight.value(), 0.0, 0.02, gen);
      if (lin->bias.defined()) nn::init::zeros_(lin->bias.value());
    } else if (auto* emb = dynamic_cast<nn::Embedding*>(mm)) {
      nn::init::normal_(emb->weight.value(), 0.0, 0.02, gen);
    } else if (auto* ln = dynamic_cast<nn::LayerNorm*>(mm)) {
      nn::init::ones_(ln->weight.value());
      nn::init::zeros_(ln->bias.value());
    }
  }
  for (size_t i = 0; i < encoder->layers->size(); ++i) {
    auto layer = encoder->layer(i);
    if (layer->self_attn->grep_a.defined()) nn::init::ones_(layer->self_attn->grep_a.value());
    if (cfg.deep_norm) {
      const double beta = std::pow(8.0 * static_cast<double>(cfg.encoder_layers), -0.25);
      auto& a = *layer->self_attn;
      nn::init::xavier_normal_(a.k_proj->weight.value(), 1.0, gen);
      nn::init::xavier_normal_(a.v_proj->weight.value(), beta, gen);
      nn::init::xavier_normal_(a.q_proj->weight.value(), 1.0, gen);
      nn::init::xavier_normal_(a.out_proj->weight.value(), beta, gen);
      auto fc1 = std::dynamic_pointer_cast<nn::Linear>(layer->fc1);
      if (!fc1) fc1 = std::dynamic_pointer_cast<GLULinear>(layer->fc1)->linear;
      nn::init::xavier_normal_(fc1->weight.value(), beta, gen);
      nn::init::xavier_normal_(layer->fc2->weight.value(), beta, gen);
    }
  }
}

// ---- BeatsModel ----

BeatsModel::BeatsModel(const BeatsConfig& c, Generator* gen) : BeatsBackbone(c, "BEATs") {
  if (cfg.finetuned_model) {
    predictor_dropout = register_module("predictor_dropout", std::make_shared<nn::Dropout>(static_cast<float>(cfg.predictor_dropout)));
    predictor = register_module("predictor", std::make_shared<nn::Linear>(cfg.encoder_embed_dim, cfg.predictor_class));
  }
  if (gen) {
    reset_parameters(*gen);
    if (predictor) predictor->reset_parameters(*gen);
  }
}

std::shared_ptr<nn::Module> BeatsModel::create_like() const {
  auto m = std::make_shared<BeatsModel>(cfg);
  m->labels = labels;
  return m;
}

Prediction BeatsModel::predict(const Features& f) {
  SONAR_CHECK(predictor != nullptr, "BEATs: this model has no classifier head (not a fine-tuned checkpoint)");
  profile::Scope timed("classifier");
  ag::Var logits = predictor->forward(predictor_dropout->forward(f.x));  // [B, P, K]
  const int64_t B = logits.size(0);
  Prediction out;
  const bool any_padding = f.padding_mask.defined() && any(f.padding_mask).item<bool>();
  if (any_padding) {
    // official: logits[padding_mask] = 0; sum over patches / number of unpadded patches.
    Tensor real = logical_not(f.padding_mask).to(DType::Float32);  // [B, P]
    Tensor count = sum(real, {1}, true);                          // [B, 1]
    const float* c = count.data<float>();
    for (int64_t b = 0; b < B; ++b)
      SONAR_CHECK(c[b] > 0.0f, "BEATs classifier: clip ", b, " has no unpadded patch (it is shorter than one patch)");
    ag::Var masked = ag::masked_fill(logits, f.padding_mask.unsqueeze(-1), 0.0f);
    out.logits = ag::div(ag::sum(masked, {1}), ag::Var(count));
  } else {
    out.logits = ag::mean(logits, {1});
  }
  out.probs = ag::sigmoid(out.logits);
  return out;
}

Prediction BeatsModel::classify(const Tensor& wave, const Tensor& padding_mask, const FeatureOptions& opts) {
  return predict(extract_features(wave, padding_mask, opts));
}

}  // namespace sonar::beats
