// Tensor creation: constant fills and ranges. Random creation is in tensor/random.h.
#pragma once
#include "tensor/tensor.h"

namespace sonar {

Tensor zeros(const Shape& shape, DType dtype = DType::Float32);
Tensor ones(const Shape& shape, DType dtype = DType::Float32);
Tensor full(const Shape& shape, double value, DType dtype = DType::Float32);
// *_like: a fresh contiguous tensor with t's shape and dtype.
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor full_like(const Tensor& t, double value);
// [start, end) in steps of `step`; Float32 or Int64. ceil((end - start) / step) elements (none if that is
// <= 0), element i = start + i * step computed in double (no accumulated drift; int64 truncates).
Tensor arange(double start, double end, double step = 1.0, DType dtype = DType::Int64);
Tensor arange(int64_t end, DType dtype = DType::Int64);

}  // namespace sonar
