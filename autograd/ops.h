// Differentiable ops on Var: the tensor kernels of tensor/*.h (same names and argument order) with their
// backward closures. Binary ops broadcast like numpy and reduce gradients back with sum_to_shape; views are
// differentiable; fused ops (softmax, log_softmax, layer_norm, gelu, matmul, linear, conv1d/2d, embedding,
// gather, index_select, l2_normalize) call the explicit backward kernels of tensor/.
// This file is not the engine (autograd/var.h) nor the losses (autograd/loss.h).
// Integer/bool arguments (indices, masks, conditions) are plain Tensors: they carry no gradient.
#pragma once
#include <vector>

#include "autograd/var.h"
#include "tensor/conv.h"
#include "tensor/random.h"

namespace sonar::ag {

// ---- elementwise, broadcasting ----
Var add(const Var& a, const Var& b);
Var sub(const Var& a, const Var& b);
Var mul(const Var& a, const Var& b);
Var div(const Var& a, const Var& b);
Var add(const Var& a, float b);
Var sub(const Var& a, float b);
Var mul(const Var& a, float b);
Var div(const Var& a, float b);
Var rsub(float a, const Var& b);  // a - b
Var rdiv(float a, const Var& b);  // a / b
Var pow(const Var& a, float exponent);
Var maximum(const Var& a, const Var& b);  // gradient to a where a >= b, else to b (ties go to a)
Var minimum(const Var& a, const Var& b);  // gradient to a where a <= b, else to b

Var operator+(const Var& a, const Var& b);
Var operator-(const Var& a, const Var& b);
Var operator*(const Var& a, const Var& b);
Var operator/(const Var& a, const Var& b);
Var operator+(const Var& a, float b);
Var operator-(const Var& a, float b);
Var operator*(const Var& a, float b);
Var operator/(const Var& a, float b);
Var operator+(float a, const Var& b);
Var operator-(float a, const Var& b);
Var operator*(float a, const Var& b);
Var operator/(float a, const Var& b);
Var operator-(const Var& a);

Var neg(const Var& a);
Var abs(const Var& a);  // gradient sign(x) (0 at 0)
Var exp(const Var& a);
Var log(const Var& a);
Var sqrt(const Var& a);
Var rsqrt(const Var& a);
Var tanh(const Var& a);
Var sigmoid(const Var& a);
Var relu(const Var& a);  // gradient 0 at 0
Var gelu(const Var& a);  // exact erf form
Var clamp(const Var& a, float lo, float hi);  // gradient passes where lo <= x <= hi

// cond is bool/uint8; cond, a and b broadcast together.
Var where(const Tensor& cond, const Var& a, const Var& b);
Var masked_fill(const Var& a, const Tensor& mask, float value);

// Inverted dropout: zeroes each element with probability p and scales the rest by 1/(1-p). Identity when
// !training or p == 0. Draws from `gen`.
Var dropout(const Var& x, float p, Generator& gen, bool training = true);

// ---- reductions (dims empty = all dims; negative dims count from the end) ----
Var sum(const Var& a, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Var mean(const Var& a, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Var var(const Var& a, const std::vector<int64_t>& dims = {}, bool unbiased = true, bool keepdim = false);
// p-norm for finite p >= 1; the gradient at a zero norm is 0.
Var norm(const Var& a, double p = 2.0, const std::vector<int64_t>& dims = {}, bool keepdim = false);
// Values of the max/min along dim; the gradient goes to the element the kernel's index picked.
Var max(const Var& a, int64_t dim, bool keepdim = false);
Var min(const Var& a, int64_t dim, bool keepdim = false);

Var softmax(const Var& a, int64_t dim);
Var log_softmax(const Var& a, int64_t dim);

// ---- fused layers ----
// Over the last dim; weight/bias may be undefined Vars.
Var layer_norm(const Var& x, const Var& weight, const Var& bias, float eps = 1e-5f);
// op(A) @ op(B) with leading (batch) dims broadcast.
Var matmul(const Var& a, const Var& b, bool trans_a = false, bool trans_b = false);
// y = x @ W^T + b; x [..., in], W [out, in], bias [out] or an undefined Var.
Var linear(const Var& x, const Var& weight, const Var& bias);
Var conv1d(const Var& x, const Var& weight, const Var& bias, const Conv1dParams& p = {});
Var conv2d(const Var& x, const Var& weight, const Var& bias, const Conv2dParams& p = {});
Var embedding(const Var& weight, const Tensor& indices);  // weight [N, D], int64 indices any shape
Var gather(const Var& a, int64_t dim, const Tensor& index);
Var index_select(const Var& a, int64_t dim, const Tensor& index);
Var l2_normalize(const Var& a, int64_t dim, float eps = 1e-12f);  // x / max(||x||_2, eps)
// Weight normalisation w = v * (g / ||v||), the norm over every dim but `dim`, g of that keepdim shape
// (torch.nn.utils.weight_norm). The forward is the same three ops as mul(v, div(g, norm(v))); the backward
// is one fused kernel (tensor/index.h) instead of their chain of full-size temporaries.
Var weight_norm(const Var& v, const Var& g, int64_t dim);

// ---- views (share storage with the input; gradients flow back through them) ----
Var reshape(const Var& a, const Shape& shape);
Var view(const Var& a, const Shape& shape);
Var flatten(const Var& a, int64_t start = 0, int64_t end = -1);
Var permute(const Var& a, const std::vector<int64_t>& dims);
Var transpose(const Var& a, int64_t d0, int64_t d1);
Var narrow(const Var& a, int64_t dim, int64_t start, int64_t length);
Var slice(const Var& a, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Var select(const Var& a, int64_t dim, int64_t index);
Var expand(const Var& a, const Shape& shape);
Var squeeze(const Var& a);
Var squeeze(const Var& a, int64_t dim);
Var unsqueeze(const Var& a, int64_t dim);
Var contiguous(const Var& a);

// ---- assembling ----
Var cat(const std::vector<Var>& xs, int64_t dim);
Var stack(const std::vector<Var>& xs, int64_t dim);
// Pieces are narrow views of `a` (torch.split / torch.chunk semantics).
std::vector<Var> split(const Var& a, const std::vector<int64_t>& sizes, int64_t dim);
std::vector<Var> chunk(const Var& a, int64_t chunks, int64_t dim);

}  // namespace sonar::ag
