// Fixtures shared by the BEATs test programs (tests/nn/test_beats_*.cpp): a small BEATs configuration (2 blocks,
// 32 wide, 16 x 8 codebook, every switch of BEATs on) and normalised fbanks of synthetic clips. Each test passes
// its own dropout, clip kinds and seed, so each computes what it did. Header-only and test-only; not a test
// itself.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "audio/synth_corpus.h"
#include "nn/beats/beats.h"
#include "nn/beats/config.h"
#include "tensor/creation.h"

namespace sonar::testutil {

// The small BEATs of the tests: patches of 16, 24-wide patch embedding, 2 deep-norm post-norm blocks 32 wide
// (FFN 64, 4 heads) with gated relative positions (32 buckets, distance 64), a 16-wide convolutional position
// embedding in 4 groups, a 16 x 8 codebook. `dropout` is the residual dropout; all other dropouts are off.
inline beats::BeatsConfig small_beats_config(double dropout) {
  beats::BeatsConfig c;
  c.input_patch_size = 16;
  c.embed_dim = 24;
  c.encoder_layers = 2;
  c.encoder_embed_dim = 32;
  c.encoder_ffn_embed_dim = 64;
  c.encoder_attention_heads = 4;
  c.deep_norm = true;
  c.layer_norm_first = false;
  c.relative_position_embedding = true;
  c.num_buckets = 32;
  c.max_distance = 64;
  c.gru_rel_pos = true;
  c.conv_pos = 16;
  c.conv_pos_groups = 4;
  c.dropout = dropout;
  c.attention_dropout = c.activation_dropout = c.dropout_input = c.encoder_layerdrop = 0.0;
  c.quant_n = 16;
  c.quant_dim = 8;
  return c;
}

// Normalised fbank [clips, T, 128] of synthetic clips `seconds` long: clip i is kinds[i % kinds.size()] (domain,
// class) rendered with source seed `seed` + i and clip seed 31 `seed` + i.
inline Tensor synth_fbank(int64_t clips, double seconds, uint64_t seed,
                          const std::vector<std::pair<std::string, std::string>>& kinds) {
  const int64_t S = static_cast<int64_t>(std::llround(seconds * 16000));
  Tensor wave = zeros({clips, S});
  for (int64_t i = 0; i < clips; ++i) {
    const auto& [dom, cls] = kinds[i % kinds.size()];
    audio::SynthClip c = audio::synth_render(dom, cls, seed + i, seed * 31 + i, seconds);
    std::copy(c.samples.begin(), c.samples.begin() + S, wave.data<float>() + i * S);
  }
  return beats::preprocess(wave);
}

}  // namespace sonar::testutil
