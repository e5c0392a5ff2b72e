// Layer normalisation over the last dim (PyTorch semantics: biased variance, eps inside the sqrt) and its
// backward. Per-row statistics are accumulated in double (two passes: mean, then centred squares), the
// elementwise parts run in float with vectorisable inner loops; rows are spread over OpenMP threads.
// Not here: other normalisations (group/batch norm live in nn/ if needed).
#include "tensor/layer_norm.h"

#include <cmath>
#include <vector>

#include <omp.h>

namespace sonar {

namespace {
constexpr int64_t kParallelMin = 1 << 14;  // elements below which the kernels stay single-threaded

void check_affine(const Tensor& p, int64_t C, const char* what, const char* op) {
  if (!p.defined()) return;
  p.check_dtype(DType::Float32, op);
  SONAR_CHECK(p.dim() == 1 && p.size(0) == C, op, ": ", what, " must have shape [", C, "], got ",
              shape_str(p.shape()));
}
}  // namespace

LayerNormForward layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  const char* op = "layer_norm_forward";
  x.check_dtype(DType::Float32, op);
  SONAR_CHECK(x.dim() >= 1, op, ": input must have at least one dim, got ", shape_str(x.shape()));
  const int64_t C = x.size(-1);
  const int64_t rows = C == 0 ? 0 : x.numel() / C;
  check_affine(weight, C, "weight", op);
  check_affine(bias, C, "bias", op);
  Tensor xc = x.contiguous();
  Tensor wc = weight.defined() ? weight.contiguous() : Tensor();
  Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
  LayerNormForward f{Tensor::empty(x.shape()), Tensor::empty({rows}), Tensor::empty({rows})};
  if (rows == 0) return f;
  const float* xp = xc.data<float>();
  const float* wp = wc.defined() ? wc.data<float>() : nullptr;
  const float* bp = bc.defined() ? bc.data<float>() : nullptr;
  float* yp = f.y.data<float>();
  float* mp = f.mean.data<float>();
  float* rp = f.rstd.data<float>();
#pragma omp parallel for schedule(static) if (x.numel() > kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * C;
    float* yr = yp + r * C;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < C; ++i) s += xr[i];
    const double mean = s / static_cast<double>(C);
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < C; ++i) {
      const double dlt = xr[i] - mean;
      ss += dlt * dlt;
    }
    const double rstd = 1.0 / std::sqrt(ss / static_cast<double>(C) + static_cast<double>(eps));
    mp[r] = static_cast<float>(mean);
    rp[r] = static_cast<float>(rstd);
    // y = (x - mean) * rstd * w + b, in float: a = rstd, c = -mean * rstd.
    const float a = static_cast<float>(rstd), c = static_cast<float>(-mean * rstd);
    if (wp && bp) {
#pragma omp simd
      for (int64_t i = 0; i < C; ++i) yr[i] = (xr[i] * a + c) * wp[i] + bp[i];
    } else if (wp) {
#pragma omp simd
      for (int64_t i = 0; i < C; ++i) yr[i] = (xr[i] * a + c) * wp[i];
    } else if (bp) {
#pragma omp simd
      for (int64_t i = 0; i < C; ++i) yr[i] = xr[i] * a + c + bp[i];
    } else {
#pragma omp simd
      for (int64_t i = 0; i < C; ++i) yr[i] = xr[i] * a + c;
    }
  }
  return f;
}

// With xhat = (x - mean) * rstd and dxhat = g * w:
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
//   dweight = sum_rows g * xhat,  dbias = sum_rows g
// dweight/dbias are accumulated per thread in double and summed at the end.
LayerNormBackward layer_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                      const LayerNormForward& fwd, bool need_bias_grad) {
  const char* op = "layer_norm_backward";
  x.check_dtype(DType::Float32, op);
  grad_y.check_dtype(DType::Float32, op);
  SONAR_CHECK(grad_y.shape() == x.shape(), op, ": grad shape ", shape_str(grad_y.shape()),
              " differs from input shape ", shape_str(x.shape()));
  SONAR_CHECK(x.dim() >= 1, op, ": input must have at least one dim, got ", shape_str(x.shape()));
  const int64_t C = x.size(-1);
  const int64_t rows = C == 0 ? 0 : x.numel() / C;
  check_affine(weight, C, "weight", op);
  fwd.mean.check_dtype(DType::Float32, op);
  fwd.rstd.check_dtype(DType::Float32, op);
  SONAR_CHECK(fwd.mean.numel() == rows && fwd.rstd.numel() == rows, op, ": mean/rstd have ", fwd.mean.numel(),
              "/", fwd.rstd.numel(), " elements, expected ", rows, " (rows of ", shape_str(x.shape()), ")");
  Tensor xc = x.contiguous(), gc = grad_y.contiguous();
  Tensor wc = weight.defined() ? weight.contiguous() : Tensor();
  Tensor mc = fwd.mean.contiguous(), rc = fwd.rstd.contiguous();
  LayerNormBackward b;
  b.dx = Tensor::empty(x.shape());
  const bool need_w = weight.defined();
  if (need_w) b.dweight = Tensor::empty({C});
  if (need_bias_grad) b.dbias = Tensor::empty({C});
  const float* xp = xc.data<float>();
  const float* gp = gc.data<float>();
  const float* wp = need_w ? wc.data<float>() : nullptr;
  const float* mp = rows ? mc.data<float>() : nullptr;
  const float* rp = rows ? rc.data<float>() : nullptr;
  float* dxp = b.dx.data<float>();

  const bool par = x.numel() > kParallelMin;
  const int nthreads = par ? omp_get_max_threads() : 1;
  const bool need_param = need_w || need_bias_grad;
  // Per-thread partial sums: [nthreads][C] for dweight and for dbias.
  std::vector<double> pw(need_w ? static_cast<size_t>(nthreads) * C : 0);
  std::vector<double> pb(need_bias_grad ? static_cast<size_t>(nthreads) * C : 0);
#pragma omp parallel num_threads(nthreads) if (par)
  {
    const int tid = omp_get_thread_num();
    double* tw = need_w ? pw.data() + static_cast<size_t>(tid) * C : nullptr;
    double* tb = need_bias_grad ? pb.data() + static_cast<size_t>(tid) * C : nullptr;
    std::vector<float> dxhat(static_cast<size_t>(C)), xhat(static_cast<size_t>(C));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = xp + r * C;
      const float* gr = gp + r * C;
      float* dr = dxp + r * C;
      const float mean = mp[r], rstd = rp[r];
      float* xh = xhat.data();
      float* dh = dxhat.data();
      double s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t i = 0; i < C; ++i) {
        xh[i] = (xr[i] - mean) * rstd;
        dh[i] = wp ? gr[i] * wp[i] : gr[i];
        s1 += dh[i];
        s2 += static_cast<double>(dh[i]) * xh[i];
      }
      const float m1 = static_cast<float>(s1 / C), m2 = static_cast<float>(s2 / C);
#pragma omp simd
      for (int64_t i = 0; i < C; ++i) dr[i] = rstd * (dh[i] - m1 - xh[i] * m2);
      if (need_param) {
        if (tw) {
#pragma omp simd
          for (int64_t i = 0; i < C; ++i) tw[i] += static_cast<double>(gr[i]) * xh[i];
        }
        if (tb) {
#pragma omp simd
          for (int64_t i = 0; i < C; ++i) tb[i] += gr[i];
        }
      }
    }
  }
  auto finish = [&](std::vector<double>& part, Tensor& out) {
    float* o = out.data<float>();
    for (int64_t i = 0; i < C; ++i) {
      double s = 0.0;
      for (int t = 0; t < nthreads; ++t) s += part[static_cast<size_t>(t) * C + i];
      o[i] = static_cast<float>(s);
    }
  };
  if (need_w) finish(pw, b.dweight);
  if (need_bias_grad) finish(pb, b.dbias);
  return b;
}

}  // namespace sonar
