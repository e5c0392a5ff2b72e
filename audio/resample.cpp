// libsoxr one-shot resampling of mono float32 buffers (see resample.h). Not channel handling or decoding.
#include "audio/resample.h"

#include <soxr.h>

#include <cmath>

#include "tensor/error.h"

namespace sonar::audio {

namespace {

unsigned long soxr_recipe(ResampleQuality q) {
  switch (q) {
    case ResampleQuality::Quick: return SOXR_QQ;
    case ResampleQuality::Low: return SOXR_LQ;
    case ResampleQuality::Medium: return SOXR_MQ;
    case ResampleQuality::High: return SOXR_HQ;
    case ResampleQuality::VeryHigh: return SOXR_VHQ;
  }
  return SOXR_HQ;
}

}  // namespace

int64_t resampled_length(int64_t n, double in_rate, double out_rate) {
  SONAR_CHECK(in_rate > 0 && out_rate > 0 && std::isfinite(in_rate) && std::isfinite(out_rate),
              "resample: sample rates must be positive, got ", in_rate, " -> ", out_rate);
  return static_cast<int64_t>(std::llround(static_cast<double>(n) * out_rate / in_rate));
}

std::vector<float> resample(const float* in, int64_t n, double in_rate, double out_rate, ResampleQuality quality) {
  const int64_t out_len = resampled_length(n, in_rate, out_rate);
  if (in_rate == out_rate) return std::vector<float>(in, in + n);
  if (n == 0) return {};
  std::vector<float> out(static_cast<size_t>(out_len) + 1);
  size_t done = 0;
  const soxr_io_spec_t io = soxr_io_spec(SOXR_FLOAT32_I, SOXR_FLOAT32_I);
  const soxr_quality_spec_t qs = soxr_quality_spec(soxr_recipe(quality), 0);
  // One thread: callers (loaders, OpenMP loops) already run many conversions side by side.
  const soxr_runtime_spec_t rt = soxr_runtime_spec(1);
  soxr_error_t err = soxr_oneshot(in_rate, out_rate, 1, in, static_cast<size_t>(n), nullptr, out.data(),
                                  out.size(), &done, &io, &qs, &rt);
  SONAR_CHECK(err == nullptr, "resample ", in_rate, " Hz -> ", out_rate, " Hz: libsoxr: ", err);
  // libsoxr's one-shot output is round(n * ratio) long (checked for many rates and lengths); should a
  // version round differently, trim or zero-extend by that one sample so the length is what
  // resampled_length promises, and refuse anything larger.
  SONAR_CHECK(static_cast<int64_t>(done) + 1 >= out_len && static_cast<int64_t>(done) <= out_len + 1,
              "resample ", in_rate, " Hz -> ", out_rate, " Hz: libsoxr produced ", done, " samples, expected ", out_len);
  out.resize(static_cast<size_t>(out_len), 0.0f);
  return out;
}

Tensor resample(const Tensor& wave, double in_rate, double out_rate, ResampleQuality quality) {
  SONAR_CHECK(wave.dtype() == DType::Float32 && wave.dim() == 1,
              "resample: expected a float32 [samples] waveform, got ", wave.str());
  Tensor c = wave.contiguous();
  std::vector<float> out = resample(c.data<float>(), c.numel(), in_rate, out_rate, quality);
  return from_vector(out, {static_cast<int64_t>(out.size())});
}

}  // namespace sonar::audio
