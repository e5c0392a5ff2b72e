// Element types a Tensor can hold. float32 for data and parameters, int64 for indices and labels,
// uint8 and bool (one byte each, 0 or 1) for masks. No float64 tensors: double is used inside kernels only.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace sonar {

enum class DType : uint8_t { Float32, Int64, UInt8, Bool };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::Float32: return 4;
    case DType::Int64: return 8;
    case DType::UInt8:
    case DType::Bool: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Int64: return "int64";
    case DType::UInt8: return "uint8";
    case DType::Bool: return "bool";
  }
  return "?";
}

// C++ type -> DType, used by Tensor::data<T>() to check the caller asked for the right type.
template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::Float32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::Int64; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::UInt8; };
// bool tensors are read and written as uint8_t (0/1); data<bool>() is not provided on purpose.

}  // namespace sonar
