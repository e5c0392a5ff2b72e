// Constant-filled tensors (zeros, ones, full and their *_like forms) and ranges (arange). Random creation
// is in tensor/random.cpp.
#include "tensor/creation.h"

#include <cmath>

#include "tensor/broadcast_iter.h"

namespace sonar {

namespace {
template <class T>
void fill_contiguous(const Tensor& t, T v) {
  T* p = detail::ptr<T>(t);
  detail::parallel_range(t.numel(), detail::kGrainCheap * 4, [&](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) p[i] = v;
  });
}
}  // namespace

Tensor full(const Shape& shape, double value, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  switch (dtype) {
    case DType::Float32: fill_contiguous<float>(t, static_cast<float>(value)); break;
    case DType::Int64: fill_contiguous<int64_t>(t, static_cast<int64_t>(value)); break;
    case DType::UInt8: fill_contiguous<uint8_t>(t, static_cast<uint8_t>(value)); break;
    case DType::Bool: fill_contiguous<uint8_t>(t, static_cast<uint8_t>(value != 0.0)); break;
  }
  return t;
}

Tensor zeros(const Shape& shape, DType dtype) { return full(shape, 0.0, dtype); }
Tensor ones(const Shape& shape, DType dtype) { return full(shape, 1.0, dtype); }

Tensor zeros_like(const Tensor& t) {
  SONAR_CHECK(t.defined(), "zeros_like: undefined tensor");
  return zeros(t.shape(), t.dtype());
}
Tensor ones_like(const Tensor& t) {
  SONAR_CHECK(t.defined(), "ones_like: undefined tensor");
  return ones(t.shape(), t.dtype());
}
Tensor full_like(const Tensor& t, double value) {
  SONAR_CHECK(t.defined(), "full_like: undefined tensor");
  return full(t.shape(), value, t.dtype());
}

Tensor arange(double start, double end, double step, DType dtype) {
  SONAR_CHECK(dtype == DType::Float32 || dtype == DType::Int64, "arange: dtype must be float32 or int64, got ",
              dtype_name(dtype));
  SONAR_CHECK(step != 0.0 && std::isfinite(step), "arange: step must be finite and nonzero, got ", step);
  SONAR_CHECK(std::isfinite(start) && std::isfinite(end), "arange: bounds must be finite, got ", start, " and ", end);
  const double span = (end - start) / step;
  SONAR_CHECK(span < 1e15, "arange: [", start, ", ", end, ") in steps of ", step, " has too many elements");
  const int64_t n = span > 0 ? static_cast<int64_t>(std::ceil(span)) : 0;
  Tensor t = Tensor::empty({n}, dtype);
  // Each element is start + i * step (no running sum, so no drift).
  if (dtype == DType::Float32) {
    float* p = detail::ptr<float>(t);
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(start + static_cast<double>(i) * step);
  } else {
    SONAR_CHECK(std::fabs(start) < 9e18 && std::fabs(end) < 9e18, "arange: bounds ", start, " and ", end,
                " are outside the int64 range");
    int64_t* p = detail::ptr<int64_t>(t);
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int64_t>(start + static_cast<double>(i) * step);
  }
  return t;
}

Tensor arange(int64_t end, DType dtype) {
  SONAR_CHECK(dtype == DType::Float32 || dtype == DType::Int64, "arange: dtype must be float32 or int64, got ",
              dtype_name(dtype));
  const int64_t n = std::max<int64_t>(end, 0);
  Tensor t = Tensor::empty({n}, dtype);
  if (dtype == DType::Float32) {
    float* p = detail::ptr<float>(t);
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(i);
  } else {
    int64_t* p = detail::ptr<int64_t>(t);
    for (int64_t i = 0; i < n; ++i) p[i] = i;
  }
  return t;
}

}  // namespace sonar
