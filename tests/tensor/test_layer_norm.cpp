// Tests of layer_norm_forward / layer_norm_backward: against a double-precision reference (with and without
// affine parameters, non-contiguous inputs, rows with a large offset), gradients by central differences
// of the double reference, which gradients are produced, and error messages.
#include <gtest/gtest.h>

#include <cmath>

#include "tensor/layer_norm.h"
#include "tests/tensor/kernel_ref.h"

using namespace sonar;
using namespace sonar::testref;

namespace {

constexpr float kEps = 1e-5f;
constexpr double kFwdAtol = 2e-5;   // y is O(1): float rounding of (x - mean) * rstd * w + b
constexpr double kFwdRtol = 1e-5;
constexpr double kStatRtol = 1e-6;  // mean and rstd come from double statistics, rounded to float
constexpr double kBwdAtol = 1e-4;   // kernel vs closed form / finite differences of the double reference
constexpr double kBwdRtol = 1e-3;

struct Ref {
  std::vector<double> y, mean, rstd;
};
// Reference layer norm in double over the last dim C; w/b empty = no affine.
Ref ref_ln(const std::vector<double>& x, int64_t C, const std::vector<double>& w, const std::vector<double>& b,
           double eps) {
  const int64_t rows = static_cast<int64_t>(x.size()) / C;
  Ref r;
  r.y.resize(x.size());
  for (int64_t i = 0; i < rows; ++i) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += x[i * C + c];
    m /= C;
    for (int64_t c = 0; c < C; ++c) v += (x[i * C + c] - m) * (x[i * C + c] - m);
    v /= C;
    const double rs = 1 / std::sqrt(v + eps);
    r.mean.push_back(m);
    r.rstd.push_back(rs);
    for (int64_t c = 0; c < C; ++c) {
      double y = (x[i * C + c] - m) * rs;
      if (!w.empty()) y *= w[c];
      if (!b.empty()) y += b[c];
      r.y[i * C + c] = y;
    }
  }
  return r;
}

TEST(LayerNorm, ForwardMatchesReference) {
  for (const Shape& s : {Shape{4, 7}, Shape{2, 3, 768}, Shape{1, 1}, Shape{5}}) {
    const int64_t C = s.back();
    Tensor x = rand_tensor(s, 1, -3.f, 3.f);
    Tensor w = rand_tensor({C}, 2, 0.5f, 1.5f), b = rand_tensor({C}, 3);
    for (int affine = 0; affine < 4; ++affine) {
      Tensor wt = affine & 1 ? w : Tensor(), bt = affine & 2 ? b : Tensor();
      Ref r = ref_ln(x.to_vector<double>(), C, affine & 1 ? w.to_vector<double>() : std::vector<double>{},
                     affine & 2 ? b.to_vector<double>() : std::vector<double>{}, kEps);
      LayerNormForward f = layer_norm_forward(x, wt, bt, kEps);
      const std::string what = "layer_norm " + shape_str(s) + " affine " + std::to_string(affine);
      expect_close(f.y, r.y, kFwdAtol, kFwdRtol, what + " y");
      EXPECT_EQ(f.mean.shape(), (Shape{x.numel() / C}));
      expect_close(f.mean, r.mean, 1e-7, kStatRtol, what + " mean");
      expect_close(f.rstd, r.rstd, 0, kStatRtol, what + " rstd");
    }
  }
}

TEST(LayerNorm, NonContiguousInput) {
  Tensor x = rand_tensor({6, 9}, 4);
  Tensor w = rand_tensor({9}, 5), b = rand_tensor({9}, 6);
  Ref r = ref_ln(x.to_vector<double>(), 9, w.to_vector<double>(), b.to_vector<double>(), kEps);
  for (const Tensor& v : {transposed_copy(x), strided_copy(x)})
    expect_close(layer_norm_forward(v, w, b, kEps).y, r.y, kFwdAtol, kFwdRtol, "layer_norm non-contiguous");
  // Strided weight too.
  Tensor ws = strided_copy(w.unsqueeze(0)).squeeze(0);
  expect_close(layer_norm_forward(x, ws, b, kEps).y, r.y, kFwdAtol, kFwdRtol, "layer_norm strided weight");
}

TEST(LayerNorm, LargeOffsetRowsKeepPrecision) {
  // Rows of 1000 + small noise: single-pass float statistics would lose most digits of the variance.
  std::vector<float> v = rand_values(4 * 768, 7, -0.01f, 0.01f);
  for (float& e : v) e += 1000.f;
  Tensor x = from_vector(v, {4, 768});
  Ref r = ref_ln(to_double(v), 768, {}, {}, kEps);
  LayerNormForward f = layer_norm_forward(x, Tensor(), Tensor(), kEps);
  expect_close(f.rstd, r.rstd, 0, kStatRtol, "rstd with offset");
  // y inherits the float rounding of x - mean (x ~ 1000 has ulp 6e-5, noise ~ 0.006): relative 1e-2 of 1/std.
  expect_close(f.y, r.y, 5e-3, 0, "y with offset");
}

// Loss L = sum(g * layer_norm(x; w, b)) in double; gradients vs the kernels.
void check_backward(const Shape& s, bool affine, bool bias, bool noncontig) {
  const int64_t C = s.back();
  Tensor x = rand_tensor(s, 11, -2.f, 2.f);
  Tensor g = rand_tensor(s, 12);
  Tensor w = affine ? rand_tensor({C}, 13, 0.5f, 1.5f) : Tensor();
  Tensor b = bias ? rand_tensor({C}, 14) : Tensor();
  LayerNormForward f = layer_norm_forward(x, w, b, kEps);
  Tensor xin = noncontig ? transposed_copy(x) : x, gin = noncontig ? transposed_copy(g) : g;
  LayerNormBackward bw = layer_norm_backward(gin, xin, w, f, bias);
  const std::vector<double> gv = g.to_vector<double>(), xv = x.to_vector<double>();
  const std::vector<double> wv = affine ? w.to_vector<double>() : std::vector<double>{};
  const std::vector<double> bv = bias ? b.to_vector<double>() : std::vector<double>{};
  auto dot = [&](const std::vector<double>& y) {
    double l = 0;
    for (size_t i = 0; i < y.size(); ++i) l += gv[i] * y[i];
    return l;
  };
  const std::string what = "layer_norm_backward " + shape_str(s);
  expect_close(bw.dx, numeric_grad([&](const std::vector<double>& xx) { return dot(ref_ln(xx, C, wv, bv, kEps).y); }, xv),
               kBwdAtol, kBwdRtol, what + " dx");
  if (affine) {
    expect_close(bw.dweight,
                 numeric_grad([&](const std::vector<double>& ww) { return dot(ref_ln(xv, C, ww, bv, kEps).y); }, wv),
                 kBwdAtol, kBwdRtol, what + " dweight");
  } else {
    EXPECT_FALSE(bw.dweight.defined());
  }
  if (bias) {
    expect_close(bw.dbias,
                 numeric_grad([&](const std::vector<double>& bb) { return dot(ref_ln(xv, C, wv, bb, kEps).y); }, bv),
                 kBwdAtol, kBwdRtol, what + " dbias");
  } else {
    EXPECT_FALSE(bw.dbias.defined());
  }
}

TEST(LayerNormBackward, FiniteDifferences) {
  check_backward({3, 5}, true, true, false);
  check_backward({2, 2, 6}, true, false, false);
  check_backward({4, 3}, false, false, false);
  check_backward({3, 4}, false, true, false);
  check_backward({5, 6}, true, true, true);
}

TEST(LayerNormBackward, LargeRowsParallelMatchesClosedForm) {
  // [496, 768] exercises the parallel path and the per-thread dweight/dbias partial sums.
  const int64_t R = 496, C = 768;
  Tensor x = rand_tensor({R, C}, 21, -2.f, 2.f), g = rand_tensor({R, C}, 22);
  Tensor w = rand_tensor({C}, 23, 0.5f, 1.5f), b = rand_tensor({C}, 24);
  LayerNormForward f = layer_norm_forward(x, w, b, kEps);
  LayerNormBackward bw = layer_norm_backward(g, x, w, f, true);
  const std::vector<double> xv = x.to_vector<double>(), gv = g.to_vector<double>(), wv = w.to_vector<double>();
  Ref r = ref_ln(xv, C, {}, {}, kEps);  // r.y = xhat
  std::vector<double> dx(xv.size()), dw(C, 0), db(C, 0);
  for (int64_t i = 0; i < R; ++i) {
    double m1 = 0, m2 = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double dh = gv[i * C + c] * wv[c];
      m1 += dh;
      m2 += dh * r.y[i * C + c];
      dw[c] += gv[i * C + c] * r.y[i * C + c];
      db[c] += gv[i * C + c];
    }
    m1 /= C, m2 /= C;
    for (int64_t c = 0; c < C; ++c)
      dx[i * C + c] = r.rstd[i] * (gv[i * C + c] * wv[c] - m1 - r.y[i * C + c] * m2);
  }
  expect_close(bw.dx, dx, kBwdAtol, kBwdRtol, "dx [496, 768]");
  expect_close(bw.dweight, dw, kBwdAtol, kBwdRtol, "dweight [496, 768]");
  expect_close(bw.dbias, db, kBwdAtol, kBwdRtol, "dbias [496, 768]");
}

TEST(LayerNorm, Errors) {
  Tensor x = rand_tensor({2, 4}, 1);
  expect_error([&] { layer_norm_forward(x, rand_tensor({3}, 1), Tensor(), kEps); },
               {"layer_norm_forward", "weight", "[4]", "[3]"});
  expect_error([&] { layer_norm_forward(x, Tensor(), rand_tensor({2, 4}, 1), kEps); }, {"bias", "[2, 4]"});
  expect_error([&] { layer_norm_forward(from_vector(std::vector<int64_t>{1, 2}, {2}), Tensor(), Tensor(), kEps); },
               {"int64"});
  LayerNormForward f = layer_norm_forward(x, Tensor(), Tensor(), kEps);
  expect_error([&] { layer_norm_backward(rand_tensor({4, 2}, 1), x, Tensor(), f, false); },
               {"layer_norm_backward", "[4, 2]", "[2, 4]"});
}

}  // namespace
