// Seedable random numbers. A Generator is counter based (seed + running offset, hashed per element), so a
// given seed yields the same numbers whatever the thread count, and its state (seed, offset) can be saved
// and restored exactly (training checkpoints do).
#pragma once
#include <cstdint>

#include "tensor/tensor.h"

namespace sonar {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) { seed_ = seed; offset_ = offset; }
  // Reserves `n` counters and returns the first; element i of a draw uses counter first + i.
  uint64_t advance(uint64_t n) { uint64_t o = offset_; offset_ += n; return o; }
  // Scalar draws for host-side code (shuffles, crops): consume one counter each.
  uint64_t next_u64();
  double next_uniform();               // [0, 1)
  int64_t next_int(int64_t lo, int64_t hi);  // [lo, hi)
  double next_normal();

 private:
  uint64_t seed_ = 0;
  uint64_t offset_ = 0;
};

// 64 random bits for (seed, counter): a stateless hash (splitmix64 of both).
uint64_t random_bits(uint64_t seed, uint64_t counter);

namespace detail {
// The hash behind random_bits, inline for kernels that draw inside vectorised loops (dropout_draw, the
// attention kernels' dropout): random_bits(seed, c) == stream_bits(mix64(seed), c).
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;  // splitmix64's increment
inline __attribute__((always_inline)) uint64_t mix64(uint64_t z) {  // splitmix64's finaliser
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
inline __attribute__((always_inline)) uint64_t stream_bits(uint64_t base, uint64_t counter) {
  return mix64(base + (counter + 1) * kGolden);
}
}  // namespace detail

// Tensor draws reserve counters with gen.advance() and fill element i from counter first + i, in parallel.
// rand: the top 24 bits / 2^24 (every value a multiple of 2^-24). randn: Box-Muller in double on counter
// pairs (pair k -> elements 2k, 2k+1; reserves 2 * ceil(n / 2) counters). randint: multiply-high of the 64
// bits by the range. bernoulli: a 53-bit uniform < p. randperm: Fisher-Yates with next_int (n - 1 counters).
Tensor rand(const Shape& shape, Generator& gen);                     // U[0, 1) float32
Tensor randn(const Shape& shape, Generator& gen);                    // N(0, 1) float32
Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator& gen);  // int64 in [low, high)
Tensor bernoulli(const Shape& shape, double p, Generator& gen);      // bool, 1 with probability p
Tensor randperm(int64_t n, Generator& gen);                          // int64 permutation of [0, n)

// Dropout's forward in one pass over float32 x: scale[i] = 1 / (1 - p) (in float) where element i is kept,
// 0 where dropped, the draws exactly those of bernoulli(x.shape(), 1.0 - p, gen); out = x * scale. The same
// bits as building the mask with bernoulli, converting it and multiplying twice, without the temporaries.
struct DropoutDraw {
  Tensor out, scale;  // float32, x's shape (contiguous)
};
DropoutDraw dropout_draw(const Tensor& x, float p, Generator& gen);

}  // namespace sonar
