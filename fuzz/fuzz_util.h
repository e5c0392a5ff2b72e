// Helpers shared by the libFuzzer targets in this folder: the bytes as a std::string, and a check that a
// parsed tensor's view lies inside its storage (AddressSanitizer flags the read if it does not). Not a
// target itself, and not used by the library or the tests.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "tensor/tensor.h"

namespace sonar::fuzz {

inline std::string bytes_of(const uint8_t* data, size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

// Reads the first and the last byte of the first and the last element a view reaches (O(dims), so a view
// of 2^60 elements with stride 0 costs nothing). A view past its storage is a heap overflow here.
inline uint8_t touch(const Tensor& t) {
  if (!t.defined() || t.numel() == 0) return 0;
  int64_t last = t.offset();
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const size_t elem = dtype_size(t.dtype());
  const auto* base = static_cast<const volatile uint8_t*>(t.storage()->data());
  const size_t first_byte = static_cast<size_t>(t.offset()) * elem;
  const size_t last_byte = static_cast<size_t>(last) * elem + elem - 1;
  return static_cast<uint8_t>(base[first_byte] ^ base[last_byte]);
}

}  // namespace sonar::fuzz
