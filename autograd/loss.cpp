// Loss functions (see loss.h): fused cross-entropy and BCE-with-logits, composed MSE and cosine similarity.
// Precision-sensitive sums are accumulated in double. Not modules or metrics.
#include "autograd/loss.h"

#include <cmath>
#include <limits>

#include "autograd/ops.h"
#include "tensor/elementwise.h"
#include "tensor/reduce.h"

namespace sonar::ag {

Var cross_entropy(const Var& logits, const Tensor& target, float label_smoothing, int64_t ignore_index) {
  const char* op = "cross_entropy";
  SONAR_CHECK(logits.dim() == 2, op, ": logits must be [N, C], got ", shape_str(logits.shape()));
  SONAR_CHECK(target.defined() && target.dtype() == DType::Int64, op, ": target must be an int64 tensor");
  SONAR_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), op, ": target ", shape_str(target.shape()),
              " does not match logits ", shape_str(logits.shape()), " (expected [", logits.size(0), "])");
  SONAR_CHECK(label_smoothing >= 0.0f && label_smoothing <= 1.0f, op, ": label_smoothing must be in [0, 1], got ",
              label_smoothing);
  const int64_t n = logits.size(0), c = logits.size(1);
  SONAR_CHECK(c > 0, op, ": logits ", shape_str(logits.shape()), " have no classes");
  Tensor lsm = sonar::log_softmax(logits.value(), 1).contiguous();  // [N, C]
  Tensor tgt = target.contiguous();
  const float* lp = lsm.data<float>();
  const int64_t* tp = tgt.data<int64_t>();
  const double s = label_smoothing;

  double total = 0.0;
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = tp[i];
    if (t == ignore_index) continue;
    SONAR_CHECK(t >= 0 && t < c, op, ": target ", t, " at row ", i, " is outside [0, ", c, ") (ignore_index ",
                ignore_index, ")");
    const float* row = lp + i * c;
    double row_sum = 0.0;
    if (s != 0.0)
      for (int64_t k = 0; k < c; ++k) row_sum += row[k];
    total += -(1.0 - s) * row[t] - s * row_sum / static_cast<double>(c);
    ++kept;
  }
  const double loss = kept > 0 ? total / static_cast<double>(kept) : std::numeric_limits<double>::quiet_NaN();
  Tensor out = scalar_tensor(static_cast<float>(loss));

  return make_result(out, {logits}, [lsm, tgt, n, c, s, kept, ignore_index](const Tensor& g) {
    Tensor dx = Tensor::empty({n, c});
    float* d = dx.data<float>();
    const float* lp2 = lsm.data<float>();
    const int64_t* tp2 = tgt.data<int64_t>();
    const double scale = kept > 0 ? g.item<double>() / static_cast<double>(kept) : 0.0;
    const double off = s / static_cast<double>(c);
#pragma omp parallel for schedule(static) if (n * c > (1 << 16))
    for (int64_t i = 0; i < n; ++i) {
      float* drow = d + i * c;
      const float* row = lp2 + i * c;
      if (tp2[i] == ignore_index) {
        for (int64_t k = 0; k < c; ++k) drow[k] = 0.0f;
        continue;
      }
      for (int64_t k = 0; k < c; ++k)
        drow[k] = static_cast<float>((std::exp(static_cast<double>(row[k])) - off) * scale);
      drow[tp2[i]] -= static_cast<float>((1.0 - s) * scale);
    }
    return std::vector<Tensor>{dx};
  }, op);
}

Var mse_loss(const Var& a, const Var& b) {
  SONAR_CHECK(a.shape() == b.shape(), "mse_loss: shapes ", shape_str(a.shape()), " and ", shape_str(b.shape()),
              " differ");
  Var d = sub(a, b);
  return mean(mul(d, d));
}

Var cosine_similarity(const Var& a, const Var& b, int64_t dim, float eps) {
  SONAR_CHECK(eps > 0.0f, "cosine_similarity: eps must be positive, got ", eps);
  const Shape s = broadcast_shapes(a.shape(), b.shape(), "cosine_similarity");
  const Var ax = a.shape() == s ? a : expand(a, s);
  const Var bx = b.shape() == s ? b : expand(b, s);
  const int64_t d = wrap_dim(dim, static_cast<int64_t>(s.size()), "cosine_similarity");
  return sum(mul(l2_normalize(ax, d, eps), l2_normalize(bx, d, eps)), {d});
}

Var binary_cross_entropy_with_logits(const Var& logits, const Tensor& targets) {
  const char* op = "binary_cross_entropy_with_logits";
  SONAR_CHECK(targets.defined() && targets.dtype() == DType::Float32, op, ": targets must be float32");
  SONAR_CHECK(targets.shape() == logits.shape(), op, ": targets ", shape_str(targets.shape()), " do not match logits ",
              shape_str(logits.shape()));
  const int64_t n = logits.numel();
  SONAR_CHECK(n > 0, op, ": empty input ", shape_str(logits.shape()));
  Tensor x = logits.value().contiguous(), t = targets.contiguous();
  const float* xp = x.data<float>();
  const float* tp = t.data<float>();
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double xi = xp[i], ti = tp[i];
    total += std::max(xi, 0.0) - xi * ti + std::log1p(std::exp(-std::fabs(xi)));
  }
  Tensor out = scalar_tensor(static_cast<float>(total / static_cast<double>(n)));
  Shape shape = logits.shape();
  return make_result(out, {logits}, [x, t, n, shape](const Tensor& g) {
    Tensor dx = Tensor::empty(shape);
    float* d = dx.data<float>();
    const float* xp2 = x.data<float>();
    const float* tp2 = t.data<float>();
    const double scale = g.item<double>() / static_cast<double>(n);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) {
      const double xi = xp2[i];
      // sigmoid without overflow for either sign
      const double sig = xi >= 0 ? 1.0 / (1.0 + std::exp(-xi)) : std::exp(xi) / (1.0 + std::exp(xi));
      d[i] = static_cast<float>((sig - tp2[i]) * scale);
    }
    return std::vector<Tensor>{dx};
  }, op);
}

}  // namespace sonar::ag
