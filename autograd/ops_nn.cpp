// Differentiable fused layer ops: layer_norm, matmul, linear, conv1d/conv2d, embedding, gather, index_select,
// l2_normalize, weight_norm. Each calls the explicit backward kernel of tensor/ where one exists. Not elementwise ops,
// reductions or views (other ops_*.cpp).
#include "autograd/ops.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/index.h"
#include "tensor/layer_norm.h"
#include "tensor/matmul.h"
#include "tensor/reduce.h"

namespace sonar::ag {

namespace {
using Grads = std::vector<Tensor>;
}  // namespace

Var layer_norm(const Var& x, const Var& weight, const Var& bias, float eps) {
  const Tensor w = weight.defined() ? weight.value() : Tensor();
  const Tensor b = bias.defined() ? bias.value() : Tensor();
  LayerNormForward fwd = layer_norm_forward(x.value(), w, b, eps);
  // Save x, weight and the row statistics only; the output is not needed by the backward kernel.
  LayerNormForward stats{Tensor(), fwd.mean, fwd.rstd};
  Tensor xv = x.value();
  const bool need_b = needs_grad(bias);
  return make_result(fwd.y, {x, weight, bias}, [xv, w, stats, need_b](const Tensor& g) {
    LayerNormBackward r = layer_norm_backward(g, xv, w, stats, need_b);
    return Grads{r.dx, r.dweight, need_b ? r.dbias : Tensor()};
  }, "layer_norm");
}

Var matmul(const Var& a, const Var& b, bool trans_a, bool trans_b) {
  Shape sa = a.shape(), sb = b.shape();
  bool ga = needs_grad(a), gb = needs_grad(b);
  Tensor av = gb ? a.value() : Tensor(), bv = ga ? b.value() : Tensor();
  Tensor y = sonar::matmul(a.value(), b.value(), trans_a, trans_b);
  return make_result(y, {a, b}, [=](const Tensor& g) {
    // C = op(A) op(B): dop(A) = G op(B)^T, dop(B) = op(A)^T G, then undo the op and the batch broadcast.
    Tensor da, db;
    if (ga) {
      da = trans_a ? sonar::matmul(bv, g, trans_b, true)     // dA = op(B) G^T
                   : sonar::matmul(g, bv, false, !trans_b);  // dA = G op(B)^T
      da = sum_to_shape(da, sa);
    }
    if (gb) {
      db = trans_b ? sonar::matmul(g, av, true, trans_a)     // dB = G^T op(A)
                   : sonar::matmul(av, g, !trans_a, false);  // dB = op(A)^T G
      db = sum_to_shape(db, sb);
    }
    return Grads{da, db};
  }, "matmul");
}

Var linear(const Var& x, const Var& weight, const Var& bias) {
  Shape sx = x.shape();
  bool gx = needs_grad(x), gw = needs_grad(weight), gbias = needs_grad(bias);
  Tensor xv = gw ? x.value() : Tensor(), wv = (gx || gw) ? weight.value() : Tensor();
  const int64_t out = weight.size(0);
  Tensor y = sonar::linear(x.value(), weight.value(), bias.defined() ? bias.value() : Tensor());
  return make_result(y, {x, weight, bias}, [=](const Tensor& g) {
    if (gx && gw) {  // the fused backward kernel computes dx and dW (and db)
      LinearGrads r = linear_backward(g, xv, wv, gbias);
      return Grads{r.dx, r.dweight, r.dbias};
    }
    // Only some gradients are needed (frozen weights, or an input without grad): skip the other products.
    Tensor g2 = g.reshape({-1, out});  // [N, out]
    Tensor dx, dw, db;
    if (gx) dx = sonar::matmul(g2, wv).reshape(sx);                           // [N, in]
    if (gw) dw = sonar::matmul(g2, xv.reshape({-1, wv.size(1)}), true, false);  // [out, in]
    if (gbias) db = sonar::sum(g2, {0});                                        // [out]
    return Grads{dx, dw, db};
  }, "linear");
}

Var conv1d(const Var& x, const Var& weight, const Var& bias, const Conv1dParams& p) {
  Tensor xv = x.value(), wv = weight.value();
  const bool has_bias = bias.defined();
  Tensor y = sonar::conv1d(xv, wv, has_bias ? bias.value() : Tensor(), p);
  const bool need_dx = needs_grad(x);  // the patch embedding's fbank input needs none: skip that product
  return make_result(y, {x, weight, bias}, [xv, wv, has_bias, p, need_dx](const Tensor& g) {
    ConvGrads r = conv1d_backward(g, xv, wv, has_bias, p, need_dx);
    return Grads{r.dx, r.dweight, r.dbias};
  }, "conv1d");
}

Var conv2d(const Var& x, const Var& weight, const Var& bias, const Conv2dParams& p) {
  Tensor xv = x.value(), wv = weight.value();
  const bool has_bias = bias.defined();
  Tensor y = sonar::conv2d(xv, wv, has_bias ? bias.value() : Tensor(), p);
  const bool need_dx = needs_grad(x);  // the patch embedding's fbank input needs none: skip that product
  return make_result(y, {x, weight, bias}, [xv, wv, has_bias, p, need_dx](const Tensor& g) {
    ConvGrads r = conv2d_backward(g, xv, wv, has_bias, p, need_dx);
    return Grads{r.dx, r.dweight, r.dbias};
  }, "conv2d");
}

Var embedding(const Var& weight, const Tensor& indices) {
  SONAR_CHECK(weight.dim() == 2, "embedding: weight must be [N, D], got ", shape_str(weight.shape()));
  Shape sw = weight.shape();
  return make_result(sonar::embedding(weight.value(), indices), {weight}, [sw, indices](const Tensor& g) {
    return Grads{index_add(sw, 0, indices.reshape({-1}), g.reshape({-1, sw[1]}))};
  }, "embedding");
}

Var gather(const Var& a, int64_t dim, const Tensor& index) {
  Shape sa = a.shape();
  return make_result(sonar::gather(a.value(), dim, index), {a}, [sa, dim, index](const Tensor& g) {
    return Grads{scatter_add(zeros(sa), dim, index, g)};
  }, "gather");
}

Var index_select(const Var& a, int64_t dim, const Tensor& index) {
  Shape sa = a.shape();
  return make_result(sonar::index_select(a.value(), dim, index), {a}, [sa, dim, index](const Tensor& g) {
    return Grads{index_add(sa, dim, index, g)};
  }, "index_select");
}

Var l2_normalize(const Var& a, int64_t dim, float eps) {
  Tensor x = a.value();
  return make_result(sonar::l2_normalize(x, dim, eps), {a}, [x, dim, eps](const Tensor& g) {
    return Grads{l2_normalize_backward(g, x, dim, eps)};
  }, "l2_normalize");
}

Var weight_norm(const Var& v, const Var& g, int64_t dim) {
  const int64_t d = wrap_dim(dim, v.dim(), "weight_norm");
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < v.dim(); ++i)
    if (i != d) dims.push_back(i);
  const Tensor vv = v.value(), gv = g.value();
  const Tensor n = sonar::norm(vv, 2.0, dims, true);
  SONAR_CHECK(gv.shape() == n.shape(), "weight_norm: g must be ", shape_str(n.shape()), " for v ",
              shape_str(vv.shape()), " and dim ", d, ", got ", shape_str(gv.shape()));
  const Tensor w = sonar::mul(vv, sonar::div(gv, n));
  return make_result(w, {v, g}, [vv, gv, n, d](const Tensor& gw) {
    WeightNormGrads r = weight_norm_backward(gw, vv, gv, n, d);
    return Grads{r.dv, r.dg};
  }, "weight_norm");
}

}  // namespace sonar::ag
