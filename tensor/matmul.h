// Matrix products: 2-D and batched (leading dims broadcast), optional transposes of either operand.
// Three backends: oneDNN (cached primitives, the default), OpenBLAS sgemm, and a plain reference kernel
// (the test oracle). Non-contiguous inputs whose last two dims are a (possibly transposed) dense matrix
// are passed without copying.
#pragma once
#include "tensor/tensor.h"

namespace sonar {

enum class MatmulBackend { Auto, OneDNN, OpenBLAS, Reference };

// Backend used by Auto (default OneDNN). Process-wide; for benchmarks and tests.
void set_default_matmul_backend(MatmulBackend b);
MatmulBackend default_matmul_backend();

// C = op(A) @ op(B); A [..., M, K] (or [..., K, M] if trans_a), B [..., K, N] (or [..., N, K] if trans_b).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false,
              MatmulBackend backend = MatmulBackend::Auto);
// y = x @ W^T + bias, x [..., in], W [out, in], bias [out] or undefined. The Linear layer's kernel.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

}  // namespace sonar
