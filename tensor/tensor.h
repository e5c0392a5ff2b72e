// Tensor: a strided view (shape, strides, offset, dtype) onto reference-counted, 64-byte aligned storage.
// Views (view/reshape, permute/transpose, narrow/slice/select, expand, squeeze/unsqueeze) share storage;
// contiguous(), clone() and to() copy. This file holds no math: kernels live in tensor/ops.h and the
// files it lists. It knows nothing of gradients (see autograd/).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/error.h"

namespace sonar {

using Shape = std::vector<int64_t>;

constexpr int kMaxDims = 8;  // kernels and iterators support at least this many dimensions

// A block of memory owned by one or more tensors. Always 64-byte aligned. Contents are uninitialised
// unless the creator fills them.
class Storage {
 public:
  explicit Storage(size_t nbytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
};

// Number of elements of a shape (1 for a scalar shape {}).
int64_t shape_numel(const Shape& shape);
// Row-major strides of a shape.
Shape contiguous_strides(const Shape& shape);
// Normalises a possibly negative dim against `ndim` and throws with `op` in the message if out of range.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor: defined() == false

  // Uninitialised contiguous tensor.
  static Tensor empty(const Shape& shape, DType dtype = DType::Float32);
  // Wraps existing storage; shape/strides/offset are in elements.
  Tensor(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset, DType dtype);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t offset() const { return offset_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t size(int64_t d) const;    // negative d counts from the end
  int64_t stride(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  bool shares_storage(const Tensor& other) const { return storage_ && storage_ == other.storage_; }
  std::string str() const;  // "Tensor(float32, [2, 3])"

  // Pointer to the first element (storage + offset). Checks that T matches dtype().
  template <class T> T* data() const {
    check_dtype(dtype_of<T>::value, "data");
    return static_cast<T*>(raw_data());
  }
  void* raw_data() const;
  // Pointer to the first element for a uint8 or bool tensor (both are stored as bytes).
  uint8_t* bytes() const;

  // Views (share storage).
  Tensor view(const Shape& shape) const;     // needs compatible strides; one -1 may be inferred
  Tensor reshape(const Shape& shape) const;  // view when possible, otherwise a contiguous copy
  Tensor flatten(int64_t start = 0, int64_t end = -1) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const { return transpose(-2, -1); }
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;  // python-like bounds
  Tensor select(int64_t dim, int64_t index) const;  // removes the dim
  Tensor expand(const Shape& shape) const;           // -1 keeps a size; size-1 dims get stride 0
  Tensor squeeze() const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;

  // Copies.
  Tensor contiguous() const;  // returns *this when already contiguous
  Tensor clone() const;       // always a fresh contiguous copy
  Tensor to(DType dtype) const;  // converts (float->int truncates toward zero; nonzero->1 for bool)

  // In-place writes through this view.
  void copy_(const Tensor& src);  // src broadcast to this shape, converted to this dtype
  void fill_(double value);
  void zero_() { fill_(0.0); }

  // Value of a one-element tensor, converted to T (float, double, int64_t, bool...).
  template <class T> T item() const { return static_cast<T>(item_double()); }
  double item_double() const;
  // Element at a multi-index, as double (slow; for tests and debugging).
  double at(const std::vector<int64_t>& index) const;
  // All elements in row-major order, converted to T (for tests and small data).
  template <class T> std::vector<T> to_vector() const;

  void check_dtype(DType expected, const char* op) const;

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_;
  Shape strides_;
  int64_t offset_ = 0;
  DType dtype_ = DType::Float32;
};

// Creation from host data (copied).
Tensor from_vector(const std::vector<float>& values, const Shape& shape);
Tensor from_vector(const std::vector<int64_t>& values, const Shape& shape);
Tensor from_bytes(const std::vector<uint8_t>& values, const Shape& shape, DType dtype = DType::UInt8);
Tensor scalar_tensor(float value);

// Strided element offsets of `t` in row-major order, for generic kernels: calls f(linear_index, offset)
// for every element (offset in elements from t's first element). Used by copy and simple kernels.
template <class F>
void for_each_offset(const Shape& shape, const Shape& strides, F&& f) {
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  const int nd = static_cast<int>(shape.size());
  if (nd == 0) { f(int64_t{0}, int64_t{0}); return; }
  int64_t idx[kMaxDims] = {0};
  int64_t off = 0;
  const int64_t inner = shape[nd - 1], inner_stride = strides[nd - 1];
  for (int64_t i = 0; i < n; i += inner) {
    for (int64_t j = 0; j < inner; ++j) f(i + j, off + j * inner_stride);
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < shape[d]) { off += strides[d]; break; }
      off -= (shape[d] - 1) * strides[d];
      idx[d] = 0;
    }
  }
}

}  // namespace sonar
