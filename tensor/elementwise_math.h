// Internal: branch-free float32 math (exp, tanh, erf, erfc, sigmoid) written so that loops calling these
// functions vectorise (std::exp and friends are opaque library calls that never do without -ffast-math).
// Each is accurate to a few ulp over the whole float range and keeps inf/NaN semantics; the test
// tests/tensor/test_elementwise.cpp (MathFunctionsMatchLibm) sweeps them against double-precision libm.
// Not a public API: kernels in tensor/ include it. Call these directly (they are always_inline; taking
// their address can fail to compile at -O1). Must not be compiled with -ffast-math: the rounding
// trick in exp_f and the NaN checks rely on IEEE semantics.
#pragma once
#include <bit>
#include <cstdint>

#if defined(__GNUC__)
#define SONAR_INLINE inline __attribute__((always_inline))
#else
#define SONAR_INLINE inline
#endif

namespace sonar::detail {

// 2^k for integer k in [-126, 127], built from the exponent bits.
SONAR_INLINE float pow2i(int32_t k) { return std::bit_cast<float>(static_cast<int32_t>((k + 127) << 23)); }

// exp(hi + lo) where hi + lo is known more precisely than its float sum (hi a large value with an exact
// residual lo, |lo| up to a few units); plain exp(x) is exp_f(x). Cody-Waite reduction hi + lo = n ln2 + r,
// |r| <= ln2/2 (hi - n ln2_hi is exact, lo is added after it), then Cephes' degree-6 polynomial; the
// scale 2^n is applied in two halves so results reach the denormal range and overflow cleanly to inf.
// Max error about 1 ulp for normal results.
SONAR_INLINE float exp_f(float hi, float lo = 0.0f) {
  const float sum = hi + lo;
  // Outside [-104, 89] the result is 0 or inf; clamp hi (and drop lo) there.
  const bool clip = sum > 89.0f || sum < -104.0f;
  float x = sum > 89.0f ? 89.0f : hi;
  x = sum < -104.0f ? -104.0f : x;
  const float l = clip ? 0.0f : lo;
  float xs = clip ? x : sum;
  xs = xs != xs ? 0.0f : xs;  // NaN: keep the float -> int conversion below defined; the result is NaN anyway
  // n = round((hi + lo) / ln2) by the 1.5 * 2^23 trick (IEEE round-to-nearest; needs no fast-math).
  const float kRound = 12582912.0f;
  const float n = (xs * 1.44269504088896341f + kRound) - kRound;
  float r = x - n * 0.693359375f;  // ln2 split: the hi part has few bits so n * hi is exact
  r = r + l;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni >> 1, n2 = ni - n1;
  const float res = y * pow2i(n1) * pow2i(n2);
  return sum != sum ? sum : res;
}

// 1 / (1 + exp(-x)), stable for large |x|: exp only ever sees -|x|, and the negative side is e/(1+e).
SONAR_INLINE float sigmoid_f(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float e = exp_f(-ax);
  const float r = 1.0f / (1.0f + e);
  return x >= 0.0f ? r : e * r;  // NaN: x >= 0 is false, e * r is NaN
}

// tanh: odd polynomial (Cephes tanhf) for |x| < 0.625, else 1 - 2 / (exp(2|x|) + 1) with the sign of x.
SONAR_INLINE float tanh_f(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float big = 1.0f - 2.0f / (exp_f(2.0f * ax) + 1.0f);
  const float sbig = x < 0.0f ? -big : big;
  return ax < 0.625f ? small : sbig;  // NaN: ax < 0.625 false, big is NaN
}

// erfc(a) for a >= 0 with small relative error (Numerical Recipes' erfcc Chebyshev fit, fractional error
// below 1.2e-7 for all a >= 0), given a^2 = s + e exactly (s the float product, e its residual): exp(-a^2 +
// poly) is evaluated as exp_f(-s, poly - e), so the rounding of a^2 (up to ~4e-6 relative for a ~ 9) does
// not reach the result.
SONAR_INLINE float erfc_pos_f(float a, float s, float e) {
  const float t = 1.0f / (1.0f + 0.5f * a);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  const float r = t * exp_f(-s, p - e);
  return a > 10.0f ? 0.0f : r;  // erfc(10) < 3e-45 rounds to 0; also keeps a = inf from making NaN
}
SONAR_INLINE float erfc_pos_f(float a) {
  const float s = a * a;
  return erfc_pos_f(a, s, __builtin_fmaf(a, a, -s));
}

// erf(z) / z for |z| <= 0.5 from the Maclaurin series (8 terms; truncation below 1e-10).
SONAR_INLINE float erf_series_f(float z) {
  const float w = z * z;
  float p = 1.0f / (40320.0f * 17.0f);  // n = 8: 1 / (n! (2n + 1)), alternating signs
  p = p * w - 1.0f / (5040.0f * 15.0f);
  p = p * w + 1.0f / (720.0f * 13.0f);
  p = p * w - 1.0f / (120.0f * 11.0f);
  p = p * w + 1.0f / (24.0f * 9.0f);
  p = p * w - 1.0f / (6.0f * 7.0f);
  p = p * w + 1.0f / (2.0f * 5.0f);
  p = p * w - 1.0f / 3.0f;
  p = p * w + 1.0f;
  return p * 1.12837916709551257f;  // 2 / sqrt(pi)
}

SONAR_INLINE float erf_f(float z) {
  const float a = z < 0.0f ? -z : z;
  const float big = 1.0f - erfc_pos_f(a);
  const float sbig = z < 0.0f ? -big : big;
  return a <= 0.5f ? z * erf_series_f(z) : sbig;  // NaN: a <= 0.5 false, big is NaN
}

// exp(a^2) erfc(a) / t for t = 1 / (1 + a / 2), a in [0, 10.5]: a degree-10 polynomial in u = (t - 0.58) / 0.42
// (u in [-1, 1] there), fitted by weighted least squares on 4000 Chebyshev nodes against mpmath's erfc to a
// relative error of 4e-9; evaluated in float it is within 1.2e-7. It is Numerical Recipes' erfcc (above) with
// its exp(poly(t)) replaced by one polynomial, so that erfc(a) = t P(t) exp(-a^2) needs only the exp(-a^2)
// that GELU's derivative needs anyway: one exp per element instead of two.
SONAR_INLINE float erfcx_over_t_f(float t) {
  const float u = (t - 0.58f) * 2.38095238095238095f;
  float p = 6.2704362507e-6f;
  p = p * u + 6.6396215568e-6f;
  p = p * u - 7.2359732446e-5f;
  p = p * u + 9.6057310616e-6f;
  p = p * u + 6.2625271075e-4f;
  p = p * u - 6.7472331218e-4f;
  p = p * u - 6.3277413691e-3f;
  p = p * u + 6.3083839967e-3f;
  p = p * u + 1.0352104458e-1f;
  p = p * u + 3.2718790965e-1f;
  p = p * u + 5.6940872141e-1f;
  return p;
}

// 2 Phi(x) = 1 + erf(x / sqrt 2), given g = exp(-x^2 / 2): with a = |x| / sqrt 2, erfc(a) = t P(t) g, and
// 2 Phi(x) is erfc(a) for x < 0 and 2 - erfc(a) otherwise (no cancellation on either side). g comes from
// x^2 / 2 split exactly (gaussian_f), so the rounding of a never reaches the exponential: in the far negative
// tail it would cost ~x^2 * 6e-8 relative error.
SONAR_INLINE float two_phi_f(float x, float g) {
  const float a = (x < 0.0f ? -x : x) * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.5f * a);
  const float c0 = t * erfcx_over_t_f(t) * g;
  const float c = a > 10.0f ? 0.0f : c0;  // erfc(10) < 3e-45 rounds to 0; also keeps |x| = inf from making NaN
  return x < 0.0f ? c : 2.0f - c;         // NaN x: c is NaN
}

// exp(-x^2 / 2) from x^2 / 2 = h + e split exactly (h is returned for callers that test its size).
SONAR_INLINE float gaussian_f(float x, float& h) {
  h = 0.5f * x * x;
  const float e = __builtin_fmaf(0.5f * x, x, -h);
  return exp_f(-h, -e);
}

// Exact-form GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)).
SONAR_INLINE float gelu_f(float x) {
  float h;
  return 0.5f * x * two_phi_f(x, gaussian_f(x, h));
}

// gelu_f(x) (the same operations as it, so the same bits) and d gelu / dx = Phi(x) + x phi(x), phi(x) =
// exp(-x^2 / 2) / sqrt(2 pi), sharing the exponential. x phi(x) is taken as 0 once x^2 / 2 > 200 (it is below
// 1e-85 there): x^2 overflows to inf for |x| > 1.8e19, and its residual inf - inf would make the derivative
// NaN instead of 1 (x -> +inf) or 0 (x -> -inf).
SONAR_INLINE void gelu_and_grad_f(float x, float& y, float& dydx) {
  float h;
  const float g = gaussian_f(x, h);
  const float two_phi = two_phi_f(x, g);
  y = 0.5f * x * two_phi;
  const float cdf = 0.5f * two_phi;
  const float pdf = 0.39894228040143268f * g;
  const float x_pdf = h <= 200.0f ? x * pdf : 0.0f;  // NaN x: h is NaN, cdf too
  dydx = cdf + x_pdf;
}

// d gelu / dx alone (gelu_and_grad_f's derivative; the compiler drops the unused gelu).
SONAR_INLINE float gelu_grad_f(float x) {
  float y, dydx;
  gelu_and_grad_f(x, y, dydx);
  return dydx;
}

}  // namespace sonar::detail
