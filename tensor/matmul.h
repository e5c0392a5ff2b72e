// Matrix products: 2-D and batched (leading dims broadcast), optional transposes of either operand.
// Three backends: oneDNN (the default: its jit sgemm for 2-D products, cached matmul primitives for batched
// ones), OpenBLAS sgemm, and a plain reference kernel (the test oracle). With matmul_precision() == BF16
// (tensor/precision.h) the oneDNN backend (Auto included) multiplies bfloat16 copies of the operands with
// float32 accumulation and output; the OpenBLAS and reference backends always compute in float32. Non-contiguous inputs whose last two dims are
// a (possibly transposed) dense matrix are passed without copying.
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
// out = op(A) @ op(B), or out += op(A) @ op(B) when accumulate (the gradient convention), written through
// out's strides without a temporary when its rows are dense (last stride 1); out must have exactly the
// product's shape and must not overlap a or b. Lets callers fill a strided slice (a channel block, a
// column block) or accumulate a gradient in place.
void matmul_into(const Tensor& out, const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false,
                 bool accumulate = false, MatmulBackend backend = MatmulBackend::Auto);
// y = x @ W^T + bias, x [..., in], W [out, in], bias [out] or undefined. The Linear layer's kernel.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);
// The same with an explicit backend (tests and benchmarks).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, MatmulBackend backend);

// Gradients of y = linear(x, W, b) given dL/dy [..., out]: dx [..., in] = dy @ W, dweight [out, in] = dy^T @ x
// (summed over all leading dims), dbias [out] = dy summed over leading dims (undefined unless need_bias).
// Fresh tensors (the caller accumulates). Transposes are passed to the kernels as flags, never copied.
struct LinearGrads {
  Tensor dx, dweight, dbias;
};
LinearGrads linear_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool need_bias,
                            MatmulBackend backend = MatmulBackend::Auto);

// Name of the oneDNN implementation matmul(a, b, trans_a, trans_b) would run: oneDNN's sgemm for 2-D products
// ("sgemm:jit (dnnl_sgemm)"), a cached matmul primitive for batched ones ("brg:avx512_core", "gemm:jit"), or
// "openblas ..." when the layout has no fast oneDNN kernel and the OpenBLAS loop is used. For tests/benchmarks.
// How many operands the fast backends have copied to a dense layout so far in this process (those whose
// last two dims were not a dense, possibly transposed, matrix). Tests use it to check that transposes and
// strided views are passed without copies.
int64_t matmul_operand_copies();

std::string matmul_onednn_impl(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);

// For kernels that convert their own operands (the attention kernel in bf16 mode): C [M x N] (float32,
// row-major, row stride ldc) = op(A) op(B), or C += op(A) op(B) when accumulate, with A and B bfloat16 bit
// patterns (tensor/precision.h convert_to_bf16) and float32 accumulation. op(A) is a stored [M x K] (row stride
// lda) or, with trans_a, the transpose of a stored [K x M]; op(B) a stored [K x N] or, with trans_b, the
// transpose of a stored [N x K]. One fixed-shape oneDNN primitive per shape, layout and thread (built on first
// use); inside a parallel region it runs on the calling thread alone. Throws naming the shape when oneDNN has
// no bf16 matmul here.
void matmul_bf16_raw(const uint16_t* A, int64_t lda, bool trans_a, const uint16_t* B, int64_t ldb, bool trans_b,
                     float* C, int64_t ldc, int64_t M, int64_t N, int64_t K, bool accumulate = false);

}  // namespace sonar
