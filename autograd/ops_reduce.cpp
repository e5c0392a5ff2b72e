// Differentiable reductions (sum, mean, var, norm, max/min along a dim) and softmax / log_softmax (through
// their explicit backward kernels). Not elementwise ops or views (other ops_*.cpp).
#include <cmath>

#include "autograd/ops.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/index.h"
#include "tensor/reduce.h"

namespace sonar::ag {

namespace {
using Grads = std::vector<Tensor>;

// Shape of the reduction result with keepdim = true (reduced dims become 1); also returns how many elements
// were reduced into each output.
Shape keepdim_shape(const Shape& in, const std::vector<int64_t>& dims, const char* op, int64_t* count) {
  Shape k = in;
  int64_t n = 1;
  const int64_t nd = static_cast<int64_t>(in.size());
  if (dims.empty()) {
    for (auto& s : k) { n *= s; s = 1; }
  } else {
    for (int64_t d : dims) {
      int64_t w = wrap_dim(d, nd, op);
      if (k[w] != 1 || in[w] == 1) {
        n *= in[w];
        k[w] = 1;
      }
    }
  }
  if (count) *count = n;
  return k;
}

// Reshape that also handles a 0-dim source (Tensor::reshape of a 0-dim tensor to [1, ...] currently throws).
Tensor reshape_to(const Tensor& g, const Shape& shape) {
  if (g.dim() == 0 && shape_numel(shape) == 1)
    return Tensor(g.storage(), shape, contiguous_strides(shape), g.offset(), g.dtype());
  return g.reshape(shape);
}

// A gradient of the reduced shape, broadcast back over the input's shape (a stride-0 view, no copy).
Tensor expand_back(const Tensor& g, const Shape& kshape, const Shape& in) { return reshape_to(g, kshape).expand(in); }
}  // namespace

Var sum(const Var& a, const std::vector<int64_t>& dims, bool keepdim) {
  Shape sa = a.shape();
  Shape ks = keepdim_shape(sa, dims, "sum", nullptr);
  return make_result(sonar::sum(a.value(), dims, keepdim), {a}, [sa, ks](const Tensor& g) {
    return Grads{expand_back(g, ks, sa)};
  }, "sum");
}

Var mean(const Var& a, const std::vector<int64_t>& dims, bool keepdim) {
  Shape sa = a.shape();
  int64_t n = 1;
  Shape ks = keepdim_shape(sa, dims, "mean", &n);
  const float inv = n > 0 ? 1.0f / static_cast<float>(n) : 0.0f;
  return make_result(sonar::mean(a.value(), dims, keepdim), {a}, [sa, ks, inv](const Tensor& g) {
    return Grads{sonar::mul(expand_back(g, ks, sa), inv)};
  }, "mean");
}

Var var(const Var& a, const std::vector<int64_t>& dims, bool unbiased, bool keepdim) {
  Shape sa = a.shape();
  int64_t n = 1;
  Shape ks = keepdim_shape(sa, dims, "var", &n);
  Tensor x = a.value();
  const float scale = 2.0f / static_cast<float>(n - (unbiased ? 1 : 0));
  return make_result(sonar::var(x, dims, unbiased, keepdim), {a}, [x, dims, sa, ks, scale](const Tensor& g) {
    // d var / dx = 2 (x - mean) / (n - ddof)
    Tensor centred = sonar::sub(x, sonar::mean(x, dims, true));
    return Grads{sonar::mul(sonar::mul(centred, expand_back(g, ks, sa)), scale)};
  }, "var");
}

Var norm(const Var& a, double p, const std::vector<int64_t>& dims, bool keepdim) {
  SONAR_CHECK(std::isfinite(p) && p >= 1.0, "norm: only finite p >= 1 is differentiable here, got p = ", p);
  Shape sa = a.shape();
  Shape ks = keepdim_shape(sa, dims, "norm", nullptr);
  Tensor x = a.value();
  Tensor y = sonar::norm(x, p, dims, keepdim);
  return make_result(y, {a}, [x, y, p, ks](const Tensor& g) {
    // d||x||_p / dx = sign(x) |x|^(p-1) / ||x||^(p-1); 0 where the norm is 0.
    Tensor gk = reshape_to(g, ks);
    if (p == 1.0) return Grads{sonar::mul(sonar::sign(x), gk)};
    Tensor yk = reshape_to(y, ks);
    Tensor zero = sonar::eq(yk, scalar_tensor(0.0f));
    Tensor ysafe = sonar::masked_fill(yk, zero, 1.0f);
    const float pm1 = static_cast<float>(p - 1.0);
    Tensor denom = p == 2.0 ? ysafe : sonar::pow(ysafe, pm1);
    Tensor coef = sonar::masked_fill(sonar::div(gk, denom), zero, 0.0f);
    Tensor num = p == 2.0 ? x : sonar::mul(sonar::sign(x), sonar::pow(sonar::abs(x), pm1));
    return Grads{sonar::mul(num, coef)};
  }, "norm");
}

namespace {
Var max_min(const Var& a, int64_t dim, bool keepdim, bool is_max) {
  const char* name = is_max ? "max" : "min";
  Shape sa = a.shape();
  const int64_t d = wrap_dim(dim, a.dim(), name);
  ValuesIndices vi = is_max ? sonar::max(a.value(), d, keepdim) : sonar::min(a.value(), d, keepdim);
  Tensor idx = keepdim ? vi.indices : vi.indices.unsqueeze(d);
  return make_result(vi.values, {a}, [sa, d, keepdim, idx](const Tensor& g) {
    Tensor gk = keepdim ? g : g.unsqueeze(d);
    return Grads{scatter_add(zeros(sa), d, idx, gk)};
  }, name);
}
}  // namespace

Var max(const Var& a, int64_t dim, bool keepdim) { return max_min(a, dim, keepdim, true); }
Var min(const Var& a, int64_t dim, bool keepdim) { return max_min(a, dim, keepdim, false); }

Var softmax(const Var& a, int64_t dim) {
  Tensor y = sonar::softmax(a.value(), dim);
  return make_result(y, {a}, [y, dim](const Tensor& g) { return Grads{softmax_backward(g, y, dim)}; }, "softmax");
}

Var log_softmax(const Var& a, int64_t dim) {
  Tensor y = sonar::log_softmax(a.value(), dim);
  return make_result(y, {a}, [y, dim](const Tensor& g) { return Grads{log_softmax_backward(g, y, dim)}; },
                     "log_softmax");
}

}  // namespace sonar::ag
