// Long 1-D convolutions (stride 1) through FFTs, for tensor/conv.cpp's Conv1dPath::Fft: each input row is cut
// into overlapping segments of nf samples (overlap-save), every segment and every weight row is transformed
// with FFTW (float, real-to-complex, split real/imaginary planes), the products over input channels are summed
// per frequency, and the inverse transforms give hop = nf - K + 1 outputs per segment. The same spectra give
// the weight gradient (correlation of input segments with output-gradient blocks) and the input gradient
// (overlap-add of the output-gradient blocks convolved with the weights). BEATs' positional convolution
// (768 channels, 16 groups, 128 taps, 496 frames) needs ~40x fewer operations this way than directly.
// Internal to the tensor layer; tests go through conv1d / conv1d_backward with the path forced.
#pragma once
#include <cstdint>

namespace sonar::conv1d_fft {

// One call's geometry: x [N, C, L], w [O, C/G, K], padding P on both sides, Lo = L + 2P - K + 1 outputs.
struct Geometry {
  int64_t N = 0, C = 0, O = 0, G = 1, L = 0, K = 0, P = 0, Lo = 0;
};

// The segment length nf (a power of two, at least 16): the smaller of the first power of two >= 2K and
// the first one >= Lo + K - 1 (one segment then covers the whole output).
int64_t fft_length(const Geometry& g);

// y [N, O, Lo] = conv(x [N, C, L], w [O, C/G, K]) + bias [O] (bias may be null); every pointer dense.
void forward(const Geometry& g, const float* x, const float* w, const float* bias, float* y);

// dw [O, C/G, K] and, when dx is not null, dx [N, C, L] from dy [N, O, Lo]; every pointer dense. Both are
// written (not accumulated into).
void backward(const Geometry& g, const float* dy, const float* x, const float* w, float* dx, float* dw);

// Floating-point operations of forward() or backward() (transforms counted as 2.5 nf log2 nf each, a
// complex multiply-add as 8), for the profiler.
double flops(const Geometry& g, bool backward, bool need_dx);

}  // namespace sonar::conv1d_fft
