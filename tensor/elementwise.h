// Broadcasting elementwise kernels (float32 unless stated), OpenMP-parallel with vectorisable inner loops.
// Binary ops broadcast like numpy; non-contiguous inputs are accepted. Backward helpers for the
// non-trivial activations live here too (they accumulate nothing: they return the input gradient).
//
// Dtypes: results are fresh contiguous tensors. Arithmetic (add, sub, mul, maximum, minimum) gives float32
// if either input is float32 (the other is converted), otherwise int64 (bool/uint8 count as integers).
// div and pow need at least one float32 input. Scalar add/sub/mul keep int64 when the scalar is a whole
// number, else give float32. neg, abs, sign, relu and clamp keep float32 or int64. exp, log, sqrt, rsqrt,
// tanh, sigmoid, gelu and the scalar div/pow throw on non-float input, naming the op and dtype.
// The shared strided/broadcast loop is in tensor/broadcast_iter.h (internal, reusable by other kernels).
#pragma once
#include "tensor/tensor.h"

namespace sonar {

// Shape both inputs broadcast to; throws naming the op and both shapes when they don't.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, float b);
Tensor sub(const Tensor& a, float b);
Tensor mul(const Tensor& a, float b);
Tensor div(const Tensor& a, float b);
Tensor pow(const Tensor& a, float exponent);
// a += alpha * b (b broadcast to a, converted to a's dtype), in place through a's strides; the accumulation
// primitive for gradients. a is float32 (or int64 with a whole alpha); a b overlapping a is handled.
void add_(Tensor& a, const Tensor& b, float alpha = 1.0f);
void mul_(Tensor& a, float s);  // a *= s in place (float32, or int64 with a whole s)

Tensor neg(const Tensor& a);
Tensor abs(const Tensor& a);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor rsqrt(const Tensor& a);
Tensor tanh(const Tensor& a);
Tensor sigmoid(const Tensor& a);
Tensor relu(const Tensor& a);
Tensor gelu(const Tensor& a);  // exact: x * 0.5 * (1 + erf(x / sqrt(2)))
Tensor clamp(const Tensor& a, float lo, float hi);
Tensor sign(const Tensor& a);

// dL/dx for y = gelu(x) given dL/dy (exact erf form).
Tensor gelu_backward(const Tensor& grad_out, const Tensor& x);
// gelu(x), with its derivative gelu'(x) written to `dydx` (a fresh tensor of x's shape) in the same pass:
// for training, where the backward is then one multiply (grad_out * dydx) and x need not be kept. Both
// results are bit-identical to gelu(x) and gelu_backward(ones, x).
Tensor gelu_with_grad(const Tensor& x, Tensor& dydx);

// where(cond, a, b): cond is bool/uint8 (nonzero = take a), all three broadcast together; the result has
// a's dtype when a and b agree, else float32 (or int64 for two integer dtypes).
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
// a with `value` where mask (bool/uint8, broadcast with a) is nonzero; keeps a's dtype.
Tensor masked_fill(const Tensor& a, const Tensor& mask, float value);

// Comparisons return bool tensors; inputs of different dtypes are compared as float32 (if either is
// float32) or int64.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, float b);
Tensor lt(const Tensor& a, float b);
// Logical ops take any dtype (nonzero = true) and return bool.
Tensor logical_not(const Tensor& a);
Tensor logical_and(const Tensor& a, const Tensor& b);
Tensor logical_or(const Tensor& a, const Tensor& b);

// Sums `grad` (shape broadcast from `shape`) back down to `shape`: the broadcast-reduction every
// binary op's backward needs. Sums over grad's leading extra dims and over dims where `shape` has size 1;
// throws naming both shapes if `shape` does not broadcast to grad's. Float32 only. Returns `grad` itself
// (shared storage, no copy) when the shapes are already equal; otherwise a fresh contiguous tensor.
Tensor sum_to_shape(const Tensor& grad, const Shape& shape);

}  // namespace sonar
