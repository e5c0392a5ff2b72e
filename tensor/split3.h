// Internal: a shape seen as [outer, n, inner] around one dim, the layout the per-dim kernels (softmax,
// index) iterate over. Not a public API and not a view: it only multiplies sizes, it checks nothing
// (callers have already normalised `d` into range).
#pragma once
#include <cstdint>

#include "tensor/tensor.h"

namespace sonar::detail {

struct Split3 {
  int64_t outer = 1, n = 1, inner = 1;
};

inline Split3 split3(const Shape& s, int64_t d) {
  Split3 r;
  for (int64_t i = 0; i < d; ++i) r.outer *= s[i];
  r.n = s[d];
  for (size_t i = d + 1; i < s.size(); ++i) r.inner *= s[i];
  return r;
}

}  // namespace sonar::detail
