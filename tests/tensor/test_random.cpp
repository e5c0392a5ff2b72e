// Tests of tensor/random.h: determinism (same seed -> same numbers, on 1 and 2 OpenMP threads, and when
// resumed from a saved (seed, offset) state), distribution moments within named statistical tolerances,
// ranges, and argument errors.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "tensor/elementwise.h"
#include "tensor/random.h"

using namespace sonar;

namespace {
// Sample statistics of n iid draws: the standard error of a mean is sigma / sqrt(n); a test tolerance of
// kSigmas standard errors fails a correct generator with probability ~1e-9 (and the seeds are fixed).
constexpr double kSigmas = 6.0;
constexpr int64_t kN = 1 << 20;

struct Moments {
  double mean = 0, var = 0;
};
template <class T>
Moments moments(const std::vector<T>& v) {
  Moments m;
  for (T x : v) m.mean += double(x);
  m.mean /= double(v.size());
  for (T x : v) m.var += (double(x) - m.mean) * (double(x) - m.mean);
  m.var /= double(v.size() - 1);
  return m;
}
// Standard error of the sample variance for a distribution with variance s2 and 4th central moment mu4.
double var_se(double s2, double mu4, int64_t n) { return std::sqrt((mu4 - s2 * s2) / double(n)); }
}  // namespace

TEST(Random, RandomBitsIsAPureHash) {
  EXPECT_EQ(random_bits(1, 2), random_bits(1, 2));
  EXPECT_NE(random_bits(1, 2), random_bits(1, 3));
  EXPECT_NE(random_bits(1, 2), random_bits(2, 2));
  // Bits are balanced: over many counters each bit is set about half the time.
  std::vector<int> ones(64, 0);
  const int n = 1 << 16;
  for (int i = 0; i < n; ++i) {
    const uint64_t b = random_bits(42, i);
    for (int k = 0; k < 64; ++k) ones[k] += (b >> k) & 1;
  }
  for (int k = 0; k < 64; ++k) EXPECT_NEAR(ones[k], n / 2.0, kSigmas * std::sqrt(n / 4.0)) << "bit " << k;
}

TEST(Random, GeneratorStateAndScalarDraws) {
  Generator g(7);
  EXPECT_EQ(g.seed(), 7u);
  EXPECT_EQ(g.offset(), 0u);
  const uint64_t a = g.next_u64();
  EXPECT_EQ(a, random_bits(7, 0));
  EXPECT_EQ(g.offset(), 1u);
  EXPECT_EQ(g.advance(10), 1u);
  EXPECT_EQ(g.offset(), 11u);
  // Saving and restoring (seed, offset) reproduces the stream exactly.
  Generator h(0);
  h.set_state(g.seed(), g.offset());
  EXPECT_EQ(g.next_u64(), h.next_u64());
  EXPECT_EQ(g.next_uniform(), h.next_uniform());
  EXPECT_EQ(g.next_normal(), h.next_normal());
  EXPECT_EQ(g.next_int(-5, 5), h.next_int(-5, 5));
  // Scalar draw ranges and moments.
  std::vector<double> u, z;
  std::vector<int64_t> k;
  for (int i = 0; i < 200000; ++i) {
    u.push_back(g.next_uniform());
    z.push_back(g.next_normal());
    k.push_back(g.next_int(-3, 4));
  }
  EXPECT_GE(*std::min_element(u.begin(), u.end()), 0.0);
  EXPECT_LT(*std::max_element(u.begin(), u.end()), 1.0);
  EXPECT_EQ(*std::min_element(k.begin(), k.end()), -3);
  EXPECT_EQ(*std::max_element(k.begin(), k.end()), 3);
  const double n = double(u.size());
  EXPECT_NEAR(moments(u).mean, 0.5, kSigmas * std::sqrt(1 / 12.0 / n));
  EXPECT_NEAR(moments(z).mean, 0.0, kSigmas / std::sqrt(n));
  EXPECT_NEAR(moments(z).var, 1.0, kSigmas * var_se(1, 3, int64_t(n)));
  EXPECT_NEAR(moments(k).mean, 0.0, kSigmas * std::sqrt(4.0 / n));  // var of uniform{-3..3} = 4
  EXPECT_THROW(g.next_int(3, 3), Error);
}

TEST(Random, RandIsUniform24Bit) {
  Generator g(123);
  Tensor t = rand({1024, 1024}, g);
  EXPECT_EQ(t.dtype(), DType::Float32);
  EXPECT_EQ(g.offset(), uint64_t(kN));
  const auto v = t.to_vector<float>();
  for (float x : v) {
    ASSERT_GE(x, 0.f);
    ASSERT_LT(x, 1.f);
    ASSERT_EQ(x * 16777216.f, std::floor(x * 16777216.f)) << "not a multiple of 2^-24: " << x;
  }
  const Moments m = moments(v);
  EXPECT_NEAR(m.mean, 0.5, kSigmas * std::sqrt(1 / 12.0 / kN));
  EXPECT_NEAR(m.var, 1 / 12.0, kSigmas * var_se(1 / 12.0, 1 / 80.0, kN));
  // Histogram of 16 bins: each within kSigmas binomial standard deviations.
  std::vector<int64_t> bins(16, 0);
  for (float x : v) ++bins[int(x * 16)];
  for (int64_t c : bins) EXPECT_NEAR(double(c), kN / 16.0, kSigmas * std::sqrt(kN / 16.0 * 15 / 16));
}

TEST(Random, RandnMoments) {
  Generator g(5);
  for (int64_t n : {kN, kN + 1}) {  // even and odd counts (the last Box-Muller pair is half used)
    Tensor t = randn({n}, g);
    const auto v = t.to_vector<float>();
    const Moments m = moments(v);
    EXPECT_NEAR(m.mean, 0.0, kSigmas / std::sqrt(double(n)));
    EXPECT_NEAR(m.var, 1.0, kSigmas * var_se(1, 3, n));
    // Fraction within one sigma: 0.682689...
    double inside = 0;
    for (float x : v) inside += std::fabs(x) < 1.f;
    const double p = 0.6826894921370859;
    EXPECT_NEAR(inside / n, p, kSigmas * std::sqrt(p * (1 - p) / n));
    for (float x : v) ASSERT_TRUE(std::isfinite(x));
  }
  EXPECT_EQ(g.offset(), uint64_t(kN + kN + 2));  // counters are reserved in pairs
}

TEST(Random, RandintAndBernoulli) {
  Generator g(9);
  Tensor r = randint(-2, 5, {kN}, g);
  EXPECT_EQ(r.dtype(), DType::Int64);
  const auto v = r.to_vector<int64_t>();
  std::vector<int64_t> counts(7, 0);
  for (int64_t x : v) {
    ASSERT_GE(x, -2);
    ASSERT_LT(x, 5);
    ++counts[x + 2];
  }
  for (int64_t c : counts) EXPECT_NEAR(double(c), kN / 7.0, kSigmas * std::sqrt(kN / 7.0 * 6 / 7));
  // Full 64-bit-ish ranges work.
  Tensor w = randint(INT64_MIN / 2, INT64_MAX / 2, {1000}, g);
  EXPECT_GT(moments(w.to_vector<double>()).var, 0.0);
  EXPECT_THROW(randint(3, 3, {2}, g), Error);

  for (double p : {0.0, 0.1, 0.5, 1.0}) {
    Tensor b = bernoulli({kN}, p, g);
    EXPECT_EQ(b.dtype(), DType::Bool);
    const auto bv = b.to_vector<int>();
    double s = 0;
    for (int x : bv) {
      ASSERT_TRUE(x == 0 || x == 1);
      s += x;
    }
    EXPECT_NEAR(s / kN, p, kSigmas * std::sqrt(p * (1 - p) / kN)) << "p=" << p;
  }
  EXPECT_THROW(bernoulli({2}, 1.5, g), Error);
  EXPECT_THROW(bernoulli({2}, -0.1, g), Error);
}

TEST(Random, RandpermIsAPermutation) {
  Generator g(11);
  Tensor p = randperm(1000, g);
  EXPECT_EQ(p.dtype(), DType::Int64);
  auto v = p.to_vector<int64_t>();
  std::vector<int64_t> sorted = v;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  int fixed = 0;
  for (int64_t i = 0; i < 1000; ++i) fixed += v[i] == i;
  EXPECT_LT(fixed, 10);  // a uniform permutation has ~1 fixed point (Poisson(1): P(>=10) ~ 1e-7)
  EXPECT_EQ(randperm(0, g).numel(), 0);
  EXPECT_EQ(randperm(1, g).to_vector<int64_t>(), (std::vector<int64_t>{0}));
  // Every permutation of 3 appears about equally often.
  std::map<std::vector<int64_t>, int> seen;
  const int trials = 60000;
  for (int i = 0; i < trials; ++i) ++seen[randperm(3, g).to_vector<int64_t>()];
  EXPECT_EQ(seen.size(), 6u);
  for (auto& [perm, c] : seen) EXPECT_NEAR(c, trials / 6.0, kSigmas * std::sqrt(trials / 6.0 * 5 / 6));
  EXPECT_THROW(randperm(-1, g), Error);
}

TEST(Random, SameSeedSameNumbersOnAnyThreadCount) {
  const int saved = omp_get_max_threads();
  auto draw = [](int threads) {
    omp_set_num_threads(threads);
    Generator g(2024);
    std::vector<float> out;
    for (const Tensor& t : {rand({3, 100001}, g), randn({777777}, g), randint(0, 1000, {300000}, g).to(DType::Float32),
                            bernoulli({500001}, 0.3, g).to(DType::Float32), randperm(5000, g).to(DType::Float32)}) {
      auto v = t.to_vector<float>();
      out.insert(out.end(), v.begin(), v.end());
    }
    out.push_back(float(g.offset()));
    return out;
  };
  const auto one = draw(1), two = draw(2);
  omp_set_num_threads(saved);
  EXPECT_EQ(one, two);
  // A different seed gives different numbers; resuming from a saved state continues the same stream.
  Generator a(1), b(2);
  EXPECT_NE(rand({8}, a).to_vector<float>(), rand({8}, b).to_vector<float>());
  Generator c(3);
  Tensor first = randn({10}, c);
  Generator d(0);
  d.set_state(c.seed(), c.offset());
  EXPECT_EQ(randn({10}, c).to_vector<float>(), randn({10}, d).to_vector<float>());
  // Element i of a draw depends only on (seed, counter): a draw of 5 equals the prefix of a draw of 10.
  Generator e(4), f(4);
  auto five = rand({5}, e).to_vector<float>(), ten = rand({10}, f).to_vector<float>();
  EXPECT_TRUE(std::equal(five.begin(), five.end(), ten.begin()));
  // 0-d and empty shapes.
  Generator s(6);
  EXPECT_EQ(rand({}, s).dim(), 0);
  EXPECT_EQ(randn({0, 3}, s).numel(), 0);
}

namespace sonar {
namespace {

// dropout_draw is one pass doing what ag::dropout did with bernoulli, a conversion and two products: the same
// elements kept, the same bits out, the generator advanced by the same count. Checked bit for bit for
// several p (0.5 puts keep * 2^53 on an integer, the threshold's edge case) and a strided input.
TEST(Random, DropoutDrawIsBernoulliMaskTimesScale) {
  for (float p : {0.0f, 0.1f, 0.5f, 0.9f}) {
    Generator seed_gen(21);
    Tensor base = randn({37, 100}, seed_gen);
    for (bool strided : {false, true}) {
      Tensor x = strided ? base.transpose(0, 1) : base;
      Generator g1(5), g2(5);
      g1.advance(3);
      g2.advance(3);
      DropoutDraw d = dropout_draw(x, p, g1);
      Tensor scale = mul(bernoulli(x.shape(), 1.0 - p, g2).to(DType::Float32), 1.0f / (1.0f - p));
      Tensor out = mul(x, scale);
      EXPECT_EQ(g1.offset(), g2.offset());
      const auto a = d.scale.to_vector<float>(), b = scale.contiguous().to_vector<float>();
      const auto c = d.out.to_vector<float>(), e = out.contiguous().to_vector<float>();
      ASSERT_EQ(a.size(), b.size());
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << "scale, p " << p;
      EXPECT_EQ(0, std::memcmp(c.data(), e.data(), c.size() * sizeof(float))) << "out, p " << p;
      if (p == 0.5f) {
        const double kept = static_cast<double>(std::count(a.begin(), a.end(), 2.0f)) / a.size();
        EXPECT_NEAR(kept, 0.5, 0.05);
      }
    }
  }
  Generator g(1);
  EXPECT_THROW(dropout_draw(randn({3}, g), 1.0f, g), Error);
  EXPECT_THROW(dropout_draw(randint(0, 3, {3}, g), 0.1f, g), Error);
}

}  // namespace
}  // namespace sonar
