// Differentiable elementwise ops (broadcasting binaries, unary activations, where/masked_fill, dropout).
// Binary backward reduces broadcast gradients with sum_to_shape. Not reductions or views (other ops_*.cpp).
#include <cmath>

#include "autograd/ops.h"
#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/random.h"

namespace sonar::ag {

namespace {
using Grads = std::vector<Tensor>;

Tensor float_mask(const Tensor& b) { return b.to(DType::Float32); }

// Shared backward of maximum/minimum: gradient to a where `pick_a`, else to b.
Var select_binary(const Var& a, const Var& b, Tensor y, Tensor pick_a, const char* name) {
  Shape sa = a.shape(), sb = b.shape();
  bool ga = needs_grad(a), gb = needs_grad(b);
  return make_result(std::move(y), {a, b}, [sa, sb, ga, gb, pick_a](const Tensor& g) {
    return Grads{ga ? sum_to_shape(sonar::mul(g, float_mask(pick_a)), sa) : Tensor(),
                 gb ? sum_to_shape(sonar::mul(g, float_mask(logical_not(pick_a))), sb) : Tensor()};
  }, name);
}
}  // namespace

// ---- binary, Var x Var ----

Var add(const Var& a, const Var& b) {
  Shape sa = a.shape(), sb = b.shape();
  bool ga = needs_grad(a), gb = needs_grad(b);
  return make_result(sonar::add(a.value(), b.value()), {a, b}, [sa, sb, ga, gb](const Tensor& g) {
    return Grads{ga ? sum_to_shape(g, sa) : Tensor(), gb ? sum_to_shape(g, sb) : Tensor()};
  }, "add");
}

Var sub(const Var& a, const Var& b) {
  Shape sa = a.shape(), sb = b.shape();
  bool ga = needs_grad(a), gb = needs_grad(b);
  return make_result(sonar::sub(a.value(), b.value()), {a, b}, [sa, sb, ga, gb](const Tensor& g) {
    return Grads{ga ? sum_to_shape(g, sa) : Tensor(), gb ? sum_to_shape(sonar::neg(g), sb) : Tensor()};
  }, "sub");
}

Var mul(const Var& a, const Var& b) {
  Shape sa = a.shape(), sb = b.shape();
  bool ga = needs_grad(a), gb = needs_grad(b);
  Tensor av = gb ? a.value() : Tensor(), bv = ga ? b.value() : Tensor();
  return make_result(sonar::mul(a.value(), b.value()), {a, b}, [sa, sb, ga, gb, av, bv](const Tensor& g) {
    return Grads{ga ? sum_to_shape(sonar::mul(g, bv), sa) : Tensor(),
                 gb ? sum_to_shape(sonar::mul(g, av), sb) : Tensor()};
  }, "mul");
}

Var div(const Var& a, const Var& b) {
  Shape sa = a.shape(), sb = b.shape();
  bool ga = needs_grad(a), gb = needs_grad(b);
  Tensor y = sonar::div(a.value(), b.value());
  Tensor bv = b.value(), yv = gb ? y : Tensor();
  return make_result(y, {a, b}, [sa, sb, ga, gb, bv, yv](const Tensor& g) {
    Tensor g_over_b = sonar::div(g, bv);
    // d(a/b)/db = -a/b^2 = -y/b
    return Grads{ga ? sum_to_shape(g_over_b, sa) : Tensor(),
                 gb ? sum_to_shape(sonar::neg(sonar::mul(g_over_b, yv)), sb) : Tensor()};
  }, "div");
}

Var maximum(const Var& a, const Var& b) {
  return select_binary(a, b, sonar::maximum(a.value(), b.value()), ge(a.value(), b.value()), "maximum");
}

Var minimum(const Var& a, const Var& b) {
  return select_binary(a, b, sonar::minimum(a.value(), b.value()), le(a.value(), b.value()), "minimum");
}

// ---- binary, Var x scalar ----

Var add(const Var& a, float b) {
  return make_result(sonar::add(a.value(), b), {a}, [](const Tensor& g) { return Grads{g}; }, "add_scalar");
}

Var sub(const Var& a, float b) {
  return make_result(sonar::sub(a.value(), b), {a}, [](const Tensor& g) { return Grads{g}; }, "sub_scalar");
}

Var mul(const Var& a, float b) {
  return make_result(sonar::mul(a.value(), b), {a}, [b](const Tensor& g) { return Grads{sonar::mul(g, b)}; },
                     "mul_scalar");
}

Var div(const Var& a, float b) {
  return make_result(sonar::div(a.value(), b), {a}, [b](const Tensor& g) { return Grads{sonar::div(g, b)}; },
                     "div_scalar");
}

Var rsub(float a, const Var& b) {
  return make_result(sonar::add(sonar::neg(b.value()), a), {b}, [](const Tensor& g) { return Grads{sonar::neg(g)}; },
                     "rsub_scalar");
}

Var rdiv(float a, const Var& b) {
  // y = a / b, dy/db = -a / b^2 = -y / b
  Tensor y = sonar::mul(sonar::pow(b.value(), -1.0f), a);
  Tensor bv = b.value();
  return make_result(y, {b}, [y, bv](const Tensor& g) {
    return Grads{sonar::neg(sonar::div(sonar::mul(g, y), bv))};
  }, "rdiv_scalar");
}

Var pow(const Var& a, float exponent) {
  Tensor x = a.value();
  return make_result(sonar::pow(x, exponent), {a}, [x, exponent](const Tensor& g) {
    if (exponent == 0.0f) return Grads{sonar::mul(g, 0.0f)};
    if (exponent == 1.0f) return Grads{g};
    if (exponent == 2.0f) return Grads{sonar::mul(sonar::mul(g, x), 2.0f)};
    return Grads{sonar::mul(sonar::mul(g, sonar::pow(x, exponent - 1.0f)), exponent)};
  }, "pow");
}

Var operator+(const Var& a, const Var& b) { return add(a, b); }
Var operator-(const Var& a, const Var& b) { return sub(a, b); }
Var operator*(const Var& a, const Var& b) { return mul(a, b); }
Var operator/(const Var& a, const Var& b) { return div(a, b); }
Var operator+(const Var& a, float b) { return add(a, b); }
Var operator-(const Var& a, float b) { return sub(a, b); }
Var operator*(const Var& a, float b) { return mul(a, b); }
Var operator/(const Var& a, float b) { return div(a, b); }
Var operator+(float a, const Var& b) { return add(b, a); }
Var operator-(float a, const Var& b) { return rsub(a, b); }
Var operator*(float a, const Var& b) { return mul(b, a); }
Var operator/(float a, const Var& b) { return rdiv(a, b); }
Var operator-(const Var& a) { return neg(a); }

// ---- unary ----

Var neg(const Var& a) {
  return make_result(sonar::neg(a.value()), {a}, [](const Tensor& g) { return Grads{sonar::neg(g)}; }, "neg");
}

Var abs(const Var& a) {
  Tensor x = a.value();
  return make_result(sonar::abs(x), {a}, [x](const Tensor& g) { return Grads{sonar::mul(g, sonar::sign(x))}; },
                     "abs");
}

Var exp(const Var& a) {
  Tensor y = sonar::exp(a.value());
  return make_result(y, {a}, [y](const Tensor& g) { return Grads{sonar::mul(g, y)}; }, "exp");
}

Var log(const Var& a) {
  Tensor x = a.value();
  return make_result(sonar::log(x), {a}, [x](const Tensor& g) { return Grads{sonar::div(g, x)}; }, "log");
}

Var sqrt(const Var& a) {
  Tensor y = sonar::sqrt(a.value());
  return make_result(y, {a}, [y](const Tensor& g) { return Grads{sonar::div(sonar::mul(g, 0.5f), y)}; }, "sqrt");
}

Var rsqrt(const Var& a) {
  // y = x^(-1/2), dy/dx = -0.5 y^3
  Tensor y = sonar::rsqrt(a.value());
  return make_result(y, {a}, [y](const Tensor& g) {
    return Grads{sonar::mul(sonar::mul(g, sonar::pow(y, 3.0f)), -0.5f)};
  }, "rsqrt");
}

Var tanh(const Var& a) {
  Tensor y = sonar::tanh(a.value());
  return make_result(y, {a}, [y](const Tensor& g) {
    // 1 - y^2
    return Grads{sonar::mul(g, sonar::add(sonar::neg(sonar::mul(y, y)), 1.0f))};
  }, "tanh");
}

Var sigmoid(const Var& a) {
  Tensor y = sonar::sigmoid(a.value());
  return make_result(y, {a}, [y](const Tensor& g) {
    // y (1 - y)
    return Grads{sonar::mul(g, sonar::mul(y, sonar::add(sonar::neg(y), 1.0f)))};
  }, "sigmoid");
}

Var relu(const Var& a) {
  Tensor y = sonar::relu(a.value());
  return make_result(y, {a}, [y](const Tensor& g) { return Grads{sonar::mul(g, float_mask(gt(y, 0.0f)))}; },
                     "relu");
}

// With a gradient to come, the forward writes gelu'(x) beside gelu(x) in one pass (they share the erf) and the
// backward is a multiply; it keeps that derivative instead of x, so memory is unchanged.
Var gelu(const Var& a) {
  if (!needs_grad(a)) return make_result(sonar::gelu(a.value()), {a}, nullptr, "gelu");
  Tensor dydx;
  Tensor y = gelu_with_grad(a.value(), dydx);
  return make_result(y, {a}, [dydx](const Tensor& g) { return Grads{sonar::mul(g, dydx)}; }, "gelu");
}

Var clamp(const Var& a, float lo, float hi) {
  SONAR_CHECK(lo <= hi, "clamp: lo ", lo, " > hi ", hi);
  Tensor x = a.value();
  Tensor y = sonar::clamp(x, lo, hi);
  if (!needs_grad(a)) return Var(y);
  Tensor outside = logical_or(lt(x, lo), gt(x, hi));
  return make_result(y, {a}, [outside](const Tensor& g) {
    return Grads{sonar::masked_fill(g, outside, 0.0f)};
  }, "clamp");
}

// ---- selection ----

Var where(const Tensor& cond, const Var& a, const Var& b) {
  Shape sa = a.shape(), sb = b.shape();
  bool ga = needs_grad(a), gb = needs_grad(b);
  return make_result(sonar::where(cond, a.value(), b.value()), {a, b}, [cond, sa, sb, ga, gb](const Tensor& g) {
    return Grads{ga ? sum_to_shape(sonar::masked_fill(g, logical_not(cond), 0.0f), sa) : Tensor(),
                 gb ? sum_to_shape(sonar::masked_fill(g, cond, 0.0f), sb) : Tensor()};
  }, "where");
}

Var masked_fill(const Var& a, const Tensor& mask, float value) {
  Shape sa = a.shape();
  return make_result(sonar::masked_fill(a.value(), mask, value), {a}, [mask, sa](const Tensor& g) {
    return Grads{sum_to_shape(sonar::masked_fill(g, mask, 0.0f), sa)};
  }, "masked_fill");
}

Var dropout(const Var& x, float p, Generator& gen, bool training) {
  SONAR_CHECK(p >= 0.0f && p < 1.0f, "dropout: p must be in [0, 1), got ", p);
  if (!training || p == 0.0f) return x;
  // keep-mask scaled by 1/(1-p): the same tensor scales the forward and the backward.
  DropoutDraw d = dropout_draw(x.value(), p, gen);
  Tensor scale = d.scale;
  return make_result(d.out, {x}, [scale](const Tensor& g) {
    return Grads{sonar::mul(g, scale)};
  }, "dropout");
}

}  // namespace sonar::ag
