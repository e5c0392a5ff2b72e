// Differentiable views (reshape, view, flatten, permute, transpose, narrow, slice, select, expand, squeeze,
// unsqueeze, contiguous) and assembling ops (cat, stack, split, chunk). Forward results share storage with
// the input wherever the Tensor view does. Not arithmetic (ops_elementwise.cpp).
#include "autograd/ops.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/index.h"

namespace sonar::ag {

namespace {
using Grads = std::vector<Tensor>;

// A view op whose backward reshapes the gradient back to the input's shape.
Var reshaping(const Var& a, Tensor y, const char* name) {
  Shape sa = a.shape();
  return make_result(std::move(y), {a}, [sa](const Tensor& g) { return Grads{g.reshape(sa)}; }, name);
}

// Backward of a view that picks part of the input: zeros of the input's shape with g written into the part.
template <class Pick>
Var picking(const Var& a, Tensor y, Pick pick, const char* name) {
  Shape sa = a.shape();
  return make_result(std::move(y), {a}, [sa, pick](const Tensor& g) {
    Tensor z = zeros(sa);
    Tensor part = pick(z);
    part.copy_(g);
    return Grads{z};
  }, name);
}
}  // namespace

Var reshape(const Var& a, const Shape& shape) { return reshaping(a, a.value().reshape(shape), "reshape"); }
Var view(const Var& a, const Shape& shape) { return reshaping(a, a.value().view(shape), "view"); }
Var flatten(const Var& a, int64_t start, int64_t end) {
  return reshaping(a, a.value().flatten(start, end), "flatten");
}
Var squeeze(const Var& a) { return reshaping(a, a.value().squeeze(), "squeeze"); }
Var squeeze(const Var& a, int64_t dim) { return reshaping(a, a.value().squeeze(dim), "squeeze"); }
Var unsqueeze(const Var& a, int64_t dim) { return reshaping(a, a.value().unsqueeze(dim), "unsqueeze"); }

Var permute(const Var& a, const std::vector<int64_t>& dims) {
  Tensor y = a.value().permute(dims);  // validates dims
  const int64_t nd = a.dim();
  std::vector<int64_t> inverse(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) inverse[wrap_dim(dims[i], nd, "permute")] = static_cast<int64_t>(i);
  return make_result(y, {a}, [inverse](const Tensor& g) { return Grads{g.permute(inverse)}; }, "permute");
}

Var transpose(const Var& a, int64_t d0, int64_t d1) {
  return make_result(a.value().transpose(d0, d1), {a}, [d0, d1](const Tensor& g) {
    return Grads{g.transpose(d0, d1)};
  }, "transpose");
}

Var narrow(const Var& a, int64_t dim, int64_t start, int64_t length) {
  return picking(a, a.value().narrow(dim, start, length),
                 [dim, start, length](const Tensor& z) { return z.narrow(dim, start, length); }, "narrow");
}

Var slice(const Var& a, int64_t dim, int64_t start, int64_t end, int64_t step) {
  return picking(a, a.value().slice(dim, start, end, step),
                 [dim, start, end, step](const Tensor& z) { return z.slice(dim, start, end, step); }, "slice");
}

Var select(const Var& a, int64_t dim, int64_t index) {
  return picking(a, a.value().select(dim, index),
                 [dim, index](const Tensor& z) { return z.select(dim, index); }, "select");
}

Var expand(const Var& a, const Shape& shape) {
  Shape sa = a.shape();
  return make_result(a.value().expand(shape), {a}, [sa](const Tensor& g) { return Grads{sum_to_shape(g, sa)}; },
                     "expand");
}

Var contiguous(const Var& a) {
  if (a.value().is_contiguous()) return a;
  return make_result(a.value().contiguous(), {a}, [](const Tensor& g) { return Grads{g}; }, "contiguous");
}

Var cat(const std::vector<Var>& xs, int64_t dim) {
  SONAR_CHECK(!xs.empty(), "cat: no inputs");
  std::vector<Tensor> vals;
  std::vector<int64_t> sizes;
  for (const Var& x : xs) vals.push_back(x.value());
  Tensor y = sonar::cat(vals, dim);
  const int64_t d = wrap_dim(dim, y.dim(), "cat");
  for (const Var& x : xs) sizes.push_back(x.size(d));
  return make_result(y, xs, [d, sizes](const Tensor& g) {
    Grads out;
    int64_t off = 0;
    for (int64_t s : sizes) {
      out.push_back(g.narrow(d, off, s));
      off += s;
    }
    return out;
  }, "cat");
}

Var stack(const std::vector<Var>& xs, int64_t dim) {
  SONAR_CHECK(!xs.empty(), "stack: no inputs");
  std::vector<Tensor> vals;
  for (const Var& x : xs) vals.push_back(x.value());
  Tensor y = sonar::stack(vals, dim);
  const int64_t d = wrap_dim(dim, y.dim(), "stack");
  const int64_t n = static_cast<int64_t>(xs.size());
  return make_result(y, xs, [d, n](const Tensor& g) {
    Grads out;
    for (int64_t i = 0; i < n; ++i) out.push_back(g.select(d, i));
    return out;
  }, "stack");
}

std::vector<Var> split(const Var& a, const std::vector<int64_t>& sizes, int64_t dim) {
  const int64_t d = wrap_dim(dim, a.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    SONAR_CHECK(s >= 0, "split: negative size ", s);
    total += s;
  }
  SONAR_CHECK(total == a.size(d), "split: sizes sum to ", total, " but dim ", dim, " of ", shape_str(a.shape()),
              " has size ", a.size(d));
  std::vector<Var> out;
  int64_t off = 0;
  for (int64_t s : sizes) {
    out.push_back(narrow(a, d, off, s));
    off += s;
  }
  return out;
}

std::vector<Var> chunk(const Var& a, int64_t chunks, int64_t dim) {
  SONAR_CHECK(chunks > 0, "chunk: chunks must be positive, got ", chunks);
  const int64_t d = wrap_dim(dim, a.dim(), "chunk");
  const int64_t n = a.size(d);
  const int64_t step = (n + chunks - 1) / chunks;
  std::vector<int64_t> sizes;
  for (int64_t off = 0; off < n; off += step) sizes.push_back(std::min(step, n - off));
  if (sizes.empty()) sizes.push_back(0);
  return split(a, sizes, d);
}

}  // namespace sonar::ag
