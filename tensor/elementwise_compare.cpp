// Comparisons (eq, ne, lt, le, gt, ge -> bool), logical ops, where and masked_fill, all broadcasting.
// Inputs of different dtypes are compared in a common type (float32 if either is float32, else int64).
// Not here: arithmetic (elementwise.cpp), unary math (elementwise_unary.cpp).
#include <cmath>

#include "tensor/broadcast_iter.h"
#include "tensor/elementwise.h"

namespace sonar {

using detail::map_binary;
using detail::map_ternary;
using detail::map_unary;

namespace {

void check_defined(const Tensor& t, const char* op) { SONAR_CHECK(t.defined(), op, ": undefined tensor"); }

// Common dtype of two inputs: their own if equal (bool and uint8 count as equal: both bytes), else float32
// if either is float32, else int64.
DType common_dtype(const Tensor& a, const Tensor& b) {
  auto bytes = [](DType d) { return d == DType::Bool || d == DType::UInt8; };
  if (a.dtype() == b.dtype()) return a.dtype();
  if (bytes(a.dtype()) && bytes(b.dtype())) return DType::UInt8;
  if (a.dtype() == DType::Float32 || b.dtype() == DType::Float32) return DType::Float32;
  return DType::Int64;
}

// A bool/uint8 tensor as bytes; any other dtype is refused with a message naming it.
void check_mask(const Tensor& m, const char* op, const char* what) {
  check_defined(m, op);
  SONAR_CHECK(m.dtype() == DType::Bool || m.dtype() == DType::UInt8, op, ": ", what,
              " must be bool or uint8, got ", dtype_name(m.dtype()), " ", shape_str(m.shape()));
}

// Converts to `dt`, except that bool and uint8 are both read as bytes without conversion.
Tensor as(const Tensor& t, DType dt) {
  const bool tb = t.dtype() == DType::Bool || t.dtype() == DType::UInt8;
  const bool db = dt == DType::Bool || dt == DType::UInt8;
  return (tb && db) ? t : t.to(dt);
}

template <class Op>
Tensor compare(const Tensor& a, const Tensor& b, const char* name, Op op) {
  check_defined(a, name);
  check_defined(b, name);
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = Tensor::empty(shape, DType::Bool);
  const DType dt = common_dtype(a, b);
  const Tensor x = as(a, dt), y = as(b, dt);
  auto f = [op](auto u, auto v) -> uint8_t { return op(u, v) ? 1 : 0; };
  switch (dt) {
    case DType::Float32: map_binary<uint8_t, float, float>(out, x, y, f, detail::kGrainCheap, name); break;
    case DType::Int64: map_binary<uint8_t, int64_t, int64_t>(out, x, y, f, detail::kGrainCheap, name); break;
    default: map_binary<uint8_t, uint8_t, uint8_t>(out, x, y, f, detail::kGrainCheap, name); break;
  }
  return out;
}

template <class Op>
Tensor compare_scalar(const Tensor& a, float s, const char* name, Op op) {
  check_defined(a, name);
  Tensor out = Tensor::empty(a.shape(), DType::Bool);
  auto f = [op, s](auto u) -> uint8_t { return op(static_cast<float>(u), s) ? 1 : 0; };
  switch (a.dtype()) {
    case DType::Float32: map_unary<uint8_t, float>(out, a, f, detail::kGrainCheap, name); break;
    case DType::Int64: {
      // Compare in double so large int64 values are not rounded to float first.
      auto g = [op, s](int64_t u) -> uint8_t { return op(static_cast<double>(u), static_cast<double>(s)) ? 1 : 0; };
      map_unary<uint8_t, int64_t>(out, a, g, detail::kGrainCheap, name);
      break;
    }
    default: map_unary<uint8_t, uint8_t>(out, a, f, detail::kGrainCheap, name); break;
  }
  return out;
}

struct Eq { template <class T> bool operator()(T x, T y) const { return x == y; } };
struct Ne { template <class T> bool operator()(T x, T y) const { return x != y; } };
struct Lt { template <class T> bool operator()(T x, T y) const { return x < y; } };
struct Le { template <class T> bool operator()(T x, T y) const { return x <= y; } };
struct Gt { template <class T> bool operator()(T x, T y) const { return x > y; } };
struct Ge { template <class T> bool operator()(T x, T y) const { return x >= y; } };

// Truth value of any tensor as bytes 0/1 (bool tensors as they are).
Tensor truth(const Tensor& t, const char* name) {
  check_defined(t, name);
  return t.dtype() == DType::Bool ? t : t.to(DType::Bool);
}

template <class Op>
Tensor logical(const Tensor& a, const Tensor& b, const char* name, Op op) {
  const Tensor x = truth(a, name), y = truth(b, name);
  Tensor out = Tensor::empty(broadcast_shapes(a.shape(), b.shape(), name), DType::Bool);
  map_binary<uint8_t, uint8_t, uint8_t>(out, x, y, op, detail::kGrainCheap, name);
  return out;
}

}  // namespace

Tensor eq(const Tensor& a, const Tensor& b) { return compare(a, b, "eq", Eq{}); }
Tensor ne(const Tensor& a, const Tensor& b) { return compare(a, b, "ne", Ne{}); }
Tensor lt(const Tensor& a, const Tensor& b) { return compare(a, b, "lt", Lt{}); }
Tensor le(const Tensor& a, const Tensor& b) { return compare(a, b, "le", Le{}); }
Tensor gt(const Tensor& a, const Tensor& b) { return compare(a, b, "gt", Gt{}); }
Tensor ge(const Tensor& a, const Tensor& b) { return compare(a, b, "ge", Ge{}); }
Tensor gt(const Tensor& a, float b) { return compare_scalar(a, b, "gt", Gt{}); }
Tensor lt(const Tensor& a, float b) { return compare_scalar(a, b, "lt", Lt{}); }

Tensor logical_not(const Tensor& a) {
  const Tensor x = truth(a, "logical_not");
  Tensor out = Tensor::empty(a.shape(), DType::Bool);
  map_unary<uint8_t, uint8_t>(out, x, [](uint8_t v) -> uint8_t { return v ^ 1; }, detail::kGrainCheap,
                              "logical_not");
  return out;
}
Tensor logical_and(const Tensor& a, const Tensor& b) {
  return logical(a, b, "logical_and", [](uint8_t x, uint8_t y) -> uint8_t { return x & y; });
}
Tensor logical_or(const Tensor& a, const Tensor& b) {
  return logical(a, b, "logical_or", [](uint8_t x, uint8_t y) -> uint8_t { return x | y; });
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_mask(cond, "where", "cond");
  check_defined(a, "where");
  check_defined(b, "where");
  const Shape ab = broadcast_shapes(a.shape(), b.shape(), "where");
  const Shape shape = broadcast_shapes(cond.shape(), ab, "where");
  const DType dt = common_dtype(a, b);
  Tensor out = Tensor::empty(shape, dt);
  const Tensor x = as(a, dt), y = as(b, dt);
  auto f = [](uint8_t c, auto u, auto v) { return c ? u : v; };
  switch (dt) {
    case DType::Float32: map_ternary<float, uint8_t, float, float>(out, cond, x, y, f, detail::kGrainCheap, "where"); break;
    case DType::Int64:
      map_ternary<int64_t, uint8_t, int64_t, int64_t>(out, cond, x, y, f, detail::kGrainCheap, "where");
      break;
    default: map_ternary<uint8_t, uint8_t, uint8_t, uint8_t>(out, cond, x, y, f, detail::kGrainCheap, "where"); break;
  }
  return out;
}

Tensor masked_fill(const Tensor& a, const Tensor& mask, float value) {
  check_defined(a, "masked_fill");
  check_mask(mask, "masked_fill", "mask");
  const Shape shape = broadcast_shapes(a.shape(), mask.shape(), "masked_fill");
  Tensor out = Tensor::empty(shape, a.dtype());
  switch (a.dtype()) {
    case DType::Float32:
      map_binary<float, float, uint8_t>(out, a, mask, [=](float x, uint8_t m) { return m ? value : x; },
                                        detail::kGrainCheap, "masked_fill");
      break;
    case DType::Int64: {
      SONAR_CHECK(std::isfinite(value) && value == std::trunc(value) && std::fabs(value) < 9.2e18f,
                  "masked_fill: an int64 tensor needs a whole fill value, got ", value);
      const int64_t v = static_cast<int64_t>(value);
      map_binary<int64_t, int64_t, uint8_t>(out, a, mask, [=](int64_t x, uint8_t m) { return m ? v : x; },
                                            detail::kGrainCheap, "masked_fill");
      break;
    }
    default: {
      SONAR_CHECK(a.dtype() == DType::Bool || (value >= 0.0f && value <= 255.0f && value == std::trunc(value)),
                  "masked_fill: a uint8 tensor needs a fill value in 0..255, got ", value);
      const uint8_t v = a.dtype() == DType::Bool ? (value != 0.0f) : static_cast<uint8_t>(value);
      map_binary<uint8_t, uint8_t, uint8_t>(out, a, mask, [=](uint8_t x, uint8_t m) { return m ? v : x; },
                                            detail::kGrainCheap, "masked_fill");
      break;
    }
  }
  return out;
}

}  // namespace sonar
