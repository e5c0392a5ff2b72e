// Tests of tensor/creation.h: constant fills of every dtype, *_like keeping shape and dtype, arange in
// float32 and int64 (negative and fractional steps, empty ranges, no accumulated drift) and its errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "tensor/creation.h"
#include "tests/test_util.h"

using namespace sonar;

namespace {

using testutil::expect_error;
}  // namespace

TEST(Creation, ConstantFills) {
  Tensor z = zeros({2, 3});
  EXPECT_EQ(z.dtype(), DType::Float32);
  EXPECT_EQ(z.shape(), (Shape{2, 3}));
  EXPECT_TRUE(z.is_contiguous());
  EXPECT_EQ(z.to_vector<float>(), std::vector<float>(6, 0.f));
  EXPECT_EQ(ones({4}, DType::Int64).to_vector<int64_t>(), std::vector<int64_t>(4, 1));
  EXPECT_EQ(full({3}, -2.5).to_vector<float>(), std::vector<float>(3, -2.5f));
  EXPECT_EQ(full({2}, 7, DType::UInt8).to_vector<int>(), (std::vector<int>{7, 7}));
  Tensor b = full({2}, 7, DType::Bool);  // bool stores 0/1
  EXPECT_EQ(b.dtype(), DType::Bool);
  EXPECT_EQ(b.to_vector<int>(), (std::vector<int>{1, 1}));
  EXPECT_EQ(zeros({2}, DType::Bool).to_vector<int>(), (std::vector<int>{0, 0}));
  // 0-d and empty.
  Tensor s = full({}, 3.0);
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.item<float>(), 3.f);
  EXPECT_EQ(zeros({0, 5}).numel(), 0);
  EXPECT_EQ(zeros({0, 5}).shape(), (Shape{0, 5}));
  // Large: the parallel fill covers every element.
  Tensor big = full({1 << 20}, 1.25);
  const float* p = big.data<float>();
  int64_t bad = 0;
  for (int64_t i = 0; i < big.numel(); ++i) bad += p[i] != 1.25f;
  EXPECT_EQ(bad, 0);
  EXPECT_THROW(zeros({2, -1}), Error);
}

TEST(Creation, LikeKeepsShapeAndDtype) {
  Tensor a = full({3, 4}, 5.0, DType::Int64).t();  // non-contiguous source
  Tensor z = zeros_like(a), o = ones_like(a), f = full_like(a, 9);
  for (const Tensor& t : {z, o, f}) {
    EXPECT_EQ(t.shape(), (Shape{4, 3}));
    EXPECT_EQ(t.dtype(), DType::Int64);
    EXPECT_TRUE(t.is_contiguous());
    EXPECT_FALSE(t.shares_storage(a));
  }
  EXPECT_EQ(z.to_vector<int64_t>(), std::vector<int64_t>(12, 0));
  EXPECT_EQ(o.to_vector<int64_t>(), std::vector<int64_t>(12, 1));
  EXPECT_EQ(f.to_vector<int64_t>(), std::vector<int64_t>(12, 9));
  EXPECT_EQ(full_like(zeros({}), 2.0).item<float>(), 2.f);
  expect_error([] { zeros_like(Tensor()); }, {"zeros_like", "undefined"});
}

TEST(Creation, Arange) {
  Tensor a = arange(5);
  EXPECT_EQ(a.dtype(), DType::Int64);
  EXPECT_EQ(a.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(arange(4, DType::Float32).to_vector<float>(), (std::vector<float>{0, 1, 2, 3}));
  EXPECT_EQ(arange(0).numel(), 0);
  EXPECT_EQ(arange(-3).numel(), 0);
  EXPECT_EQ(arange(2, 11, 3).to_vector<int64_t>(), (std::vector<int64_t>{2, 5, 8}));
  EXPECT_EQ(arange(5, 0, -2).to_vector<int64_t>(), (std::vector<int64_t>{5, 3, 1}));
  EXPECT_EQ(arange(0, 1, 0.25, DType::Float32).to_vector<float>(), (std::vector<float>{0, 0.25f, 0.5f, 0.75f}));
  EXPECT_EQ(arange(1, -1, -0.5, DType::Float32).to_vector<float>(), (std::vector<float>{1, 0.5f, 0, -0.5f}));
  EXPECT_EQ(arange(3, 3).numel(), 0);
  EXPECT_EQ(arange(3, 1).numel(), 0);  // positive step, end below start: empty
  // Length is ceil((end - start) / step); each value is start + i * step, so no drift over long ranges.
  Tensor f = arange(0, 100000, 0.1, DType::Float32);
  EXPECT_EQ(f.numel(), 1000000);
  EXPECT_EQ(f.at({999999}), static_cast<float>(999999 * 0.1));
  EXPECT_EQ(arange(0, 1, 0.3, DType::Float32).numel(), 4);
  expect_error([] { arange(0, 5, 0); }, {"arange", "step"});
  expect_error([] { arange(0, 5, 1, DType::Bool); }, {"arange", "bool"});
  expect_error([] { arange(0, INFINITY, 1); }, {"arange"});
}
