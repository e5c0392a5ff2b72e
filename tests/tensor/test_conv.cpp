// Tests of conv1d/conv2d (tensor/conv.h): the reference kernels against hand-computed values and central
// finite differences, then the oneDNN forward, backward-data and backward-weights primitives against the
// reference on odd shapes, strides, padding, groups and the BEATs shapes (scaled down in batch), in both
// internal layouts, and the error messages. Not tested here: speed (bench/bench_tensor.cpp).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <functional>
#include <string>

#include "tensor/conv.h"
#include "tests/test_util.h"

using namespace sonar;

namespace {

using testutil::error_of;
using testutil::expect_close_finite;

// Deterministic uniform [-1, 1) values (this file's LCG stream).
Tensor uniform(const Shape& shape, uint64_t seed) { return testutil::lcg_uniform(shape, seed, 777); }

// float32 kernels against the double-accumulating reference; error grows with the terms per output.
constexpr double kAbsTolPerTerm = 2e-6;  // inputs in [-1, 1]
constexpr double kRelTol = 1e-5;
// Central differences of the (double-accumulating, float32-output) reference: step and tolerance.
constexpr double kFdStep = 1e-2;
constexpr double kFdTol = 2e-3;

double tol(int64_t terms) { return kAbsTolPerTerm * static_cast<double>(std::max<int64_t>(terms, 1)); }

// sum(y * r) for a fixed random r: a scalar loss whose gradient w.r.t. y is r.
double loss(const Tensor& y, const Tensor& r) {
  const std::vector<float> a = y.to_vector<float>(), b = r.to_vector<float>();
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// Central-difference check of an analytic gradient `grad` of loss(f(t), r) with respect to `t`.
void check_fd(Tensor t, const Tensor& grad, const std::function<Tensor()>& f, const Tensor& r,
              const std::string& what) {
  float* p = t.data<float>();
  const std::vector<float> g = grad.to_vector<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float keep = p[i];
    p[i] = static_cast<float>(keep + kFdStep);
    const double lp = loss(f(), r);
    p[i] = static_cast<float>(keep - kFdStep);
    const double lm = loss(f(), r);
    p[i] = keep;
    EXPECT_NEAR(g[i], (lp - lm) / (2 * kFdStep), kFdTol) << what << " element " << i;
  }
}

// Central differences of every input of a convolution: forward(x, w, b) gives y, backward(r, x, w) the
// gradients of sum(y * r) for a fixed random r (seeded by `seed`).
template <class Forward, class Backward>
void check_conv_fd(Tensor x, Tensor w, Tensor b, Forward forward, Backward backward, uint64_t seed,
                   const std::string& what) {
  const Tensor r = uniform(forward(x, w, b).shape(), seed);
  const ConvGrads g = backward(r, x, w);
  auto f = [&] { return forward(x, w, b); };
  check_fd(x, g.dx, f, r, what + " dx");
  check_fd(w, g.dweight, f, r, what + " dw");
  check_fd(b, g.dbias, f, r, what + " db");
}

struct Case2d {
  Shape x, w;
  Conv2dParams p;
  const char* name;
};

Conv2dParams p2(int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t g) {
  Conv2dParams p;
  p.stride = {sh, sw};
  p.padding = {ph, pw};
  p.groups = g;
  return p;
}
Conv1dParams p1(int64_t s, int64_t pad, int64_t g) {
  Conv1dParams p;
  p.stride = s;
  p.padding = pad;
  p.groups = g;
  return p;
}

}  // namespace

TEST(ConvReference, HandComputed1d) {
  // x = [1 2 3 4], w = [1 0 -1], padding 1: y[t] = x[t-1] - x[t+1] -> [-2, -2, -2, 3]; bias 0.5 added.
  Tensor x = from_vector(std::vector<float>{1, 2, 3, 4}, {1, 1, 4});
  Tensor w = from_vector(std::vector<float>{1, 0, -1}, {1, 1, 3});
  Tensor b = from_vector(std::vector<float>{0.5f}, {1});
  Tensor y = conv1d_reference(x, w, b, p1(1, 1, 1));
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{-1.5f, -1.5f, -1.5f, 3.5f}));
  // Stride 2 keeps outputs 0 and 2.
  EXPECT_EQ(conv1d_reference(x, w, Tensor(), p1(2, 1, 1)).to_vector<float>(), (std::vector<float>{-2, -2}));
}

TEST(ConvReference, HandComputed2dGrouped) {
  // Two groups of one channel: output channel 0 sums channel 0's 2x2 window, channel 1 doubles channel 1's.
  Tensor x = from_vector(std::vector<float>{1, 2, 3, 4, 10, 20, 30, 40}, {1, 2, 2, 2});
  Tensor w = from_vector(std::vector<float>{1, 1, 1, 1, 2, 0, 0, 0}, {2, 1, 2, 2});
  Tensor y = conv2d_reference(x, w, Tensor(), p2(1, 1, 0, 0, 2));
  EXPECT_EQ(y.shape(), (Shape{1, 2, 1, 1}));
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{10, 20}));
}

TEST(ConvReference, BackwardMatchesFiniteDifferences) {
  const Conv2dParams p2d = p2(2, 1, 1, 1, 2);
  check_conv_fd(
      uniform({2, 4, 5, 6}, 1), uniform({6, 2, 3, 2}, 2), uniform({6}, 3),
      [&](const Tensor& x, const Tensor& w, const Tensor& b) { return conv2d_reference(x, w, b, p2d); },
      [&](const Tensor& r, const Tensor& x, const Tensor& w) { return conv2d_backward_reference(r, x, w, true, p2d); },
      4, "conv2d");
  const Conv1dParams p1d = p1(2, 2, 4);
  check_conv_fd(
      uniform({2, 4, 9}, 5), uniform({4, 1, 4}, 6), uniform({4}, 7),
      [&](const Tensor& x, const Tensor& w, const Tensor& b) { return conv1d_reference(x, w, b, p1d); },
      [&](const Tensor& r, const Tensor& x, const Tensor& w) { return conv1d_backward_reference(r, x, w, true, p1d); },
      8, "conv1d");
}

TEST(ConvReference, BiasGradIsSumOverBatchAndSpace) {
  Tensor gy = from_vector(std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8}, {2, 2, 2});  // [N=2, O=2, L=2]
  EXPECT_EQ(bias_grad_reference(gy).to_vector<float>(), (std::vector<float>{1 + 2 + 5 + 6, 3 + 4 + 7 + 8}));
}

class ConvOneDnn : public ::testing::TestWithParam<ConvLayout> {
 protected:
  void SetUp() override { set_conv_layout(GetParam()); }
  void TearDown() override {
    set_conv_layout(ConvLayout::Blocked);
    set_conv1d_path(Conv1dPath::Auto);
  }
};

TEST_P(ConvOneDnn, Conv2dForwardAndBackwardMatchReference) {
  const Case2d cases[] = {
      {{1, 1, 1, 1}, {1, 1, 1, 1}, p2(1, 1, 0, 0, 1), "1x1"},
      {{2, 3, 7, 9}, {5, 3, 3, 3}, p2(1, 1, 1, 1, 1), "3x3 pad 1"},
      {{1, 4, 11, 10}, {6, 2, 3, 2}, p2(2, 3, 1, 0, 2), "grouped, strided, uneven"},
      {{2, 1, 64, 32}, {32, 1, 16, 16}, p2(16, 16, 0, 0, 1), "BEATs patch embedding (small)"},
      {{1, 2, 10, 10}, {4, 2, 3, 3}, p2(4, 4, 0, 0, 1), "stride drops the last rows"},
      {{1, 16, 6, 7}, {32, 1, 3, 3}, p2(1, 1, 1, 1, 16), "depthwise x2"},
  };
  for (const Case2d& c : cases) {
    Tensor x = uniform(c.x, 10), w = uniform(c.w, 11), b = uniform({c.w[0]}, 12);
    const int64_t terms = c.w[1] * c.w[2] * c.w[3];
    Tensor ref = conv2d_reference(x, w, b, c.p);
    expect_close_finite(conv2d(x, w, b, c.p), ref, tol(terms), kRelTol, std::string(c.name) + " fwd");
    expect_close_finite(conv2d(x, w, Tensor(), c.p), conv2d_reference(x, w, Tensor(), c.p), tol(terms), kRelTol,
                        std::string(c.name) + " fwd no bias");
    Tensor gy = uniform(ref.shape(), 13);
    ConvGrads want = conv2d_backward_reference(gy, x, w, true, c.p);
    ConvGrads got = conv2d_backward(gy, x, w, true, c.p);
    const int64_t o_terms = (c.w[0] / c.p.groups) * c.w[2] * c.w[3];
    const int64_t w_terms = ref.size(0) * ref.size(2) * ref.size(3);
    expect_close_finite(got.dx, want.dx, tol(o_terms), kRelTol, std::string(c.name) + " dx");
    expect_close_finite(got.dweight, want.dweight, tol(w_terms), kRelTol, std::string(c.name) + " dw");
    expect_close_finite(got.dbias, want.dbias, tol(w_terms), kRelTol, std::string(c.name) + " db");
    EXPECT_FALSE(conv2d_backward(gy, x, w, false, c.p).dbias.defined());
    ConvGrads no_dx = conv2d_backward(gy, x, w, true, c.p, /*need_dx=*/false);
    EXPECT_FALSE(no_dx.dx.defined());
    expect_close_finite(no_dx.dweight, want.dweight, tol(w_terms), kRelTol, std::string(c.name) + " dw without dx");
  }
}

TEST_P(ConvOneDnn, Conv1dForwardAndBackwardMatchReference) {
  struct Case1d {
    Shape x, w;
    Conv1dParams p;
    const char* name;
  } cases[] = {
      {{1, 1, 1}, {1, 1, 1}, p1(1, 0, 1), "1x1"},
      {{2, 3, 13}, {5, 3, 4}, p1(1, 2, 1), "pad 2, even kernel"},
      {{2, 6, 17}, {9, 2, 5}, p1(3, 1, 3), "grouped strided"},
      {{1, 32, 31}, {32, 2, 16}, p1(1, 8, 16), "BEATs positional conv (scaled down)"},
      {{2, 4, 9}, {4, 2, 12}, p1(2, 5, 2), "kernel longer than the input, strided"},
      {{1, 48, 40}, {48, 48, 17}, p1(1, 8, 1), "many channels (several unfolded blocks)"},
      // FFT segments: 256 samples, 129 outputs each, three per row; and one 64-sample segment, no padding.
      {{2, 32, 300}, {32, 2, 128}, p1(1, 64, 16), "BEATs positional conv taps, three FFT segments per row"},
      {{1, 6, 70}, {4, 3, 33}, p1(1, 0, 2), "odd kernel, no padding, one FFT segment"},
      {{3, 4, 200}, {6, 4, 70}, p1(1, 100, 1), "padding wider than the kernel, one group"},
  };
  for (Conv1dPath path : {Conv1dPath::Primitive, Conv1dPath::Im2col, Conv1dPath::Fft})
    for (const Case1d& c : cases) {
      set_conv1d_path(path);
      const std::string tag = path == Conv1dPath::Im2col ? " (im2col)" : path == Conv1dPath::Fft ? " (fft)" : " (primitive)";
      Tensor x = uniform(c.x, 20), w = uniform(c.w, 21), b = uniform({c.w[0]}, 22);
      const int64_t terms = c.w[1] * c.w[2];
      Tensor ref = conv1d_reference(x, w, b, c.p);
      expect_close_finite(conv1d(x, w, b, c.p), ref, tol(terms), kRelTol, c.name + tag + " fwd");
      expect_close_finite(conv1d(x, w, Tensor(), c.p), conv1d_reference(x, w, Tensor(), c.p), tol(terms), kRelTol,
                          c.name + tag + " fwd no bias");
      Tensor gy = uniform(ref.shape(), 23);
      ConvGrads want = conv1d_backward_reference(gy, x, w, true, c.p);
      ConvGrads got = conv1d_backward(gy, x, w, true, c.p);
      const int64_t o_terms = (c.w[0] / c.p.groups) * c.w[2];
      const int64_t w_terms = ref.size(0) * ref.size(2);
      expect_close_finite(got.dx, want.dx, tol(o_terms), kRelTol, c.name + tag + " dx");
      expect_close_finite(got.dweight, want.dweight, tol(w_terms), kRelTol, c.name + tag + " dw");
      expect_close_finite(got.dbias, want.dbias, tol(w_terms), kRelTol, c.name + tag + " db");
      ConvGrads no_dx = conv1d_backward(gy, x, w, false, c.p, /*need_dx=*/false);
      EXPECT_FALSE(no_dx.dx.defined());
      EXPECT_FALSE(no_dx.dbias.defined());
      expect_close_finite(no_dx.dweight, want.dweight, tol(w_terms), kRelTol, c.name + tag + " dw without dx");
    }
}

TEST_P(ConvOneDnn, NonContiguousInputs) {
  // A transposed view of [N, L, C] as [N, C, L] (how BEATs feeds the positional conv) and a sliced weight.
  Tensor x = uniform({2, 11, 8}, 30).permute({0, 2, 1});
  Tensor w = uniform({8, 4, 6}, 31).narrow(2, 1, 3);  // [8, 4, 3]
  const Conv1dParams p = p1(1, 1, 2);
  for (Conv1dPath path : {Conv1dPath::Primitive, Conv1dPath::Im2col, Conv1dPath::Fft}) {
    set_conv1d_path(path);
    expect_close_finite(conv1d(x, w, Tensor(), p), conv1d_reference(x.contiguous(), w.contiguous(), Tensor(), p),
                        tol(12), kRelTol, "permuted x");
    Tensor gy = uniform({2, 8, 11}, 32);
    ConvGrads got = conv1d_backward(gy, x, w, false, p);
    ConvGrads want = conv1d_backward_reference(gy, x.contiguous(), w.contiguous(), false, p);
    expect_close_finite(got.dx, want.dx, tol(12), kRelTol, "permuted x: dx");
    expect_close_finite(got.dweight, want.dweight, tol(22), kRelTol, "permuted x: dw");
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, ConvOneDnn, ::testing::Values(ConvLayout::Blocked, ConvLayout::Plain),
                         [](const auto& info) { return info.param == ConvLayout::Plain ? "Plain" : "Blocked"; });

TEST(ConvErrors, MessagesNameShapesAndValues) {
  const std::string ch = error_of([] {
    conv2d(Tensor::empty({1, 3, 8, 8}), Tensor::empty({4, 2, 3, 3}), Tensor(), {});
  });
  EXPECT_NE(ch.find("conv2d"), std::string::npos) << ch;
  EXPECT_NE(ch.find("[1, 3, 8, 8]"), std::string::npos) << ch;
  EXPECT_NE(ch.find("[4, 2, 3, 3]"), std::string::npos) << ch;
  const std::string rank = error_of([] { conv1d(Tensor::empty({3, 8}), Tensor::empty({4, 3, 3}), Tensor(), {}); });
  EXPECT_NE(rank.find("[3, 8]"), std::string::npos) << rank;
  const std::string groups = error_of([] {
    conv1d(Tensor::empty({1, 6, 8}), Tensor::empty({4, 2, 3}), Tensor(), p1(1, 0, 3));
  });
  EXPECT_NE(groups.find("groups 3"), std::string::npos) << groups;
  const std::string big = error_of([] { conv1d(Tensor::empty({1, 2, 4}), Tensor::empty({2, 2, 7}), Tensor(), {}); });
  EXPECT_NE(big.find("larger than the padded input"), std::string::npos) << big;
  const std::string stride = error_of([] {
    conv1d(Tensor::empty({1, 2, 4}), Tensor::empty({2, 2, 2}), Tensor(), p1(0, 0, 1));
  });
  EXPECT_NE(stride.find("stride must be >= 1, got 0"), std::string::npos) << stride;
  const std::string bias = error_of([] {
    conv1d(Tensor::empty({1, 2, 4}), Tensor::empty({3, 2, 2}), Tensor::empty({2}), {});
  });
  EXPECT_NE(bias.find("bias"), std::string::npos) << bias;
  const std::string gy = error_of([] {
    conv1d_backward(Tensor::empty({1, 3, 4}), Tensor::empty({1, 2, 4}), Tensor::empty({3, 2, 2}), false, {});
  });
  EXPECT_NE(gy.find("[1, 3, 3]"), std::string::npos) << gy;
}

// The FFT path (tensor/conv1d_fft.h) on its own: finite differences of its forward, the choice Auto makes,
// and results that do not depend on the number of threads.
TEST(ConvFft, BackwardMatchesFiniteDifferences) {
  set_conv1d_path(Conv1dPath::Fft);
  const Conv1dParams p = p1(1, 10, 2);  // 41 outputs: segments of 64 samples, 45 outputs each
  check_conv_fd(
      uniform({2, 4, 40}, 40), uniform({4, 2, 20}, 41), uniform({4}, 42),
      [&](const Tensor& x, const Tensor& w, const Tensor& b) { return conv1d(x, w, b, p); },
      [&](const Tensor& r, const Tensor& x, const Tensor& w) { return conv1d_backward(r, x, w, true, p); }, 43,
      "fft conv1d");
  set_conv1d_path(Conv1dPath::Auto);
}

TEST(ConvFft, AutoPicksFftForLongKernelsAtStrideOne) {
  const Tensor x = Tensor::empty({1, 768, 496});
  EXPECT_NE(conv1d_impl(x, Tensor::empty({768, 48, 128}), true, p1(1, 64, 16)).find("FFT of 256-sample segments"),
            std::string::npos);
  EXPECT_NE(conv1d_impl(x, Tensor::empty({768, 48, 17}), true, p1(1, 8, 16)).find("unfolded"), std::string::npos);
  EXPECT_NE(conv1d_impl(x, Tensor::empty({768, 48, 128}), true, p1(2, 64, 16)).find("unfolded"), std::string::npos);
  set_conv1d_path(Conv1dPath::Fft);  // forced onto a strided call: the unfolded path
  EXPECT_NE(conv1d_impl(x, Tensor::empty({768, 48, 17}), true, p1(3, 8, 16)).find("unfolded"), std::string::npos);
  set_conv1d_path(Conv1dPath::Auto);
}

// 16 groups (one backward work item per group) and 2 groups (each group's outputs split into 4 items whose
// partial input-gradient spectra are added afterwards).
TEST(ConvFft, ResultsDoNotDependOnTheThreadCount) {
  set_conv1d_path(Conv1dPath::Fft);
  const int threads = omp_get_max_threads();
  for (int64_t groups : {16, 2}) {
    Tensor x = uniform({2, 32, 300}, 50), w = uniform({32, 32 / groups, 128}, 51), b = uniform({32}, 52);
    const Conv1dParams p = p1(1, 64, groups);
    auto run = [&](int n) {
      omp_set_num_threads(n);
      Tensor y = conv1d(x, w, b, p);
      ConvGrads g = conv1d_backward(uniform(y.shape(), 53), x, w, true, p);
      return std::vector<std::vector<float>>{y.to_vector<float>(), g.dx.to_vector<float>(),
                                             g.dweight.to_vector<float>()};
    };
    const auto one = run(1), three = run(3);
    EXPECT_EQ(one, three) << groups << " groups";
  }
  omp_set_num_threads(threads);
  set_conv1d_path(Conv1dPath::Auto);
}

// Accuracy at BEATs' positional-conv geometry (128 taps, groups of 48 channels, 496 frames; 2 of the 16
// groups): the FFT path's largest error against the double-accumulating reference, relative to the largest
// reference value, next to the unfolded-sgemm path's. Measured on an AMD EPYC (Zen 5): FFT y 2.4e-7, dx
// 2.3e-7, dw 2.2e-7; unfolded sgemm y 3.4e-7, dx 3.9e-7, dw 5.7e-7. Both stay far below the 1e-4 parity
// tolerance; the bound below leaves room for other CPUs' FFT and sgemm kernels.
constexpr double kMaxRelativeError = 2e-6;

double max_relative_error(const Tensor& got, const Tensor& want) {
  const std::vector<float> a = got.to_vector<float>(), b = want.to_vector<float>();
  double err = 0.0, scale = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return err / scale;
}

TEST(ConvFft, AccuracyAtThePositionalConvGeometry) {
  Tensor x = uniform({1, 96, 496}, 60), w = uniform({96, 48, 128}, 61), b = uniform({96}, 62);
  const Conv1dParams p = p1(1, 64, 2);
  Tensor ref = conv1d_reference(x, w, b, p);
  Tensor gy = uniform(ref.shape(), 63);
  ConvGrads want = conv1d_backward_reference(gy, x, w, true, p);
  for (Conv1dPath path : {Conv1dPath::Im2col, Conv1dPath::Fft}) {
    set_conv1d_path(path);
    const char* name = path == Conv1dPath::Fft ? "fft" : "im2col";
    ConvGrads got = conv1d_backward(gy, x, w, true, p);
    const double ey = max_relative_error(conv1d(x, w, b, p), ref), edx = max_relative_error(got.dx, want.dx),
                 edw = max_relative_error(got.dweight, want.dweight);
    std::printf("%-6s max relative error: y %.2g, dx %.2g, dw %.2g\n", name, ey, edx, edw);
    EXPECT_LT(ey, kMaxRelativeError) << name;
    EXPECT_LT(edx, kMaxRelativeError) << name;
    EXPECT_LT(edw, kMaxRelativeError) << name;
  }
  set_conv1d_path(Conv1dPath::Auto);
}
