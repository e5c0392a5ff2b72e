// Tensor storage, shape bookkeeping, views and copies. Math kernels are elsewhere (tensor/ops.h).
#include "tensor/tensor.h"

#include <algorithm>
#include <cmath>
#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>

namespace sonar {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// glibc serves large blocks with mmap and unmaps them on free, so every large temporary (a [12, 496, 496]
// attention matrix, say) would be page-faulted in afresh on each use, costing as much as the kernel that
// fills it. Keeping freed blocks in the heap makes reuse free; peak memory is unchanged.
static void tune_allocator_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    mallopt(M_MMAP_THRESHOLD, 512 << 20);
    mallopt(M_TRIM_THRESHOLD, 1024 << 20);
  });
}

Storage::Storage(size_t nbytes) : nbytes_(nbytes) {
  tune_allocator_once();
  // aligned_alloc needs a size that is a multiple of the alignment; never allocate 0 bytes.
  size_t padded = std::max<size_t>(64, (nbytes + 63) / 64 * 64);
  data_ = std::aligned_alloc(64, padded);
  SONAR_CHECK(data_ != nullptr, "Storage: out of memory allocating ", nbytes, " bytes");
}

Storage::~Storage() { std::free(data_); }

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t acc = 1;
  for (int64_t i = static_cast<int64_t>(shape.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(shape[i], 1);
  }
  return st;
}

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  int64_t d = dim < 0 ? dim + ndim : dim;
  SONAR_CHECK(d >= 0 && d < std::max<int64_t>(ndim, 1) && (ndim > 0 || d == 0), op, ": dim ", dim,
              " out of range for a tensor with ", ndim, " dims");
  return d;
}

static void check_shape(const Shape& shape, const char* op) {
  SONAR_CHECK(shape.size() <= static_cast<size_t>(kMaxDims), op, ": at most ", kMaxDims, " dims supported, got ",
              shape_str(shape));
  for (int64_t s : shape) SONAR_CHECK(s >= 0, op, ": negative size in shape ", shape_str(shape));
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  check_shape(shape, "empty");
  auto st = std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype));
  return Tensor(std::move(st), shape, contiguous_strides(shape), 0, dtype);
}

Tensor::Tensor(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset, DType dtype)
    : storage_(std::move(storage)), shape_(std::move(shape)), strides_(std::move(strides)), offset_(offset),
      dtype_(dtype) {
  SONAR_CHECK(shape_.size() == strides_.size(), "Tensor: shape ", shape_str(shape_), " and strides ",
              shape_str(strides_), " differ in rank");
  check_shape(shape_, "Tensor");
}

int64_t Tensor::size(int64_t d) const { return shape_[wrap_dim(d, dim(), "size")]; }
int64_t Tensor::stride(int64_t d) const { return strides_[wrap_dim(d, dim(), "stride")]; }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // an empty tensor is trivially dense, whatever its strides say
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (shape_[i] == 1) continue;
    if (strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  return std::string("Tensor(") + dtype_name(dtype_) + ", " + shape_str(shape_) + ")";
}

void* Tensor::raw_data() const {
  SONAR_CHECK(defined(), "data: tensor is undefined");
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

uint8_t* Tensor::bytes() const {
  SONAR_CHECK(dtype_ == DType::UInt8 || dtype_ == DType::Bool, "bytes: expected a uint8 or bool tensor, got ",
              dtype_name(dtype_));
  return static_cast<uint8_t*>(raw_data());
}

void Tensor::check_dtype(DType expected, const char* op) const {
  SONAR_CHECK(defined(), op, ": tensor is undefined");
  bool ok = dtype_ == expected || (expected == DType::UInt8 && dtype_ == DType::Bool);
  SONAR_CHECK(ok, op, ": expected ", dtype_name(expected), " tensor, got ", dtype_name(dtype_), " ",
              shape_str(shape_));
}

// ---- views ----

static Shape infer_shape(const Shape& requested, int64_t numel, const Shape& from, const char* op) {
  Shape out = requested;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      SONAR_CHECK(infer < 0, op, ": only one dimension can be -1 in ", shape_str(requested));
      infer = static_cast<int64_t>(i);
    } else {
      SONAR_CHECK(out[i] >= 0, op, ": invalid size ", out[i], " in ", shape_str(requested));
      known *= out[i];
    }
  }
  if (infer >= 0) {
    SONAR_CHECK(known > 0 && numel % known == 0, op, ": cannot reshape ", shape_str(from), " into ",
                shape_str(requested));
    out[infer] = numel / known;
  }
  SONAR_CHECK(shape_numel(out) == numel, op, ": cannot reshape ", shape_str(from), " (", numel, " elements) into ",
              shape_str(requested));
  return out;
}

// Strides for viewing (shape, strides) as new_shape without copying, or empty if impossible.
// Same algorithm as PyTorch's computeStride: split the old shape into contiguous chunks.
static bool compute_view_strides(const Shape& old_shape, const Shape& old_strides, const Shape& new_shape,
                                 Shape& out) {
  out.assign(new_shape.size(), 0);
  if (shape_numel(old_shape) == 0 || old_shape.empty()) {  // empty, or a 0-d scalar: any shape views it
    out = contiguous_strides(new_shape);
    return true;
  }
  int64_t view_d = static_cast<int64_t>(new_shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.empty() ? 1 : old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t tensor_d = static_cast<int64_t>(old_shape.size()) - 1; tensor_d >= 0; --tensor_d) {
    tensor_numel *= old_shape[tensor_d];
    if (tensor_d == 0 ||
        (old_shape[tensor_d - 1] != 1 && old_strides[tensor_d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= new_shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (tensor_d > 0) {
        chunk_base_stride = old_strides[tensor_d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

Tensor Tensor::view(const Shape& shape) const {
  Shape ns = infer_shape(shape, numel(), shape_, "view");
  Shape st;
  SONAR_CHECK(compute_view_strides(shape_, strides_, ns, st), "view: cannot view ", shape_str(shape_),
              " with strides ", shape_str(strides_), " as ", shape_str(ns), " without a copy; use reshape");
  return Tensor(storage_, ns, st, offset_, dtype_);
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape ns = infer_shape(shape, numel(), shape_, "reshape");
  Shape st;
  if (compute_view_strides(shape_, strides_, ns, st)) return Tensor(storage_, ns, st, offset_, dtype_);
  return contiguous().view(ns);
}

Tensor Tensor::flatten(int64_t start, int64_t end) const {
  if (dim() == 0) return reshape({1});
  int64_t s = wrap_dim(start, dim(), "flatten"), e = wrap_dim(end, dim(), "flatten");
  SONAR_CHECK(s <= e, "flatten: start dim ", start, " after end dim ", end);
  Shape ns(shape_.begin(), shape_.begin() + s);
  int64_t m = 1;
  for (int64_t i = s; i <= e; ++i) m *= shape_[i];
  ns.push_back(m);
  ns.insert(ns.end(), shape_.begin() + e + 1, shape_.end());
  return reshape(ns);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  SONAR_CHECK(static_cast<int64_t>(dims.size()) == dim(), "permute: got ", dims.size(), " dims for a tensor of shape ",
              shape_str(shape_));
  Shape ns(dim()), st(dim());
  std::vector<bool> seen(dim(), false);
  for (int64_t i = 0; i < dim(); ++i) {
    int64_t d = wrap_dim(dims[i], dim(), "permute");
    SONAR_CHECK(!seen[d], "permute: dim ", dims[i], " repeated in ", shape_str(dims));
    seen[d] = true;
    ns[i] = shape_[d];
    st[i] = strides_[d];
  }
  return Tensor(storage_, ns, st, offset_, dtype_);
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  int64_t a = wrap_dim(d0, dim(), "transpose"), b = wrap_dim(d1, dim(), "transpose");
  Shape ns = shape_, st = strides_;
  std::swap(ns[a], ns[b]);
  std::swap(st[a], st[b]);
  return Tensor(storage_, ns, st, offset_, dtype_);
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  int64_t dd = wrap_dim(d, dim(), "narrow");
  SONAR_CHECK(start >= 0 && length >= 0 && start + length <= shape_[dd], "narrow: range [", start, ", ",
              start + length, ") out of bounds for dim ", d, " of size ", shape_[dd], " in ", shape_str(shape_));
  Shape ns = shape_;
  ns[dd] = length;
  return Tensor(storage_, ns, strides_, offset_ + start * strides_[dd], dtype_);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  int64_t dd = wrap_dim(d, dim(), "slice");
  SONAR_CHECK(step > 0, "slice: step must be positive, got ", step);
  int64_t n = shape_[dd];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape ns = shape_, st = strides_;
  ns[dd] = (end - start + step - 1) / step;
  st[dd] = strides_[dd] * step;
  return Tensor(storage_, ns, st, offset_ + start * strides_[dd], dtype_);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  int64_t dd = wrap_dim(d, dim(), "select");
  int64_t n = shape_[dd];
  int64_t i = index < 0 ? index + n : index;
  SONAR_CHECK(i >= 0 && i < n, "select: index ", index, " out of range for dim ", d, " of size ", n, " in ",
              shape_str(shape_));
  Shape ns = shape_, st = strides_;
  ns.erase(ns.begin() + dd);
  st.erase(st.begin() + dd);
  return Tensor(storage_, ns, st, offset_ + i * strides_[dd], dtype_);
}

Tensor Tensor::expand(const Shape& shape) const {
  SONAR_CHECK(static_cast<int64_t>(shape.size()) >= dim(), "expand: cannot expand ", shape_str(shape_), " to ",
              shape_str(shape));
  int64_t lead = static_cast<int64_t>(shape.size()) - dim();
  Shape ns(shape.size()), st(shape.size());
  for (int64_t i = 0; i < static_cast<int64_t>(shape.size()); ++i) {
    if (i < lead) {
      SONAR_CHECK(shape[i] >= 0, "expand: new leading dim must be given, got ", shape_str(shape));
      ns[i] = shape[i];
      st[i] = 0;
      continue;
    }
    int64_t src = shape_[i - lead];
    int64_t want = shape[i] == -1 ? src : shape[i];
    if (src == want) {
      ns[i] = src;
      st[i] = strides_[i - lead];
    } else {
      SONAR_CHECK(src == 1, "expand: cannot expand ", shape_str(shape_), " to ", shape_str(shape), " (dim ", i,
                  " has size ", src, ", not 1)");
      ns[i] = want;
      st[i] = 0;
    }
  }
  return Tensor(storage_, ns, st, offset_, dtype_);
}

Tensor Tensor::squeeze() const {
  Shape ns, st;
  for (int64_t i = 0; i < dim(); ++i)
    if (shape_[i] != 1) {
      ns.push_back(shape_[i]);
      st.push_back(strides_[i]);
    }
  return Tensor(storage_, ns, st, offset_, dtype_);
}

Tensor Tensor::squeeze(int64_t d) const {
  int64_t dd = wrap_dim(d, dim(), "squeeze");
  if (shape_[dd] != 1) return *this;
  Shape ns = shape_, st = strides_;
  ns.erase(ns.begin() + dd);
  st.erase(st.begin() + dd);
  return Tensor(storage_, ns, st, offset_, dtype_);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  int64_t dd = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape ns = shape_, st = strides_;
  int64_t s = dd < dim() ? strides_[dd] * shape_[dd] : 1;
  ns.insert(ns.begin() + dd, 1);
  st.insert(st.begin() + dd, s);
  return Tensor(storage_, ns, st, offset_, dtype_);
}

// ---- copies ----

Tensor Tensor::contiguous() const {
  SONAR_CHECK(defined(), "contiguous: tensor is undefined");
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  SONAR_CHECK(defined(), "clone: tensor is undefined");
  Tensor out = empty(shape_, dtype_);
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  Tensor out = empty(shape_, dtype);
  out.copy_(*this);
  return out;
}

namespace {
template <class T>
T* typed(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

template <class D, class S>
D convert(S v, DType dst) {
  if (dst == DType::Bool) return static_cast<D>(v != S(0) ? 1 : 0);
  return static_cast<D>(v);
}

template <class D, class S>
void copy_typed(const Tensor& dst, const Tensor& src) {
  D* d = typed<D>(dst);
  const S* s = typed<S>(src);
  const DType dt = dst.dtype();
  const int64_t n = dst.numel();
  if (dst.is_contiguous() && src.is_contiguous() && src.shape() == dst.shape()) {
    if constexpr (std::is_same_v<D, S>) {
      if (dt != DType::Bool || src.dtype() == DType::Bool) {
        std::memcpy(d, s, static_cast<size_t>(n) * sizeof(D));
        return;
      }
    }
#pragma omp parallel for if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) d[i] = convert<D>(s[i], dt);
    return;
  }
  // Generic path: walk the source offsets; write through dst strides.
  if (dst.is_contiguous()) {
    for_each_offset(src.shape(), src.strides(), [&](int64_t i, int64_t off) { d[i] = convert<D>(s[off], dt); });
  } else {
    std::vector<int64_t> soff(static_cast<size_t>(n));
    for_each_offset(src.shape(), src.strides(), [&](int64_t i, int64_t off) { soff[i] = off; });
    for_each_offset(dst.shape(), dst.strides(), [&](int64_t i, int64_t off) { d[off] = convert<D>(s[soff[i]], dt); });
  }
}

template <class D>
void copy_from(const Tensor& dst, const Tensor& src) {
  switch (src.dtype()) {
    case DType::Float32: copy_typed<D, float>(dst, src); break;
    case DType::Int64: copy_typed<D, int64_t>(dst, src); break;
    case DType::UInt8:
    case DType::Bool: copy_typed<D, uint8_t>(dst, src); break;
  }
}
}  // namespace

void Tensor::copy_(const Tensor& src) {
  SONAR_CHECK(defined() && src.defined(), "copy_: undefined tensor");
  Tensor s = src.shape() == shape_ ? src : src.expand(shape_);
  if (storage_ == s.storage_ && !(s.offset_ == offset_ && s.strides_ == strides_)) s = s.clone();  // overlap
  switch (dtype_) {
    case DType::Float32: copy_from<float>(*this, s); break;
    case DType::Int64: copy_from<int64_t>(*this, s); break;
    case DType::UInt8:
    case DType::Bool: copy_from<uint8_t>(*this, s); break;
  }
}

void Tensor::fill_(double value) {
  SONAR_CHECK(defined(), "fill_: tensor is undefined");
  auto fill = [&](auto* p, auto v) {
    for_each_offset(shape_, strides_, [&](int64_t, int64_t off) { p[off] = v; });
  };
  switch (dtype_) {
    case DType::Float32: fill(typed<float>(*this), static_cast<float>(value)); break;
    case DType::Int64: fill(typed<int64_t>(*this), static_cast<int64_t>(value)); break;
    case DType::UInt8: fill(typed<uint8_t>(*this), static_cast<uint8_t>(value)); break;
    case DType::Bool: fill(typed<uint8_t>(*this), static_cast<uint8_t>(value != 0.0)); break;
  }
}

double Tensor::at(const std::vector<int64_t>& index) const {
  SONAR_CHECK(static_cast<int64_t>(index.size()) == dim(), "at: index ", shape_str(index), " for shape ",
              shape_str(shape_));
  int64_t off = 0;
  for (int64_t i = 0; i < dim(); ++i) {
    SONAR_CHECK(index[i] >= 0 && index[i] < shape_[i], "at: index ", shape_str(index), " out of range for shape ",
                shape_str(shape_));
    off += index[i] * strides_[i];
  }
  switch (dtype_) {
    case DType::Float32: return typed<float>(*this)[off];
    case DType::Int64: return static_cast<double>(typed<int64_t>(*this)[off]);
    default: return typed<uint8_t>(*this)[off];
  }
}

double Tensor::item_double() const {
  SONAR_CHECK(numel() == 1, "item: expected a one-element tensor, got ", shape_str(shape_));
  return at(std::vector<int64_t>(dim(), 0));
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  std::vector<T> out(static_cast<size_t>(numel()));
  auto read = [&](auto* p) {
    for_each_offset(shape_, strides_, [&](int64_t i, int64_t off) { out[i] = static_cast<T>(p[off]); });
  };
  switch (dtype_) {
    case DType::Float32: read(typed<float>(*this)); break;
    case DType::Int64: read(typed<int64_t>(*this)); break;
    default: read(typed<uint8_t>(*this)); break;
  }
  return out;
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<uint8_t> Tensor::to_vector<uint8_t>() const;
template std::vector<int> Tensor::to_vector<int>() const;

Tensor from_vector(const std::vector<float>& values, const Shape& shape) {
  SONAR_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
              " values for shape ", shape_str(shape));
  Tensor t = Tensor::empty(shape, DType::Float32);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(float));
  return t;
}

Tensor from_vector(const std::vector<int64_t>& values, const Shape& shape) {
  SONAR_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
              " values for shape ", shape_str(shape));
  Tensor t = Tensor::empty(shape, DType::Int64);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(int64_t));
  return t;
}

Tensor from_bytes(const std::vector<uint8_t>& values, const Shape& shape, DType dtype) {
  SONAR_CHECK(dtype == DType::UInt8 || dtype == DType::Bool, "from_bytes: dtype must be uint8 or bool");
  SONAR_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_bytes: ", values.size(),
              " values for shape ", shape_str(shape));
  Tensor t = Tensor::empty(shape, dtype);
  for (size_t i = 0; i < values.size(); ++i)
    t.bytes()[i] = dtype == DType::Bool ? (values[i] != 0) : values[i];
  return t;
}

Tensor scalar_tensor(float value) { return from_vector(std::vector<float>{value}, {}); }

}  // namespace sonar
