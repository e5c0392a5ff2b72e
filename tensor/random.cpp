// Counter-based random numbers: element i of a draw is a pure function of (seed, first counter + i), so
// results do not depend on the OpenMP thread count and a Generator's (seed, offset) is its whole state.
// The hash is splitmix64: output = mix(mix(seed) + (counter + 1) * golden), i.e. the counter-th value of
// a splitmix64 stream whose start is derived from the seed.
#include "tensor/random.h"

#include <cmath>

#include "tensor/broadcast_iter.h"

namespace sonar {

namespace {

using detail::kGolden;
using detail::mix64;

// Uniform [0, 1) float with a 24-bit mantissa (every value is exactly representable).
inline float uniform24(uint64_t bits) { return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f); }
// Uniform (0, 1] double with 53 bits (never 0, so log() is finite).
inline double uniform53_open0(uint64_t bits) { return (static_cast<double>(bits >> 11) + 1.0) * (1.0 / 9007199254740992.0); }
// Uniform [0, 1) double with 53 bits.
inline double uniform53(uint64_t bits) { return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0); }
// Unbiased-enough integer in [0, range) by multiply-high (Lemire), range >= 1.
inline uint64_t below(uint64_t bits, uint64_t range) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(bits) * range) >> 64);
}

constexpr double kTwoPi = 6.283185307179586476925;

}  // namespace

uint64_t random_bits(uint64_t seed, uint64_t counter) { return detail::stream_bits(mix64(seed), counter); }

uint64_t Generator::next_u64() { return random_bits(seed_, advance(1)); }
double Generator::next_uniform() { return uniform53(next_u64()); }
int64_t Generator::next_int(int64_t lo, int64_t hi) {
  SONAR_CHECK(lo < hi, "Generator::next_int: empty range [", lo, ", ", hi, ")");
  return lo + static_cast<int64_t>(below(next_u64(), static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo)));
}
double Generator::next_normal() {
  // Box-Muller on one counter: the second uniform comes from re-hashing the same bits.
  const uint64_t bits = next_u64();
  const double u1 = uniform53_open0(bits), u2 = uniform53(mix64(bits ^ kGolden));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2);
}

Tensor rand(const Shape& shape, Generator& gen) {
  Tensor t = Tensor::empty(shape);
  const int64_t n = t.numel();
  const uint64_t seed = gen.seed(), first = gen.advance(static_cast<uint64_t>(n));
  float* p = detail::ptr<float>(t);
  detail::parallel_range(n, detail::kGrainMath, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) p[i] = uniform24(random_bits(seed, first + i));
  });
  return t;
}

Tensor randn(const Shape& shape, Generator& gen) {
  Tensor t = Tensor::empty(shape);
  const int64_t n = t.numel();
  const int64_t pairs = (n + 1) / 2;
  // Pair k uses counters first + 2k and first + 2k + 1 and fills elements 2k and 2k + 1.
  const uint64_t seed = gen.seed(), first = gen.advance(static_cast<uint64_t>(2 * pairs));
  float* p = detail::ptr<float>(t);
  detail::parallel_range(pairs, detail::kGrainMath / 2, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      const double u1 = uniform53_open0(random_bits(seed, first + 2 * k));
      const double u2 = uniform53(random_bits(seed, first + 2 * k + 1));
      const double r = std::sqrt(-2.0 * std::log(u1)), th = kTwoPi * u2;
      p[2 * k] = static_cast<float>(r * std::cos(th));
      if (2 * k + 1 < n) p[2 * k + 1] = static_cast<float>(r * std::sin(th));
    }
  });
  return t;
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator& gen) {
  SONAR_CHECK(low < high, "randint: empty range [", low, ", ", high, ")");
  Tensor t = Tensor::empty(shape, DType::Int64);
  const int64_t n = t.numel();
  const uint64_t range = static_cast<uint64_t>(high) - static_cast<uint64_t>(low);
  const uint64_t seed = gen.seed(), first = gen.advance(static_cast<uint64_t>(n));
  int64_t* p = detail::ptr<int64_t>(t);
  detail::parallel_range(n, detail::kGrainMath, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) p[i] = low + static_cast<int64_t>(below(random_bits(seed, first + i), range));
  });
  return t;
}

Tensor bernoulli(const Shape& shape, double p, Generator& gen) {
  SONAR_CHECK(p >= 0.0 && p <= 1.0, "bernoulli: probability must be in [0, 1], got ", p);
  Tensor t = Tensor::empty(shape, DType::Bool);
  const int64_t n = t.numel();
  const uint64_t seed = gen.seed(), first = gen.advance(static_cast<uint64_t>(n));
  uint8_t* q = t.bytes();
  detail::parallel_range(n, detail::kGrainMath, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) q[i] = uniform53(random_bits(seed, first + i)) < p ? 1 : 0;
  });
  return t;
}

DropoutDraw dropout_draw(const Tensor& x, float p, Generator& gen) {
  SONAR_CHECK(x.dtype() == DType::Float32, "dropout_draw: needs a float32 tensor, got ", dtype_name(x.dtype()));
  SONAR_CHECK(p >= 0.0f && p < 1.0f, "dropout_draw: p must be in [0, 1), got ", p);
  const Tensor xc = x.contiguous();
  DropoutDraw d{Tensor::empty(x.shape()), Tensor::empty(x.shape())};
  const int64_t n = xc.numel();
  const uint64_t seed = gen.seed(), first = gen.advance(static_cast<uint64_t>(n));
  // uniform53(bits) < keep  <=>  (bits >> 11) < ceil(keep * 2^53): both sides are integers scaled by 2^-53
  // (exact in double), so the integer test keeps exactly the elements bernoulli keeps, and vectorises.
  const double keep = 1.0 - static_cast<double>(p);
  const uint64_t threshold = static_cast<uint64_t>(std::ceil(keep * 9007199254740992.0));
  const float inv = 1.0f / (1.0f - p);
  const uint64_t base = mix64(seed);
  const float* px = xc.data<float>();
  float* po = d.out.data<float>();
  float* ps = d.scale.data<float>();
  detail::parallel_range(n, detail::kGrainMath, [&](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) {
      const uint64_t bits = detail::stream_bits(base, first + static_cast<uint64_t>(i));
      const float s = (bits >> 11) < threshold ? inv : 0.0f;
      ps[i] = s;
      po[i] = px[i] * s;
    }
  });
  return d;
}

Tensor randperm(int64_t n, Generator& gen) {
  SONAR_CHECK(n >= 0, "randperm: n must be >= 0, got ", n);
  Tensor t = Tensor::empty({n}, DType::Int64);
  int64_t* p = detail::ptr<int64_t>(t);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  // Fisher-Yates: swap position i with a uniform position in [0, i], i from n-1 down to 1.
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[gen.next_int(0, i + 1)]);
  return t;
}

}  // namespace sonar
