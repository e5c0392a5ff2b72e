// Band-limited sample-rate conversion with libsoxr (windowed-sinc, linear phase, delay compensated), used
// to bring every decoded file to 16 kHz. Not linear interpolation, and not channel mixing (audio/decode.h).
#pragma once
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace sonar::audio {

// libsoxr's quality recipes: High (20-bit precision, 91% passband) is the default and is transparent for
// fbank features; VeryHigh (28-bit) for measurements.
enum class ResampleQuality { Quick, Low, Medium, High, VeryHigh };

// Output length for n input samples: round(n * out_rate / in_rate).
int64_t resampled_length(int64_t n, double in_rate, double out_rate);

// Mono samples at in_rate -> out_rate. Returns the input unchanged when the rates are equal. Throws
// sonar::Error on a non-positive rate or a libsoxr failure. Runs on the calling thread only.
std::vector<float> resample(const float* in, int64_t n, double in_rate, double out_rate,
                            ResampleQuality quality = ResampleQuality::High);
// float32 [S] -> float32 [round(S * out_rate / in_rate)].
Tensor resample(const Tensor& wave, double in_rate, double out_rate,
                ResampleQuality quality = ResampleQuality::High);

}  // namespace sonar::audio
