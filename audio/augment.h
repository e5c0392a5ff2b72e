// Augmentation for fine-tuning on fbank batches: SpecAugment frequency and time masks, time roll, and mixup
// (inputs and label targets mixed with the same weights). Every function draws from a sonar::Generator, so
// a seed fixes the result. Masks respect padding: time masks and rolls stay inside each clip's real frames
// (frame_mask, 1 = padding). Not the loader (audio/loader.h) and not waveform-level effects.
#pragma once
#include <cstdint>
#include <vector>

#include "audio/loader.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

namespace sonar::audio {

struct SpecAugmentOptions {
  int freq_masks = 2;        // masks per clip
  int max_freq_width = 24;   // each width uniform in [0, max] mel bins (AST/BEATs fine-tuning: 24 of 128)
  int time_masks = 2;
  int max_time_width = 96;   // frames (0.96 s); clipped to the clip's real length
  float mask_value = 0.0f;   // 0 is the dataset mean after normalisation
};

// In place on a contiguous float32 fbank [B, T, F]. frame_mask: bool [B, T] or undefined (no padding).
void spec_augment_(Tensor& fbank, const Tensor& frame_mask, const SpecAugmentOptions& opts, Generator& gen);

// In place: each clip's real frames are rotated along time by a shift uniform in [-max_shift, max_shift]
// (max_shift <= 0: any shift), padding frames untouched. Returns the shifts used.
std::vector<int64_t> time_roll_(Tensor& fbank, const Tensor& frame_mask, int64_t max_shift, Generator& gen);

// A Beta(a, b) draw (two Gamma draws, Marsaglia-Tsang).
double sample_beta(double a, double b, Generator& gen);

struct MixupResult {
  Tensor inputs;                 // lambda * x + (1 - lambda) * x[partner]
  Tensor targets;                // the same mix of the targets (undefined if none were given)
  Tensor mask;                   // padding only where both clips are padding (undefined if none given)
  std::vector<int64_t> partner;  // a seeded permutation of the batch
  std::vector<float> lambda;     // per example (all equal unless per_example)
};
// x: float32 [B, ...]; targets: float32 [B, C] or undefined; mask: bool [B, ...] or undefined.
// lambda ~ Beta(alpha, alpha), one per batch or one per example. alpha <= 0 disables mixing (lambda = 1).
MixupResult mixup(const Tensor& x, const Tensor& targets, const Tensor& mask, double alpha, Generator& gen,
                  bool per_example = false);
// Applies an earlier draw to another tensor of the same batch (e.g. the waveforms).
Tensor mixup_apply(const Tensor& x, const std::vector<int64_t>& partner, const std::vector<float>& lambda);

// Everything at once on a loader batch (fbank, masks, targets; the waveforms too when present).
struct AugmentOptions {
  bool spec_augment = true;
  SpecAugmentOptions spec;
  bool time_roll = false;
  int64_t max_roll = 0;
  double mixup_alpha = 0.0;   // > 0 enables mixup (BEATs fine-tuning uses 0.8 on AudioSet)
  double mixup_prob = 1.0;    // chance that a given batch is mixed
  bool mixup_per_example = false;
};
void augment_batch_(Batch& batch, const AugmentOptions& opts, Generator& gen);

}  // namespace sonar::audio
