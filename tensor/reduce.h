// Reductions over any set of dims with keepdim, plus softmax / log_softmax and their backward kernels.
// Sums accumulate in double where it matters for precision (means and variances of long rows).
#pragma once
#include <vector>

#include "tensor/tensor.h"

namespace sonar {

// dims empty = all dims. Negative dims count from the end.
Tensor sum(const Tensor& a, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& a, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor var(const Tensor& a, const std::vector<int64_t>& dims = {}, bool unbiased = true, bool keepdim = false);
Tensor norm(const Tensor& a, double p = 2.0, const std::vector<int64_t>& dims = {}, bool keepdim = false);

struct ValuesIndices {
  Tensor values;   // float32
  Tensor indices;  // int64
};
ValuesIndices max(const Tensor& a, int64_t dim, bool keepdim = false);
ValuesIndices min(const Tensor& a, int64_t dim, bool keepdim = false);
Tensor max_all(const Tensor& a);  // scalar
Tensor min_all(const Tensor& a);
Tensor argmax(const Tensor& a, int64_t dim, bool keepdim = false);
Tensor argmin(const Tensor& a, int64_t dim, bool keepdim = false);
// Any/all over bool or uint8 tensors.
Tensor any(const Tensor& a, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor all(const Tensor& a, const std::vector<int64_t>& dims = {}, bool keepdim = false);

Tensor softmax(const Tensor& a, int64_t dim);
Tensor log_softmax(const Tensor& a, int64_t dim);
// Given y = softmax(x) (or log_softmax) and dL/dy, returns dL/dx.
Tensor softmax_backward(const Tensor& grad_out, const Tensor& y, int64_t dim);
Tensor log_softmax_backward(const Tensor& grad_out, const Tensor& y, int64_t dim);

}  // namespace sonar
