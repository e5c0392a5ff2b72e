// Layer normalisation over the last dim (PyTorch semantics, biased variance, eps inside the sqrt), with its
// backward. Statistics are computed in double for rows of any length.
#pragma once
#include "tensor/tensor.h"

namespace sonar {

struct LayerNormForward {
  Tensor y;     // same shape as x
  Tensor mean;  // [rows]
  Tensor rstd;  // [rows], 1 / sqrt(var + eps)
};
// weight and bias may be undefined (no affine transform); otherwise shape [C] with C = x.size(-1).
LayerNormForward layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps);

struct LayerNormBackward {
  Tensor dx, dweight, dbias;  // dweight/dbias undefined when weight/bias were
};
LayerNormBackward layer_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                      const LayerNormForward& fwd, bool need_bias_grad);

}  // namespace sonar
