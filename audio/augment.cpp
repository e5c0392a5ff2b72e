// SpecAugment masks, time roll and mixup over fbank batches (see augment.h). Not loading.
#include "audio/augment.h"

#include <algorithm>
#include <cmath>

#include "tensor/error.h"

namespace sonar::audio {

namespace {

void check_fbank(const Tensor& fb, const Tensor& mask, const char* op) {
  SONAR_CHECK(fb.defined() && fb.dtype() == DType::Float32 && fb.dim() == 3 && fb.is_contiguous(), op,
              ": expected a contiguous float32 [B, T, F] fbank, got ", fb.defined() ? fb.str() : "undefined");
  if (mask.defined())
    SONAR_CHECK((mask.dtype() == DType::Bool || mask.dtype() == DType::UInt8) && mask.dim() == 2 &&
                    mask.size(0) == fb.size(0) && mask.size(1) == fb.size(1),
                op, ": frame mask ", mask.str(), " does not match fbank ", fb.str());
}

// Real (unpadded) frames of clip b: padding is a suffix in loader batches, so count the zeros.
int64_t real_frames(const Tensor& mask_c, int64_t b, int64_t T) {
  if (!mask_c.defined()) return T;
  const uint8_t* m = mask_c.bytes() + b * T;
  int64_t n = 0;
  for (int64_t t = 0; t < T; ++t) n += m[t] == 0;
  return n;
}

double sample_gamma(double shape, Generator& gen) {
  if (shape < 1.0) {
    // Gamma(a) = Gamma(a + 1) * U^(1/a).
    double u;
    do u = gen.next_uniform();
    while (u <= 0.0);
    return sample_gamma(shape + 1.0, gen) * std::pow(u, 1.0 / shape);
  }
  const double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = gen.next_normal();
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    const double u = gen.next_uniform();
    if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
    if (u > 0.0 && std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
  }
}

}  // namespace

void spec_augment_(Tensor& fb, const Tensor& frame_mask, const SpecAugmentOptions& o, Generator& gen) {
  check_fbank(fb, frame_mask, "spec_augment_");
  SONAR_CHECK(o.freq_masks >= 0 && o.time_masks >= 0 && o.max_freq_width >= 0 && o.max_time_width >= 0,
              "spec_augment_: mask counts and widths must be >= 0");
  const int64_t B = fb.size(0), T = fb.size(1), F = fb.size(2);
  Tensor mask = frame_mask.defined() ? frame_mask.contiguous() : Tensor();
  float* p = fb.data<float>();
  for (int64_t b = 0; b < B; ++b) {
    float* clip = p + b * T * F;
    const int64_t n = real_frames(mask, b, T);
    for (int k = 0; k < o.freq_masks; ++k) {
      const int64_t w = gen.next_int(0, std::min<int64_t>(o.max_freq_width, F) + 1);
      const int64_t f0 = gen.next_int(0, F - w + 1);
      for (int64_t t = 0; t < n; ++t) std::fill(clip + t * F + f0, clip + t * F + f0 + w, o.mask_value);
    }
    for (int k = 0; k < o.time_masks; ++k) {
      const int64_t w = gen.next_int(0, std::min<int64_t>(o.max_time_width, n) + 1);
      const int64_t t0 = gen.next_int(0, n - w + 1);
      std::fill(clip + t0 * F, clip + (t0 + w) * F, o.mask_value);
    }
  }
}

std::vector<int64_t> time_roll_(Tensor& fb, const Tensor& frame_mask, int64_t max_shift, Generator& gen) {
  check_fbank(fb, frame_mask, "time_roll_");
  const int64_t B = fb.size(0), T = fb.size(1), F = fb.size(2);
  Tensor mask = frame_mask.defined() ? frame_mask.contiguous() : Tensor();
  float* p = fb.data<float>();
  std::vector<int64_t> shifts;
  std::vector<float> tmp;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = real_frames(mask, b, T);
    int64_t s = 0;
    if (n > 0) {
      const int64_t m = max_shift > 0 ? max_shift : n;
      s = gen.next_int(-m, m + 1);
    }
    shifts.push_back(s);
    if (n == 0) continue;
    const int64_t r = ((s % n) + n) % n;  // frame t moves to (t + r) mod n
    if (r == 0) continue;
    float* clip = p + b * T * F;
    tmp.assign(clip, clip + n * F);
    for (int64_t t = 0; t < n; ++t) std::copy(tmp.begin() + t * F, tmp.begin() + (t + 1) * F, clip + ((t + r) % n) * F);
  }
  return shifts;
}

double sample_beta(double a, double b, Generator& gen) {
  SONAR_CHECK(a > 0 && b > 0, "sample_beta: parameters must be positive, got ", a, ", ", b);
  const double x = sample_gamma(a, gen), y = sample_gamma(b, gen);
  return x + y > 0 ? x / (x + y) : 0.5;
}

Tensor mixup_apply(const Tensor& x, const std::vector<int64_t>& partner, const std::vector<float>& lambda) {
  SONAR_CHECK(x.defined() && x.dtype() == DType::Float32 && x.dim() >= 1, "mixup: expected a float32 [B, ...] tensor");
  const int64_t B = x.size(0);
  SONAR_CHECK(static_cast<int64_t>(partner.size()) == B && static_cast<int64_t>(lambda.size()) == B,
              "mixup: a draw for ", partner.size(), " examples applied to a batch of ", B);
  Tensor c = x.contiguous();
  Tensor out = Tensor::empty(x.shape());
  const int64_t row = B ? c.numel() / B : 0;
  const float* src = c.data<float>();
  float* dst = out.data<float>();
  for (int64_t b = 0; b < B; ++b) {
    const float l = lambda[b];
    const float* a = src + b * row;
    const float* o = src + partner[b] * row;
    float* d = dst + b * row;
    for (int64_t i = 0; i < row; ++i) d[i] = l * a[i] + (1.0f - l) * o[i];
  }
  return out;
}

MixupResult mixup(const Tensor& x, const Tensor& targets, const Tensor& mask, double alpha, Generator& gen,
                  bool per_example) {
  SONAR_CHECK(x.defined() && x.dim() >= 1, "mixup: undefined or scalar input");
  const int64_t B = x.size(0);
  MixupResult r;
  r.partner = shuffled_indices(B, gen.next_u64());
  if (alpha <= 0) {
    r.lambda.assign(B, 1.0f);
  } else if (per_example) {
    for (int64_t b = 0; b < B; ++b) r.lambda.push_back(static_cast<float>(sample_beta(alpha, alpha, gen)));
  } else {
    r.lambda.assign(B, static_cast<float>(sample_beta(alpha, alpha, gen)));
  }
  r.inputs = mixup_apply(x, r.partner, r.lambda);
  if (targets.defined()) {
    SONAR_CHECK(targets.dim() == 2 && targets.size(0) == B, "mixup: targets ", targets.str(),
                " do not match a batch of ", B);
    r.targets = mixup_apply(targets, r.partner, r.lambda);
  }
  if (mask.defined()) {
    SONAR_CHECK(mask.size(0) == B && (mask.dtype() == DType::Bool || mask.dtype() == DType::UInt8),
                "mixup: mask ", mask.str(), " does not match a batch of ", B);
    Tensor c = mask.contiguous();
    r.mask = Tensor::empty(mask.shape(), mask.dtype());
    const int64_t row = B ? c.numel() / B : 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < row; ++i)
        r.mask.bytes()[b * row + i] = c.bytes()[b * row + i] && c.bytes()[r.partner[b] * row + i] ? 1 : 0;
  }
  return r;
}

void augment_batch_(Batch& batch, const AugmentOptions& o, Generator& gen) {
  SONAR_CHECK(batch.fbank.defined(), "augment_batch_: the batch has no fbank");
  if (o.time_roll) time_roll_(batch.fbank, batch.frame_mask, o.max_roll, gen);
  if (o.spec_augment) spec_augment_(batch.fbank, batch.frame_mask, o.spec, gen);
  if (o.mixup_alpha > 0 && gen.next_uniform() < o.mixup_prob) {
    MixupResult m = mixup(batch.fbank, batch.targets, batch.frame_mask, o.mixup_alpha, gen, o.mixup_per_example);
    batch.fbank = m.inputs;
    batch.frame_mask = m.mask;
    if (m.targets.defined()) batch.targets = m.targets;
    if (batch.waves.defined()) {
      batch.waves = mixup_apply(batch.waves, m.partner, m.lambda);
      // Samples are padding only where both clips are.
      Tensor c = batch.padding_mask.contiguous();
      Tensor out = Tensor::empty(c.shape(), c.dtype());
      const int64_t B = c.size(0), row = c.size(1);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < row; ++i)
          out.bytes()[b * row + i] = c.bytes()[b * row + i] && c.bytes()[m.partner[b] * row + i] ? 1 : 0;
      batch.padding_mask = out;
    }
    // A mixed clip no longer has one class: its label becomes -1 unless it was mixed with itself or not at all.
    if (batch.labels.defined()) {
      std::vector<int64_t> labels = batch.labels.to_vector<int64_t>();
      for (int64_t b = 0; b < batch.size(); ++b)
        if (m.partner[b] != b && m.lambda[b] != 1.0f) labels[b] = -1;
      batch.labels = from_vector(labels, {batch.size()});
    }
  }
}

}  // namespace sonar::audio
