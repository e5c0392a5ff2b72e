// Indexing and shape-assembling kernels: index_select, gather, scatter_add, embedding, one_hot, concat,
// stack, split, L2 normalisation, weight normalisation's backward, top-k. Indices are int64; out-of-range indices throw naming the value.
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
// Backward of weight normalisation w = v * (g / n), n = ||v||_2 over every dim but `dim` (kept as size 1),
// g and n of that keepdim shape (torch.nn.utils.weight_norm). One pass sums <dL/dw, v> per index of `dim`,
// one writes dv = dL/dw * s + v * c with s = g / n and c = -<dL/dw, v> s / n^2 (0 where n = 0);
// dg = <dL/dw, v> / n. The sums run over a fixed number of chunks, so results do not depend on threads.
struct WeightNormGrads {
  Tensor dv, dg;
};
WeightNormGrads weight_norm_backward(const Tensor& grad_w, const Tensor& v, const Tensor& g, const Tensor& n,
                                     int64_t dim);
struct TopK {
  Tensor values;   // float32
  Tensor indices;  // int64
};
TopK topk(const Tensor& a, int64_t k, int64_t dim = -1, bool largest = true);

}  // namespace sonar
