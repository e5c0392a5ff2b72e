// Tests of the Tensor type itself: storage alignment, views sharing storage, strides, copies, errors.
#include <gtest/gtest.h>

#include "tensor/tensor.h"

using namespace sonar;

static Tensor iota(const Shape& s) {
  std::vector<float> v(shape_numel(s));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  return from_vector(v, s);
}

TEST(TensorCore, StorageIs64ByteAligned) {
  for (int n : {1, 3, 17, 1000}) {
    Tensor t = Tensor::empty({n});
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 64, 0u);
  }
}

TEST(TensorCore, ViewsShareStorage) {
  Tensor a = iota({2, 3, 4});
  Tensor v = a.view({6, 4});
  EXPECT_TRUE(v.shares_storage(a));
  v.data<float>()[5] = 100.f;
  EXPECT_EQ(a.at({0, 1, 1}), 100.0);
}

TEST(TensorCore, PermuteThenContiguousMatchesManualTranspose) {
  Tensor a = iota({2, 3, 4});
  Tensor p = a.permute({2, 0, 1});
  EXPECT_FALSE(p.is_contiguous());
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  Tensor c = p.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 2; ++j)
      for (int k = 0; k < 3; ++k) EXPECT_EQ(c.at({i, j, k}), a.at({j, k, i}));
}

TEST(TensorCore, SliceNarrowSelectExpand) {
  Tensor a = iota({4, 5});
  Tensor s = a.slice(1, 1, 5, 2);  // columns 1, 3
  EXPECT_EQ(s.shape(), (Shape{4, 2}));
  EXPECT_EQ(s.at({2, 1}), 13.0);
  EXPECT_EQ(a.narrow(0, 1, 2).at({1, 0}), 10.0);
  EXPECT_EQ(a.select(1, -1).at({3}), 19.0);
  Tensor e = a.select(0, 0).unsqueeze(0).expand({3, 5});
  EXPECT_EQ(e.stride(0), 0);
  EXPECT_EQ(e.contiguous().at({2, 4}), 4.0);
}

TEST(TensorCore, ReshapeCopiesOnlyWhenNeeded) {
  Tensor a = iota({3, 4});
  EXPECT_TRUE(a.reshape({2, -1}).shares_storage(a));
  Tensor t = a.t();
  EXPECT_THROW(t.view({12}), Error);
  Tensor r = t.reshape({12});
  EXPECT_FALSE(r.shares_storage(a));
  EXPECT_EQ(r.at({1}), 4.0);  // t is [[0,4,8],[1,5,9],...]
}

TEST(TensorCore, DtypeConversionAndItem) {
  Tensor a = from_vector(std::vector<float>{-1.7f, 0.f, 2.5f}, {3});
  Tensor i = a.to(DType::Int64);
  EXPECT_EQ(i.to_vector<int64_t>(), (std::vector<int64_t>{-1, 0, 2}));
  Tensor b = a.to(DType::Bool);
  EXPECT_EQ(b.to_vector<int>(), (std::vector<int>{1, 0, 1}));
  EXPECT_FLOAT_EQ(a.select(0, 2).item<float>(), 2.5f);
  EXPECT_THROW(a.item<float>(), Error);
}

TEST(TensorCore, ErrorsNameOpAndShapes) {
  Tensor a = iota({2, 3});
  try {
    a.view({4, 2});
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("view"), std::string::npos) << m;
    EXPECT_NE(m.find("[2, 3]"), std::string::npos) << m;
  }
  EXPECT_THROW(a.transpose(0, 2), Error);
  EXPECT_THROW(a.narrow(1, 2, 2), Error);
  EXPECT_THROW(a.expand({3, 3}), Error);
  EXPECT_THROW(a.data<int64_t>(), Error);
  EXPECT_THROW(Tensor::empty({2, -1}), Error);
}

TEST(TensorCore, CopyIntoStridedDestination) {
  Tensor a = Tensor::empty({3, 4});
  a.fill_(0);
  Tensor col = a.select(1, 2);
  col.copy_(from_vector(std::vector<float>{1, 2, 3}, {3}));
  EXPECT_EQ(a.at({2, 2}), 3.0);
  EXPECT_EQ(a.at({2, 1}), 0.0);
  // Overlapping copy: shift a row by one within the same storage.
  Tensor r = from_vector(std::vector<float>{1, 2, 3, 4}, {4});
  r.narrow(0, 1, 3).copy_(r.narrow(0, 0, 3));
  EXPECT_EQ(r.to_vector<float>(), (std::vector<float>{1, 1, 2, 3}));
}

TEST(TensorCore, ScalarViewsAsAnyOneElementShape) {
  Tensor s = scalar_tensor(3.5f);
  EXPECT_EQ(s.view({1}).shape(), (Shape{1}));
  EXPECT_EQ(s.reshape({1, 1}).at({0, 0}), 3.5);
  EXPECT_EQ(s.view({1}).view({}).item<float>(), 3.5f);
  EXPECT_THROW(s.view({2}), Error);
}
