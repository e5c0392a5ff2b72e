// bf16 matrix products (tensor/precision.h): the float32 -> bfloat16 rounding against hand-made bit patterns,
// bf16 products against a double-precision reference on the bf16-rounded operands (so a float32 product, which
// is off by the operand rounding, would fail), the weight cache converting each weight once per cache, the
// support check, and float32 staying the default. Skipped (with the reason) on a CPU without AVX512-BF16.
#include <gtest/gtest.h>

#include <cstring>

#include "tensor/ops.h"
#include "tensor/matmul.h"
#include "tensor/precision.h"
#include "tensor/random.h"
#include "tests/test_util.h"

namespace sonar {
namespace {

// A bf16 product with float32 accumulation differs from the exact product of the rounded operands only by
// float32 rounding of the K-term sums: at most K u sum |a||b| (u = 2^-24); we allow twice that.
constexpr double kAccumTol = 1.2e-7;  // 2u, u = 2^-24
// bf16 keeps 8 significant bits: a float32 product of unrounded operands is off by about this much relative.
constexpr double kBf16OperandRel = 1.0 / 256.0;

uint16_t bits_of(float f) {
  uint16_t out;
  convert_to_bf16(&f, &out, 1);
  return out;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(Precision, RoundsToNearestEven) {
  EXPECT_EQ(bits_of(1.0f), 0x3f80);
  EXPECT_EQ(bits_of(-2.0f), 0xc000);
  EXPECT_EQ(bits_of(from_bits(0x3f808000u)), 0x3f80);  // halfway, even below: down
  EXPECT_EQ(bits_of(from_bits(0x3f818000u)), 0x3f82);  // halfway, odd below: up
  EXPECT_EQ(bits_of(from_bits(0x3f808001u)), 0x3f81);  // above halfway: up
  EXPECT_EQ(bits_of(from_bits(0x3f807fffu)), 0x3f80);  // below halfway: down
  EXPECT_EQ(bits_of(from_bits(0x7f7fffffu)), 0x7f80);  // the largest float rounds to +inf
  EXPECT_EQ(bits_of(from_bits(0x7f800000u)), 0x7f80);  // +inf stays
  const uint16_t nan = bits_of(from_bits(0x7fc00001u));
  EXPECT_TRUE(std::isnan(bf16_to_float(nan)));
  const uint16_t snan = bits_of(from_bits(0xff800001u));  // a signalling NaN must not round to -inf
  EXPECT_TRUE(std::isnan(bf16_to_float(snan)));
  EXPECT_EQ(bf16_to_float(0x3f82), 1.015625f);
}

TEST(Precision, ParsesNamesAndDefaultsToFloat32) {
  EXPECT_EQ(matmul_precision(), Precision::F32);
  EXPECT_EQ(parse_precision("bf16"), Precision::BF16);
  EXPECT_EQ(parse_precision("float32"), Precision::F32);
  testutil::expect_error([] { parse_precision("fp16"); }, {"f32 or bf16", "fp16"});
}

// The bf16-rounded copy of t (as float32).
Tensor rounded(const Tensor& t) {
  Tensor c = t.contiguous().clone();
  float* p = c.data<float>();
  for (int64_t i = 0; i < c.numel(); ++i) {
    uint16_t b;
    convert_to_bf16(p + i, &b, 1);
    p[i] = bf16_to_float(b);
  }
  return c;
}

// Checks got == reference product of the rounded operands within the float32 accumulation bound.
void expect_bf16_product(const Tensor& got, const Tensor& a, const Tensor& b, bool ta, bool tb, const Tensor& bias) {
  const Tensor ar = rounded(a), br = rounded(b);
  Tensor want = matmul(ar, br, ta, tb, MatmulBackend::Reference);
  if (bias.defined()) want = linear(ar, br, bias, MatmulBackend::Reference);  // (linear: b is [out, in])
  Tensor mag = matmul(abs(ar), abs(br), ta, tb, MatmulBackend::Reference);
  const int64_t K = ta ? a.size(-2) : a.size(-1);
  auto g = got.contiguous().to_vector<float>(), w = want.contiguous().to_vector<float>(),
       m = mag.contiguous().to_vector<float>();
  ASSERT_EQ(g.size(), w.size());
  for (size_t i = 0; i < g.size(); ++i)
    ASSERT_LE(std::fabs(g[i] - w[i]), kAccumTol * K * (m[i] + 1e-30) + 1e-30) << "element " << i;
}

class Bf16 : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = bf16_unsupported_reason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

TEST_F(Bf16, ProductsUseRoundedOperandsAndFloat32Accumulation) {
  Generator gen(21);
  const Tensor a = randn({37, 300}, gen), b = randn({300, 45}, gen), bt = randn({45, 300}, gen);
  const Tensor at = randn({300, 37}, gen), bias = randn({45}, gen);
  PrecisionGuard g(Precision::BF16);
  expect_bf16_product(matmul(a, b), a, b, false, false, Tensor());
  expect_bf16_product(matmul(a, bt, false, true), a, bt, false, true, Tensor());
  expect_bf16_product(matmul(at, b, true, false), at, b, true, false, Tensor());
  expect_bf16_product(linear(a, bt, bias), a, bt, false, true, bias);
  // Batched with a broadcast right operand, and a column slice (leading dimension > columns).
  const Tensor xb = randn({3, 20, 64}, gen), w3 = randn({2, 1, 64, 16}, gen);
  expect_bf16_product(matmul(xb, w3), xb, w3, false, false, Tensor());
  const Tensor wide = randn({40, 100}, gen);
  const Tensor slice = wide.narrow(1, 10, 50);
  const Tensor rhs = randn({50, 8}, gen);
  expect_bf16_product(matmul(slice, rhs), slice, rhs, false, false, Tensor());
}

TEST_F(Bf16, AccumulatingIntoAStridedSlice) {
  Generator gen(22);
  const Tensor a = randn({16, 96}, gen), b = randn({96, 24}, gen);
  Tensor out = randn({16, 40}, gen);
  const Tensor before = out.clone();
  {
    PrecisionGuard g(Precision::BF16);
    matmul_into(out.narrow(1, 8, 24), a, b, false, false, /*accumulate=*/true);
  }
  const Tensor prod = sub(out.narrow(1, 8, 24), before.narrow(1, 8, 24));
  const Tensor want = matmul(rounded(a), rounded(b), false, false, MatmulBackend::Reference);
  EXPECT_LT(testutil::max_abs_diff(prod, want), 1e-4);
  EXPECT_EQ(testutil::max_abs_diff(out.narrow(1, 0, 8), before.narrow(1, 0, 8)), 0.0);  // untouched columns
}

TEST_F(Bf16, DiffersFromFloat32ByTheOperandRounding) {
  Generator gen(23);
  const Tensor a = randn({64, 256}, gen), b = randn({256, 64}, gen);
  const Tensor f32 = matmul(a, b);
  Tensor b16;
  {
    PrecisionGuard g(Precision::BF16);
    b16 = matmul(a, b);
  }
  EXPECT_EQ(matmul_precision(), Precision::F32);  // the guard restored float32
  const double scale = max_all(abs(f32)).item<double>();
  const double err = testutil::max_abs_diff(f32, b16) / scale;
  EXPECT_GT(err, 1e-5);                  // really bf16 (a float32 product would agree to ~1e-6)
  EXPECT_LT(err, 4 * kBf16OperandRel);   // and only by the operand rounding
  EXPECT_EQ(testutil::max_abs_diff(matmul(a, b), f32), 0.0);  // float32 again, bit for bit
}

TEST_F(Bf16, CachedWeightIsConvertedOncePerCache) {
  Generator gen(24);
  Tensor w = randn({32, 48}, gen);  // [out, in]
  const Tensor x = randn({10, 48}, gen), dy = randn({10, 32}, gen);
  PrecisionGuard g(Precision::BF16);
  const int64_t c0 = bf16_weight_conversions();
  Tensor y1, dx1;
  {
    Bf16WeightCache cache({w});
    y1 = linear(x, w, Tensor());       // W^T
    dx1 = matmul(dy, w);               // W, same conversion
    (void)linear(x, w, Tensor());
    EXPECT_EQ(bf16_weight_conversions() - c0, 1);
  }
  expect_bf16_product(y1, x, w, false, true, Tensor());
  expect_bf16_product(dx1, dy, w, false, false, Tensor());
  // After the cache is gone a changed weight is seen (converted afresh, not served stale).
  w.fill_(0.5);
  const Tensor y2 = linear(x, w, Tensor());
  expect_bf16_product(y2, x, w, false, true, Tensor());
  {
    Bf16WeightCache cache({w});
    expect_bf16_product(linear(x, w, Tensor()), x, w, false, true, Tensor());
    EXPECT_EQ(bf16_weight_conversions() - c0, 2);
  }
  // Unregistered operands are never counted as cached conversions.
  (void)matmul(x, w, false, true);
  EXPECT_EQ(bf16_weight_conversions() - c0, 2);
}

// linear_backward's two products share dy: converted once (one cached conversion, and nothing left cached
// afterwards), and each product is still the bf16 product of its operands.
TEST_F(Bf16, LinearBackwardConvertsTheOutputGradientOnce) {
  Generator gen(25);
  const Tensor w = randn({32, 48}, gen), x = randn({2, 10, 48}, gen), dy = randn({2, 10, 32}, gen);
  PrecisionGuard g(Precision::BF16);
  const int64_t c0 = bf16_weight_conversions();
  const LinearGrads grads = linear_backward(dy, x, w, true);
  EXPECT_EQ(bf16_weight_conversions() - c0, 1);
  const Tensor dy2 = dy.reshape({20, 32}), x2 = x.reshape({20, 48});
  expect_bf16_product(grads.dx.reshape({20, 48}), dy2, w, false, false, Tensor());
  expect_bf16_product(grads.dweight, dy2, x2, true, false, Tensor());
  // The cache lived only for the call: a changed dy is converted afresh.
  Tensor dy_changed = dy.clone();
  dy_changed.fill_(0.25);
  const LinearGrads again = linear_backward(dy_changed, x, w, false);
  expect_bf16_product(again.dweight, dy_changed.reshape({20, 32}), x2, true, false, Tensor());
  EXPECT_EQ(bf16_weight_conversions() - c0, 2);
}

TEST(Precision, UnsupportedCpuNamesTheInstructionSet) {
  const std::string why = bf16_unsupported_reason();
  if (why.empty()) {
    EXPECT_NO_THROW(require_precision_supported(Precision::BF16));
  } else {
    EXPECT_NE(why.find("AVX512-BF16"), std::string::npos) << why;
    testutil::expect_error([] { set_matmul_precision(Precision::BF16); }, {"AVX512-BF16"});
    EXPECT_EQ(matmul_precision(), Precision::F32);
  }
  EXPECT_NO_THROW(require_precision_supported(Precision::F32));
}

}  // namespace
}  // namespace sonar
