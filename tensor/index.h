// Indexing and shape-assembling kernels: index_select, gather, scatter_add, embedding, one_hot, concat,
// stack, split, L2 normalisation, top-k. Indices are int64; out-of-range indices throw naming the value.
#pragma once
#include <vector>

#include "tensor/tensor.h"

namespace sonar {

Tensor index_select(const Tensor& a, int64_t dim, const Tensor& index);
// Backward of index_select: zeros of `shape` with grad rows added at `index` along dim.
Tensor index_add(const Shape& shape, int64_t dim, const Tensor& index, const Tensor& grad);
Tensor gather(const Tensor& a, int64_t dim, const Tensor& index);
// out = a.clone(); out[... index[i] ...] += src[i] along dim (torch.scatter_add semantics).
Tensor scatter_add(const Tensor& a, int64_t dim, const Tensor& index, const Tensor& src);
Tensor embedding(const Tensor& weight, const Tensor& indices);  // weight [N, D], indices any shape
Tensor one_hot(const Tensor& indices, int64_t num_classes);     // float32 [..., num_classes]
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim);
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim);
std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int64_t dim);
std::vector<Tensor> chunk(const Tensor& a, int64_t chunks, int64_t dim);
// x / max(||x||_2, eps) along dim (torch.nn.functional.normalize).
Tensor l2_normalize(const Tensor& a, int64_t dim, float eps = 1e-12f);
Tensor l2_normalize_backward(const Tensor& grad_y, const Tensor& x, int64_t dim, float eps = 1e-12f);
struct TopK {
  Tensor values;   // float32
  Tensor indices;  // int64
};
TopK topk(const Tensor& a, int64_t k, int64_t dim = -1, bool largest = true);

}  // namespace sonar
