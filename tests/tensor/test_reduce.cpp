// Tests of the reductions (sum, mean, var, norm, max/min with indices, max_all/min_all, argmax/argmin,
// any/all) against double-precision reference loops: every dim set on each engine path (contiguous rows,
// column blocks, generic strided), non-contiguous inputs, keepdim shapes, chunked parallel reductions,
// precision, NaN / tie semantics, and error messages.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "tensor/reduce.h"
#include "tests/tensor/kernel_ref.h"

using namespace sonar;
using namespace sonar::testref;

namespace {

constexpr double kSumAtol = 1e-5;  // double accumulation, one rounding to float
constexpr double kSumRtol = 1e-6;
constexpr double kVarRtol = 1e-5;
constexpr double kNormRtol = 2e-6;

using Dims = std::vector<int64_t>;

// All subsets of {0..nd-1} as dim lists (the empty set is skipped: it means "all dims" to the kernels).
std::vector<Dims> dim_sets(int64_t nd) {
  std::vector<Dims> out;
  for (int64_t m = 1; m < (1 << nd); ++m) {
    Dims d;
    for (int64_t i = 0; i < nd; ++i)
      if (m & (1 << i)) d.push_back(i);
    out.push_back(d);
  }
  return out;
}

enum class Kind { Sum, Mean, VarU, VarB, Norm1, Norm2, NormInf, NormNegInf, Norm0, Norm3 };

std::vector<double> ref(Kind k, const Tensor& x, const Dims& dims, bool keepdim, Shape& out_shape) {
  auto groups = group_by_output(x.to_vector<double>(), x.shape(), dims, keepdim, out_shape);
  std::vector<double> out;
  for (const auto& g : groups) {
    const double n = static_cast<double>(g.size());
    double s = 0, s2 = 0, mx = 0, mn = INFINITY, cnt = 0, p3 = 0;
    for (double v : g) s += v;
    const double m = s / n;
    for (double v : g) {
      s2 += (v - m) * (v - m);
      mx = std::max(mx, std::fabs(v));
      mn = std::min(mn, std::fabs(v));
      cnt += v != 0;
      p3 += std::pow(std::fabs(v), 3);
    }
    double a1 = 0, a2 = 0;
    for (double v : g) a1 += std::fabs(v), a2 += v * v;
    switch (k) {
      case Kind::Sum: out.push_back(s); break;
      case Kind::Mean: out.push_back(m); break;
      case Kind::VarU: out.push_back(s2 / (n - 1)); break;
      case Kind::VarB: out.push_back(s2 / n); break;
      case Kind::Norm1: out.push_back(a1); break;
      case Kind::Norm2: out.push_back(std::sqrt(a2)); break;
      case Kind::NormInf: out.push_back(mx); break;
      case Kind::NormNegInf: out.push_back(mn); break;
      case Kind::Norm0: out.push_back(cnt); break;
      case Kind::Norm3: out.push_back(std::cbrt(p3)); break;
    }
  }
  return out;
}

Tensor run(Kind k, const Tensor& x, const Dims& dims, bool keepdim) {
  switch (k) {
    case Kind::Sum: return sum(x, dims, keepdim);
    case Kind::Mean: return mean(x, dims, keepdim);
    case Kind::VarU: return var(x, dims, true, keepdim);
    case Kind::VarB: return var(x, dims, false, keepdim);
    case Kind::Norm1: return norm(x, 1.0, dims, keepdim);
    case Kind::Norm2: return norm(x, 2.0, dims, keepdim);
    case Kind::NormInf: return norm(x, INFINITY, dims, keepdim);
    case Kind::NormNegInf: return norm(x, -INFINITY, dims, keepdim);
    case Kind::Norm0: return norm(x, 0.0, dims, keepdim);
    case Kind::Norm3: return norm(x, 3.0, dims, keepdim);
  }
  return {};
}

const char* name(Kind k) {
  static const char* n[] = {"sum", "mean", "var(unbiased)", "var(biased)", "norm1", "norm2", "norm_inf",
                            "norm_-inf", "norm0", "norm3"};
  return n[static_cast<int>(k)];
}

void check_all_kinds(const Tensor& x, const Dims& dims, bool keepdim, const std::string& tag) {
  for (Kind k : {Kind::Sum, Kind::Mean, Kind::VarU, Kind::VarB, Kind::Norm1, Kind::Norm2, Kind::NormInf,
                 Kind::NormNegInf, Kind::Norm0, Kind::Norm3}) {
    Shape want_shape;
    const std::vector<double> want = ref(k, x, dims, keepdim, want_shape);
    Tensor got = run(k, x, dims, keepdim);
    const std::string what = std::string(name(k)) + " " + tag + " dims " + shape_str(dims) + (keepdim ? " keepdim" : "");
    ASSERT_EQ(got.shape(), want_shape) << what;
    const double rtol = (k == Kind::VarU || k == Kind::VarB) ? kVarRtol : k >= Kind::Norm1 ? kNormRtol : kSumRtol;
    expect_close(got, want, kSumAtol, rtol, what);
  }
}

TEST(Reduce, EveryDimSetContiguousAndNonContiguous) {
  const Shape s{3, 4, 5};
  Tensor x = rand_tensor(s, 1, -2.f, 2.f);
  for (const Dims& d : dim_sets(3))
    for (bool keepdim : {false, true}) {
      check_all_kinds(x, d, keepdim, "contiguous");
      check_all_kinds(transposed_copy(x), d, keepdim, "transposed");
      check_all_kinds(strided_copy(x), d, keepdim, "strided");
      check_all_kinds(x.permute({2, 0, 1}).contiguous().permute({1, 2, 0}), d, keepdim, "permuted");
    }
}

TEST(Reduce, AllDimsAndNegativeDims) {
  Tensor x = rand_tensor({4, 6}, 2);
  check_all_kinds(x, {}, false, "all");
  check_all_kinds(x, {}, true, "all");
  EXPECT_EQ(sum(x).shape(), Shape{});
  EXPECT_EQ(sum(x, {}, true).shape(), (Shape{1, 1}));
  EXPECT_EQ(sum(x, {-1}).to_vector<float>(), sum(x, {1}).to_vector<float>());
  EXPECT_EQ(mean(x, {-2, -1}, true).shape(), (Shape{1, 1}));
}

TEST(Reduce, SizeOneDimsAndScalars) {
  Tensor x = rand_tensor({3, 1, 4, 1}, 3);
  for (const Dims& d : dim_sets(4)) check_all_kinds(x, d, true, "size-1 dims");
  Tensor sc = scalar_tensor(2.5f);
  EXPECT_FLOAT_EQ(sum(sc).item<float>(), 2.5f);
  EXPECT_FLOAT_EQ(mean(sc, {0}).item<float>(), 2.5f);
  EXPECT_EQ(sum(sc, {0}, true).shape(), Shape{});
}

TEST(Reduce, LargeInputsOnEveryPathAndChunking) {
  // Few outputs with long reductions (chunked across threads), many short rows, column blocks with more
  // outputs than one block, and a generic-path strided reduction.
  struct Case {
    Shape shape;
    Dims dims;
    const char* tag;
  };
  const Case cases[] = {
      {{3, 100000}, {1}, "long rows (chunked row path)"},
      {{100000, 3}, {0}, "long columns of width 3 (chunked column path)"},
      {{2000, 130}, {0}, "column path, 3 blocks"},
      {{96, 48, 128}, {0, 1}, "column path over two leading dims (weight_norm's norm of a conv weight)"},
      {{20000, 7}, {1}, "many short rows"},
      {{50, 40, 30}, {0, 2}, "generic path"},
      {{300000}, {}, "all of a long vector"},
  };
  for (const Case& c : cases) {
    Tensor x = rand_tensor(c.shape, 4, -1.f, 3.f);
    for (Kind k : {Kind::Sum, Kind::VarU, Kind::Norm2, Kind::NormInf}) {
      Shape ws;
      const std::vector<double> want = ref(k, x, c.dims, false, ws);
      Tensor got = run(k, x, c.dims, false);
      ASSERT_EQ(got.shape(), ws) << c.tag;
      expect_close(got, want, 1e-4, 1e-6, std::string(name(k)) + " " + c.tag);
    }
  }
  Tensor t = rand_tensor({300, 400}, 5);
  Tensor tt = transposed_copy(t);  // [300, 400] with column-major storage
  for (int64_t d = 0; d < 2; ++d) {
    Shape ws;
    expect_close(sum(tt, {d}), ref(Kind::Sum, t, {d}, false, ws), 1e-4, 1e-6, "large transposed sum");
  }
}

TEST(Reduce, DoubleAccumulationKeepsPrecision) {
  // 2^24 + 1 ones would stall a float accumulator at 16777216.
  const int64_t n = (1 << 24) + 8;
  Tensor ones = Tensor::empty({n});
  ones.fill_(1.0);
  EXPECT_EQ(sum(ones).item<double>(), static_cast<double>(n));
  // Variance of values with a large offset: two-pass double gives the true variance of the float data.
  std::vector<float> v = rand_values(10000, 6, -1.f, 1.f);
  for (float& e : v) e += 10000.f;
  Tensor x = from_vector(v, {10000});
  Shape ws;
  expect_close(var(x), ref(Kind::VarU, x, {}, false, ws), 0, 1e-6, "var with offset");
}

TEST(Reduce, EmptyAndDegenerate) {
  Tensor e = Tensor::empty({0, 3});
  EXPECT_EQ(sum(e, {0}).to_vector<float>(), (std::vector<float>{0, 0, 0}));
  EXPECT_EQ(sum(e, {1}).shape(), (Shape{0}));
  EXPECT_TRUE(std::isnan(mean(e).item<float>()));
  EXPECT_EQ(norm(e, INFINITY).item<float>(), 0.f);
  EXPECT_TRUE(std::isnan(var(from_vector(std::vector<float>{1.f}, {1})).item<float>()));  // unbiased, n = 1
  EXPECT_EQ(var(from_vector(std::vector<float>{1.f}, {1}), {}, false).item<float>(), 0.f);
}

TEST(Reduce, NonFloatInputsAreSummedAsFloat) {
  EXPECT_EQ(sum(from_vector(std::vector<int64_t>{1, 2, 3}, {3})).item<float>(), 6.f);
  EXPECT_EQ(sum(from_bytes({1, 0, 1, 1}, {4}, DType::Bool)).item<float>(), 3.f);
}

// ---- max / min ----

TEST(MaxMin, ValuesIndicesAgainstReferenceEveryDim) {
  const Shape s{3, 4, 5};
  Tensor x = rand_tensor(s, 7);
  for (const Tensor& v : {x, transposed_copy(x), strided_copy(x)})
    for (int64_t d = 0; d < 3; ++d)
      for (bool keepdim : {false, true})
        for (bool is_max : {true, false}) {
          ValuesIndices r = is_max ? max(v, d, keepdim) : min(v, d, keepdim);
          Shape ws;
          auto groups = group_by_output(x.to_vector<double>(), s, {d}, keepdim, ws);
          ASSERT_EQ(r.values.shape(), ws);
          ASSERT_EQ(r.indices.shape(), ws);
          ASSERT_EQ(r.indices.dtype(), DType::Int64);
          std::vector<double> wv;
          std::vector<int64_t> wi;
          for (const auto& g : groups) {
            auto it = is_max ? std::max_element(g.begin(), g.end()) : std::min_element(g.begin(), g.end());
            wv.push_back(*it);
            wi.push_back(it - g.begin());
          }
          expect_close(r.values, wv, 0, 0, "max/min values");
          EXPECT_EQ(r.indices.to_vector<int64_t>(), wi);
          EXPECT_EQ((is_max ? argmax(v, d, keepdim) : argmin(v, d, keepdim)).to_vector<int64_t>(), wi);
        }
}

TEST(MaxMin, FirstOccurrenceOnTiesAndNaN) {
  Tensor t = from_vector(std::vector<float>{1, 5, 5, 0, 5, 0, 0, 7, 7}, {3, 3});
  EXPECT_EQ(max(t, 1).indices.to_vector<int64_t>(), (std::vector<int64_t>{1, 1, 1}));
  EXPECT_EQ(min(t, 1).indices.to_vector<int64_t>(), (std::vector<int64_t>{0, 0, 0}));
  Tensor t2 = from_vector(std::vector<float>{1, 5, 5, 1, 5, 0, 0, 5, 5}, {3, 3});  // ties down the columns
  EXPECT_EQ(max(t2, 0).indices.to_vector<int64_t>(), (std::vector<int64_t>{0, 0, 0}));
  EXPECT_EQ(min(t2, 0).indices.to_vector<int64_t>(), (std::vector<int64_t>{2, 0, 1}));
  EXPECT_EQ(max(transposed_copy(t2), 0).indices.to_vector<int64_t>(), (std::vector<int64_t>{0, 0, 0}));
  Tensor n = from_vector(std::vector<float>{1, NAN, 3, NAN, -1, 2}, {2, 3});
  ValuesIndices mx = max(n, 1);
  EXPECT_TRUE(std::isnan(mx.values.at({0})));
  EXPECT_EQ(mx.indices.to_vector<int64_t>(), (std::vector<int64_t>{1, 0}));  // the first NaN wins
  EXPECT_EQ(min(n, 1).indices.to_vector<int64_t>(), (std::vector<int64_t>{1, 0}));
  EXPECT_TRUE(std::isnan(max_all(n).item<float>()));
  EXPECT_TRUE(std::isnan(min_all(n).item<float>()));
  // Long rows with the max repeated: chunks must keep the first occurrence.
  std::vector<float> big(200000, 0.f);
  big[150000] = big[50001] = big[199999] = 3.f;
  EXPECT_EQ(argmax(from_vector(big, {1, 200000}), 1).item<int64_t>(), 50001);
  EXPECT_EQ(argmin(from_vector(big, {1, 200000}), 1).item<int64_t>(), 0);
  Tensor big_col = from_vector(big, {200000, 1});
  EXPECT_EQ(argmax(big_col, 0).item<int64_t>(), 50001);
}

TEST(MaxMin, AllAndInfinities) {
  Tensor x = rand_tensor({37, 41}, 8, -5.f, 5.f);
  std::vector<float> v = x.to_vector<float>();
  EXPECT_EQ(max_all(transposed_copy(x)).item<float>(), *std::max_element(v.begin(), v.end()));
  EXPECT_EQ(min_all(strided_copy(x)).item<float>(), *std::min_element(v.begin(), v.end()));
  EXPECT_EQ(max_all(x).shape(), Shape{});
  const float inf = std::numeric_limits<float>::infinity();
  Tensor ninf = from_vector(std::vector<float>{-inf, -inf}, {2});
  EXPECT_EQ(max(ninf, 0).indices.item<int64_t>(), 0);
  EXPECT_EQ(max_all(ninf).item<float>(), -inf);
  EXPECT_EQ(min_all(from_vector(std::vector<float>{inf, 2.f}, {2})).item<float>(), 2.f);
}

// ---- any / all ----

TEST(AnyAll, BoolAndUint8EveryDimSet) {
  const Shape s{3, 4, 2};
  std::vector<uint8_t> bits(24);
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = (i * 7 % 5) < 2 ? 1 : 0;
  bits[0] = 2;  // a uint8 nonzero other than 1 counts as true
  for (DType dt : {DType::Bool, DType::UInt8}) {
    Tensor m = from_bytes(bits, s, dt);
    for (const Dims& d : dim_sets(3))
      for (bool keepdim : {false, true}) {
        Shape ws;
        std::vector<double> vals(bits.begin(), bits.end());
        auto groups = group_by_output(vals, s, d, keepdim, ws);
        std::vector<double> wany, wall;
        for (const auto& g : groups) {
          wany.push_back(std::any_of(g.begin(), g.end(), [](double v) { return v != 0; }));
          wall.push_back(std::all_of(g.begin(), g.end(), [](double v) { return v != 0; }));
        }
        Tensor a = any(m, d, keepdim), l = all(m.transpose(0, 1).contiguous().transpose(0, 1), d, keepdim);
        EXPECT_EQ(a.dtype(), DType::Bool);
        EXPECT_EQ(a.shape(), ws);
        expect_close(a, wany, 0, 0, "any dims " + shape_str(d));
        expect_close(l, wall, 0, 0, "all dims " + shape_str(d));
      }
  }
  EXPECT_TRUE(all(Tensor::empty({0}, DType::Bool)).item<bool>());
  EXPECT_FALSE(any(Tensor::empty({0}, DType::Bool)).item<bool>());
}

// ---- errors ----

TEST(Reduce, Errors) {
  Tensor x = rand_tensor({2, 3}, 9);
  expect_error([&] { sum(x, {2}); }, {"sum", "dim 2"});
  expect_error([&] { mean(x, {1, -1}); }, {"mean", "repeated"});
  expect_error([&] { max(x, -3); }, {"max", "dim -3"});
  expect_error([&] { max(Tensor::empty({2, 0}), 1); }, {"max", "size 0"});
  expect_error([&] { max_all(Tensor::empty({0})); }, {"max_all", "empty"});
  expect_error([&] { any(x); }, {"any", "float32"});
  expect_error([&] { argmax(from_vector(std::vector<int64_t>{1}, {1}), 0); }, {"argmax", "int64"});
  expect_error([&] { sum(Tensor()); }, {"sum", "undefined"});
}

}  // namespace
