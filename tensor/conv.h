// Convolutions through oneDNN (cached primitives), each with a plain reference kernel beside it:
// 2-D convolution (NCHW, weights [O, I/groups, KH, KW]) and 1-D convolution (NCL, weights [O, I/groups, K])
// with stride, padding and groups, and all three backward products.
#pragma once
#include <array>
#include <string>

#include "tensor/tensor.h"

namespace sonar {

struct Conv2dParams {
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> padding{0, 0};
  int64_t groups = 1;
};
struct Conv1dParams {
  int64_t stride = 1;
  int64_t padding = 0;
  int64_t groups = 1;
};

struct ConvGrads {
  Tensor dx, dweight, dbias;  // dbias undefined when there was no bias
};

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);
ConvGrads conv2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                          const Conv2dParams& p);
Tensor conv2d_reference(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);

Tensor conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv1dParams& p);
ConvGrads conv1d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                          const Conv1dParams& p);
Tensor conv1d_reference(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv1dParams& p);

// The same, skipping dx when need_dx is false (dx is then undefined): the patch embedding's input is the
// fbank, which needs no gradient.
ConvGrads conv2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                          const Conv2dParams& p, bool need_dx);
ConvGrads conv1d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                          const Conv1dParams& p, bool need_dx);

// Backward references: plain loops (double accumulation) for the three gradients; the test oracle.
ConvGrads conv2d_backward_reference(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                                    const Conv2dParams& p);
ConvGrads conv1d_backward_reference(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                                    const Conv1dParams& p);
// Bias gradient of any convolution: grad_y [N, O, ...] summed over the batch and spatial dims -> [O].
Tensor bias_grad_reference(const Tensor& grad_y);

// Layouts inside the oneDNN primitives: Blocked lets oneDNN choose (activations and weights are reordered
// from/to NCHW around each call, with cached reorders); Plain keeps NCHW / OIHW throughout. Process-wide;
// default Blocked. For benchmarks and tests.
enum class ConvLayout { Blocked, Plain };
void set_conv_layout(ConvLayout layout);
ConvLayout conv_layout();

// How conv1d runs: oneDNN's convolution primitives, unfolded channel blocks multiplied with oneDNN's sgemm
// (faster for long kernels, where oneDNN 2.6 only has its generic gemm convolution), or FFTs of overlapping
// segments (tensor/conv1d_fft.h; stride 1 only, a strided call forced onto it takes the unfolded path). Auto
// picks the FFTs for stride 1 and at least kFftMinKernel taps, the unfolded blocks from kIm2colMinKernel taps,
// the primitives below. Process-wide; for benchmarks and tests.
enum class Conv1dPath { Auto, Primitive, Im2col, Fft };
constexpr int64_t kIm2colMinKernel = 16;
constexpr int64_t kFftMinKernel = 64;
void set_conv1d_path(Conv1dPath path);
Conv1dPath conv1d_path();

// The oneDNN implementations the calls would use ("fwd ..., bwd_data ..., bwd_weights ..."), for benchmarks.
std::string conv2d_impl(const Tensor& x, const Tensor& weight, bool has_bias, const Conv2dParams& p);
std::string conv1d_impl(const Tensor& x, const Tensor& weight, bool has_bias, const Conv1dParams& p);

}  // namespace sonar
