// Central-difference gradient check (see gradcheck.h). Not part of training: tests call it.
#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

namespace sonar::ag {

namespace {
// Projection weights in [-1, 1] from a small self-contained generator (splitmix64), so the check does not
// depend on any kernel under test.
Tensor projection(const Shape& shape, uint64_t seed) {
  const int64_t n = shape_numel(shape);
  std::vector<float> r(static_cast<size_t>(n));
  uint64_t s = seed;
  for (auto& v : r) {
    s += 0x9E3779B97F4A7C15ull;
    uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    v = static_cast<float>(static_cast<double>(z >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  }
  return from_vector(r, shape);
}

double project(const Tensor& y, const std::vector<double>& r) {
  std::vector<float> v = y.to_vector<float>();
  double s = 0.0;
  for (size_t j = 0; j < v.size(); ++j) s += r[j] * static_cast<double>(v[j]);
  return s;
}
}  // namespace

GradcheckResult gradcheck(const GradcheckFn& f, const std::vector<Tensor>& inputs, const GradcheckOptions& opt) {
  SONAR_CHECK(opt.eps > 0.0, "gradcheck: eps must be positive, got ", opt.eps);
  std::vector<Var> leaves;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    SONAR_CHECK(t.defined() && t.dtype() == DType::Float32, "gradcheck: input ", i, " must be a float32 tensor");
    for (int64_t d = 0; d < t.dim(); ++d)
      SONAR_CHECK(t.stride(d) != 0 || t.size(d) <= 1, "gradcheck: input ", i, " of shape ", shape_str(t.shape()),
                  " is expanded (stride 0 in dim ", d, "); expand inside f instead");
    leaves.emplace_back(t, true);
  }

  // Analytic gradients of L = sum_j R_j y_j.
  Var y = f(leaves);
  SONAR_CHECK(y.defined() && y.value().dtype() == DType::Float32, "gradcheck: f must return a float32 Var");
  const Shape out_shape = y.shape();
  Tensor r = projection(out_shape, opt.seed);
  std::vector<double> rd;
  for (float v : r.to_vector<float>()) rd.push_back(v);
  SONAR_CHECK(y.requires_grad(), "gradcheck: f's output does not depend on any input");
  y.backward(r);
  y = Var();

  GradcheckResult res;
  std::ostringstream rep;
  int reported = 0;
  NoGradGuard no_grad;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    std::vector<float> analytic = leaves[i].grad().defined() ? leaves[i].grad().to_vector<float>()
                                                              : std::vector<float>(t.numel(), 0.0f);
    float* base = t.data<float>();
    for_each_offset(t.shape(), t.strides(), [&](int64_t k, int64_t off) {
      const float orig = base[off];
      const float up = static_cast<float>(orig + opt.eps), down = static_cast<float>(orig - opt.eps);
      base[off] = up;
      const Tensor yp = f(leaves).value();
      SONAR_CHECK(yp.shape() == out_shape, "gradcheck: f's output shape changed from ", shape_str(out_shape), " to ",
                  shape_str(yp.shape()));
      const double sp = project(yp, rd);
      base[off] = down;
      const double sm = project(f(leaves).value(), rd);
      base[off] = orig;
      const double numeric = (sp - sm) / (static_cast<double>(up) - static_cast<double>(down));
      const double a = analytic[static_cast<size_t>(k)];
      const double err = std::fabs(a - numeric);
      const double rel = err / std::max(std::fabs(numeric), 1e-12);
      res.max_abs_err = std::max(res.max_abs_err, err);
      res.max_rel_err = std::max(res.max_rel_err, rel);
      ++res.checked;
      if (err > opt.atol + opt.rtol * std::fabs(numeric)) {
        res.ok = false;
        if (reported++ < opt.max_report)
          rep << "input " << i << " " << shape_str(t.shape()) << " element " << k << ": analytic " << a
              << ", numeric " << numeric << ", |diff| " << err << "\n";
      }
    });
  }
  if (!res.ok) rep << reported << " mismatches (atol " << opt.atol << ", rtol " << opt.rtol << ", eps " << opt.eps
                   << ")";
  res.report = rep.str();
  return res;
}

}  // namespace sonar::ag
