// Tests of the indexing and assembling kernels (index_select/index_add, gather/scatter_add, embedding,
// one_hot, cat/stack/split/chunk, l2_normalize and its backward, topk) against plain reference loops,
// with non-contiguous inputs, adjoint identities for the backward kernels, finite differences for
// l2_normalize_backward, and the error messages for bad indices and dtypes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "tensor/index.h"
#include "tests/tensor/kernel_ref.h"

using namespace sonar;
using namespace sonar::testref;

namespace {

constexpr double kExact = 0;         // pure data movement must be bit-exact
constexpr double kSumAtol = 1e-5;    // float accumulation of a few O(1) terms
constexpr double kSumRtol = 1e-5;
constexpr double kNormRtol = 2e-6;   // l2_normalize: double norm, one float multiply
constexpr double kFdAtol = 1e-5;     // l2_normalize_backward vs central differences of the double reference
constexpr double kFdRtol = 1e-3;

Tensor idx(std::vector<int64_t> v) { return from_vector(v, {static_cast<int64_t>(v.size())}); }
Tensor idx(std::vector<int64_t> v, const Shape& s) { return from_vector(v, s); }

double dot(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += x[i] * y[i];
  return s;
}

// ---- index_select / index_add ----

std::vector<double> ref_index_select(const Tensor& a, int64_t d, const std::vector<int64_t>& ix) {
  Shape os = a.shape();
  os[d] = static_cast<int64_t>(ix.size());
  std::vector<double> out(static_cast<size_t>(shape_numel(os)));
  for (int64_t i = 0; i < static_cast<int64_t>(out.size()); ++i) {
    std::vector<int64_t> m = unravel(i, os);
    m[d] = ix[m[d]];
    out[i] = a.at(m);
  }
  return out;
}

TEST(IndexSelect, EveryDimAndNonContiguous) {
  Tensor a = rand_tensor({4, 5, 6}, 1);
  const std::vector<int64_t> ix{3, 0, 3, 1};
  for (int64_t d = 0; d < 3; ++d)
    for (const Tensor& v : {a, strided_copy(a), a.permute({2, 1, 0}).contiguous().permute({2, 1, 0})}) {
      Tensor r = index_select(v, d, idx(ix));
      Shape want = a.shape();
      want[d] = 4;
      EXPECT_EQ(r.shape(), want);
      expect_close(r, ref_index_select(a, d, ix), kExact, 0, "index_select dim " + std::to_string(d));
    }
  EXPECT_EQ(index_select(a, -1, idx({5})).shape(), (Shape{4, 5, 1}));
  EXPECT_EQ(index_select(a, 0, idx({})).shape(), (Shape{0, 5, 6}));
}

TEST(IndexSelect, OtherDtypesAndLargeParallel) {
  Tensor a = from_vector(std::vector<int64_t>{10, 11, 12, 13, 14, 15}, {3, 2});
  EXPECT_EQ(index_select(a, 0, idx({2, 0})).to_vector<int64_t>(), (std::vector<int64_t>{14, 15, 10, 11}));
  Tensor m = from_bytes({1, 0, 0, 1}, {4}, DType::Bool);
  Tensor ms = index_select(m, 0, idx({3, 1}));
  EXPECT_EQ(ms.dtype(), DType::Bool);
  EXPECT_EQ(ms.to_vector<int>(), (std::vector<int>{1, 0}));
  Tensor big = rand_tensor({300, 200}, 2);
  std::vector<int64_t> ix(500);
  for (size_t i = 0; i < ix.size(); ++i) ix[i] = (i * 7) % 300;
  expect_close(index_select(big, 0, idx(ix)), ref_index_select(big, 0, ix), kExact, 0, "index_select large dim 0");
  std::vector<int64_t> jx(300);
  for (size_t i = 0; i < jx.size(); ++i) jx[i] = (i * 13) % 200;
  expect_close(index_select(big, 1, idx(jx)), ref_index_select(big, 1, jx), kExact, 0, "index_select large dim 1");
}

TEST(IndexSelect, Errors) {
  Tensor a = rand_tensor({5, 3}, 1);
  expect_error([&] { index_select(a, 0, idx({1, 7})); }, {"index_select", "index 7", "dim 0", "size 5"});
  expect_error([&] { index_select(a, 1, idx({-1})); }, {"index -1", "dim 1", "size 3"});
  expect_error([&] { index_select(a, 0, from_vector(std::vector<float>{1.f}, {1})); }, {"index_select", "float32"});
  expect_error([&] { index_select(a, 2, idx({0})); }, {"index_select", "dim 2"});
  expect_error([&] { index_select(a, 0, idx({0, 1}, {1, 2})); }, {"1-d", "[1, 2]"});
}

TEST(IndexAdd, IsTheAdjointOfIndexSelectWithDuplicates) {
  const Shape s{4, 5, 3};
  Tensor x = rand_tensor(s, 3);
  const std::vector<int64_t> ix{2, 2, 0, 4, 2};
  for (int64_t d = 0; d < 3; ++d) {
    std::vector<int64_t> jx;
    for (int64_t v : ix) jx.push_back(v % s[d]);
    Shape gs = s;
    gs[d] = static_cast<int64_t>(jx.size());
    Tensor g = rand_tensor(gs, 4 + d);
    Tensor r = index_add(s, d, idx(jx), g);
    EXPECT_EQ(r.shape(), s);
    // Reference: scatter each grad element back.
    std::vector<double> want(static_cast<size_t>(shape_numel(s)), 0.0);
    const std::vector<double> gv = g.to_vector<double>();
    for (int64_t i = 0; i < g.numel(); ++i) {
      std::vector<int64_t> m = unravel(i, gs);
      m[d] = jx[m[d]];
      want[ravel(m, s)] += gv[i];
    }
    expect_close(r, want, kSumAtol, kSumRtol, "index_add dim " + std::to_string(d));
    EXPECT_NEAR(dot(index_select(x, d, idx(jx)), g), dot(x, r), 1e-4) << "adjoint dim " << d;
    expect_close(index_add(s, d, idx(jx), transposed_copy(g)), want, kSumAtol, kSumRtol, "index_add non-contiguous");
  }
}

TEST(IndexAdd, LargeParallelMatchesReference) {
  const Shape s{50, 1000};
  std::vector<int64_t> ix(200);
  for (size_t i = 0; i < ix.size(); ++i) ix[i] = (i * 17) % 50;
  Tensor g = rand_tensor({200, 1000}, 5);
  std::vector<double> want(50 * 1000, 0.0);
  const std::vector<double> gv = g.to_vector<double>();
  for (int64_t j = 0; j < 200; ++j)
    for (int64_t c = 0; c < 1000; ++c) want[ix[j] * 1000 + c] += gv[j * 1000 + c];
  expect_close(index_add(s, 0, idx(ix), g), want, kSumAtol, kSumRtol, "index_add large");
}

TEST(IndexAdd, Errors) {
  expect_error([&] { index_add({3, 2}, 0, idx({3}), rand_tensor({1, 2}, 1)); }, {"index_add", "index 3", "size 3"});
  expect_error([&] { index_add({3, 2}, 0, idx({0}), rand_tensor({2, 2}, 1)); }, {"index_add", "[2, 2]", "[1, 2]"});
}

// ---- gather / scatter_add ----

TEST(Gather, TorchSemanticsEveryDim) {
  Tensor a = rand_tensor({3, 4, 5}, 6);
  for (int64_t d = 0; d < 3; ++d) {
    const Shape is{2, 3, 4};  // smaller than a in every dim
    std::vector<int64_t> iv(static_cast<size_t>(shape_numel(is)));
    for (size_t i = 0; i < iv.size(); ++i) iv[i] = (i * 5 + 1) % a.size(d);
    Tensor ix = idx(iv, is);
    std::vector<double> want(iv.size());
    for (int64_t i = 0; i < static_cast<int64_t>(iv.size()); ++i) {
      std::vector<int64_t> m = unravel(i, is);
      m[d] = iv[i];
      want[i] = a.at(m);
    }
    for (const Tensor& v : {a, transposed_copy(a)})
      expect_close(gather(v, d, ix), want, kExact, 0, "gather dim " + std::to_string(d));
    expect_close(gather(a, d, transposed_copy(ix)), want, kExact, 0, "gather non-contiguous index");
  }
  // The classic use: pick the label column of each row.
  Tensor logits = from_vector(std::vector<float>{0, 1, 2, 3, 4, 5}, {2, 3});
  EXPECT_EQ(gather(logits, 1, idx({2, 0}, {2, 1})).to_vector<float>(), (std::vector<float>{2, 3}));
}

TEST(ScatterAdd, TorchSemanticsAndAdjointOfGather) {
  const Shape s{3, 4, 5};
  Tensor a = rand_tensor(s, 7);
  for (int64_t d = 0; d < 3; ++d) {
    const Shape is{2, 3, 4};
    std::vector<int64_t> iv(static_cast<size_t>(shape_numel(is)));
    for (size_t i = 0; i < iv.size(); ++i) iv[i] = (i * 3) % s[d];
    Tensor ix = idx(iv, is);
    Tensor src = rand_tensor({3, 4, 5}, 8 + d);  // larger than index: only its leading part is used
    std::vector<double> want = a.to_vector<double>();
    for (int64_t i = 0; i < static_cast<int64_t>(iv.size()); ++i) {
      std::vector<int64_t> m = unravel(i, is);
      const double sv = src.at(m);
      m[d] = iv[i];
      want[ravel(m, s)] += sv;
    }
    Tensor r = scatter_add(a, d, ix, src);
    expect_close(r, want, kSumAtol, kSumRtol, "scatter_add dim " + std::to_string(d));
    expect_close(scatter_add(transposed_copy(a), d, ix, transposed_copy(src)), want, kSumAtol, kSumRtol,
                 "scatter_add non-contiguous");
    EXPECT_EQ(a.to_vector<double>(), a.contiguous().to_vector<double>());  // input untouched
    // gather's backward: <gather(x, d, ix), g> == <x, scatter_add(0, d, ix, g)>.
    Tensor g = rand_tensor(is, 30 + d);
    Tensor zero = Tensor::empty(s);
    zero.zero_();
    EXPECT_NEAR(dot(gather(a, d, ix), g), dot(a, scatter_add(zero, d, ix, g)), 1e-4);
  }
}

TEST(GatherScatter, Errors) {
  Tensor a = rand_tensor({3, 4}, 1);
  expect_error([&] { gather(a, 1, idx({0, 4}, {1, 2})); }, {"gather", "index 4", "dim 1", "size 4"});
  expect_error([&] { gather(a, 1, idx({0, 1})); }, {"gather", "dims"});
  expect_error([&] { gather(a, 0, idx({0, 0, 0, 0, 0}, {1, 5})); }, {"gather", "larger"});
  expect_error([&] { gather(a, 0, from_bytes({0}, {1, 1})); }, {"gather", "uint8"});
  expect_error([&] { scatter_add(a, 0, idx({5}, {1, 1}), a); }, {"scatter_add", "index 5", "dim 0", "size 3"});
  expect_error([&] { scatter_add(a, 0, from_vector(std::vector<float>{0}, {1, 1}), a); }, {"scatter_add", "float32"});
}

// ---- embedding / one_hot ----

TEST(Embedding, ShapesValuesAndErrors) {
  Tensor w = rand_tensor({5, 3}, 9);
  Tensor ix = idx({4, 0, 4, 2, 1, 3}, {2, 3});
  Tensor e = embedding(w, ix);
  EXPECT_EQ(e.shape(), (Shape{2, 3, 3}));
  const std::vector<int64_t> iv = ix.to_vector<int64_t>();
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(e.at({i / 3, i % 3, c}), w.at({iv[i], c}));
  EXPECT_EQ(embedding(transposed_copy(w), ix).to_vector<float>(), e.to_vector<float>());
  EXPECT_EQ(embedding(w, idx({2})).shape(), (Shape{1, 3}));
  expect_error([&] { embedding(w, idx({1, 9})); }, {"embedding", "index 9", "dim 0", "size 5"});
  expect_error([&] { embedding(w, from_vector(std::vector<float>{1.f}, {1})); }, {"embedding", "float32"});
  expect_error([&] { embedding(rand_tensor({5}, 1), idx({1})); }, {"embedding", "[N, D]", "[5]"});
}

TEST(OneHot, ValuesInferenceAndErrors) {
  Tensor o = one_hot(idx({2, 0, 1, 2}, {2, 2}), 4);
  EXPECT_EQ(o.dtype(), DType::Float32);
  EXPECT_EQ(o.shape(), (Shape{2, 2, 4}));
  EXPECT_EQ(o.to_vector<float>(), (std::vector<float>{0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0}));
  EXPECT_EQ(one_hot(idx({1, 3}), -1).shape(), (Shape{2, 4}));
  expect_error([&] { one_hot(idx({1, 4}), 4); }, {"one_hot", "index 4", "4 classes"});
  expect_error([&] { one_hot(idx({-1}), 4); }, {"one_hot", "index -1"});
  expect_error([&] { one_hot(from_vector(std::vector<float>{1.f}, {1}), 4); }, {"one_hot", "float32"});
}

// ---- cat / stack / split / chunk ----

TEST(Cat, EveryDimNonContiguousAndDtypes) {
  Tensor a = rand_tensor({2, 3, 4}, 10), b = rand_tensor({2, 3, 4}, 11);
  for (int64_t d = 0; d < 3; ++d) {
    Shape bs = a.shape();
    bs[d] = 2;
    Tensor b2 = rand_tensor(bs, 12 + d);
    Tensor c = cat({a, transposed_copy(b2)}, d);
    Shape want = a.shape();
    want[d] += 2;
    ASSERT_EQ(c.shape(), want);
    for (int64_t i = 0; i < c.numel(); ++i) {
      std::vector<int64_t> m = unravel(i, want);
      const bool first = m[d] < a.size(d);
      if (!first) m[d] -= a.size(d);
      ASSERT_EQ(c.at(unravel(i, want)), first ? a.at(m) : b2.at(m)) << "cat dim " << d << " element " << i;
    }
  }
  EXPECT_EQ(cat({a, b}, -1).shape(), (Shape{2, 3, 8}));
  Tensor e = Tensor::empty({2, 0, 4});
  EXPECT_EQ(cat({a, e, b}, 1).to_vector<float>(), cat({a, b}, 1).to_vector<float>());
  Tensor i1 = idx({1, 2}), i2 = idx({3});
  EXPECT_EQ(cat({i1, i2}, 0).to_vector<int64_t>(), (std::vector<int64_t>{1, 2, 3}));
  // Large enough for the parallel copy.
  Tensor big1 = rand_tensor({400, 30}, 13), big2 = rand_tensor({400, 50}, 14);
  Tensor bc = cat({big1, big2}, 1);
  EXPECT_EQ(bc.narrow(1, 30, 50).contiguous().to_vector<float>(), big2.to_vector<float>());
  EXPECT_EQ(bc.narrow(1, 0, 30).contiguous().to_vector<float>(), big1.to_vector<float>());
}

TEST(Cat, Errors) {
  Tensor a = rand_tensor({2, 3}, 1);
  expect_error([&] { cat({a, rand_tensor({3, 3}, 2)}, 1); }, {"cat", "tensor 1", "[3, 3]", "[2, 3]"});
  expect_error([&] { cat({a, idx({1, 2, 3}, {1, 3})}, 0); }, {"cat", "int64", "float32"});
  expect_error([&] { cat({}, 0); }, {"cat", "at least one"});
  expect_error([&] { cat({a}, 2); }, {"cat", "dim 2"});
}

TEST(Stack, NewDimAnywhere) {
  Tensor a = rand_tensor({2, 3}, 15), b = rand_tensor({2, 3}, 16);
  for (int64_t d : {0, 1, 2, -1}) {
    Tensor s = stack({a, transposed_copy(b)}, d);
    const int64_t dd = d < 0 ? d + 3 : d;
    Shape want{2, 3};
    want.insert(want.begin() + dd, 2);
    ASSERT_EQ(s.shape(), want);
    EXPECT_EQ(s.select(dd, 0).contiguous().to_vector<float>(), a.to_vector<float>());
    EXPECT_EQ(s.select(dd, 1).contiguous().to_vector<float>(), b.to_vector<float>());
  }
  expect_error([&] { stack({a, rand_tensor({3, 2}, 1)}, 0); }, {"stack", "[3, 2]", "[2, 3]"});
}

TEST(SplitChunk, ViewsAndSizes) {
  Tensor a = rand_tensor({7, 4}, 17);
  std::vector<Tensor> p = split(a, {2, 0, 5}, 0);
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[0].shape(), (Shape{2, 4}));
  EXPECT_EQ(p[1].shape(), (Shape{0, 4}));
  EXPECT_TRUE(p[2].shares_storage(a));
  EXPECT_EQ(p[2].at({0, 1}), a.at({2, 1}));
  EXPECT_EQ(cat(p, 0).to_vector<float>(), a.to_vector<float>());
  std::vector<Tensor> q = split(a, {1, 3}, -1);
  EXPECT_EQ(q[1].at({6, 2}), a.at({6, 3}));
  expect_error([&] { split(a, {2, 2}, 0); }, {"split", "sum to 4", "size 7"});
  // chunk: ceil(7/3) = 3 -> sizes 3, 3, 1; ceil(7/4) = 2 -> 2, 2, 2, 1; more chunks than rows -> 7 rows.
  auto sizes = [](const std::vector<Tensor>& v) {
    std::vector<int64_t> s;
    for (const Tensor& t : v) s.push_back(t.size(0));
    return s;
  };
  EXPECT_EQ(sizes(chunk(a, 3, 0)), (std::vector<int64_t>{3, 3, 1}));
  EXPECT_EQ(sizes(chunk(a, 4, 0)), (std::vector<int64_t>{2, 2, 2, 1}));
  EXPECT_EQ(sizes(chunk(a, 10, 0)), std::vector<int64_t>(7, 1));
  EXPECT_EQ(chunk(a, 2, 1)[1].at({3, 0}), a.at({3, 2}));
  expect_error([&] { chunk(a, 0, 0); }, {"chunk", "positive"});
}

// ---- l2_normalize ----

std::vector<double> ref_l2n(const std::vector<double>& x, const Shape& s, int64_t d, double eps) {
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < d; ++i) outer *= s[i];
  for (size_t i = d + 1; i < s.size(); ++i) inner *= s[i];
  std::vector<double> y(x.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < inner; ++c) {
      double ss = 0;
      for (int64_t j = 0; j < s[d]; ++j) ss += x[(o * s[d] + j) * inner + c] * x[(o * s[d] + j) * inner + c];
      const double den = std::max(std::sqrt(ss), eps);
      for (int64_t j = 0; j < s[d]; ++j) y[(o * s[d] + j) * inner + c] = x[(o * s[d] + j) * inner + c] / den;
    }
  return y;
}

TEST(L2Normalize, MatchesReferenceEveryDim) {
  const Shape s{3, 4, 5};
  Tensor x = rand_tensor(s, 18, -2.f, 2.f);
  for (int64_t d = 0; d < 3; ++d) {
    const std::vector<double> want = ref_l2n(x.to_vector<double>(), s, d, 1e-12);
    expect_close(l2_normalize(x, d), want, 1e-7, kNormRtol, "l2_normalize dim " + std::to_string(d));
    expect_close(l2_normalize(transposed_copy(x), d), want, 1e-7, kNormRtol, "l2_normalize non-contiguous");
  }
  // Below eps the denominator is eps: a zero row stays zero, a tiny row is divided by eps.
  Tensor z = from_vector(std::vector<float>{0, 0, 0, 1e-4f, 0, 0}, {2, 3});
  expect_close(l2_normalize(z, 1, 1e-3f), std::vector<double>{0, 0, 0, 1e-4 / 1e-3, 0, 0}, 1e-7, kNormRtol,
               "l2_normalize below eps");
  // Codebook-sized input (parallel path).
  Tensor cb = rand_tensor({1024, 256}, 19);
  expect_close(l2_normalize(cb, -1), ref_l2n(cb.to_vector<double>(), {1024, 256}, 1, 1e-12), 1e-7, kNormRtol,
               "l2_normalize codebook");
}

void check_l2n_backward(const Shape& s, int64_t d, float eps, bool noncontig, float scale) {
  Tensor x = rand_tensor(s, 20 + d, -scale, scale);
  Tensor g = rand_tensor(s, 40 + d);
  Tensor dx = l2_normalize_backward(noncontig ? transposed_copy(g) : g, noncontig ? transposed_copy(x) : x, d, eps);
  const std::vector<double> gv = g.to_vector<double>();
  auto loss = [&](const std::vector<double>& xv) {
    std::vector<double> y = ref_l2n(xv, s, d, eps);
    double l = 0;
    for (size_t i = 0; i < y.size(); ++i) l += gv[i] * y[i];
    return l;
  };
  const double h = scale * 1e-6;
  std::vector<double> fd = numeric_grad(loss, x.to_vector<double>(), h);
  expect_close(dx, fd, kFdAtol / scale, kFdRtol, "l2_normalize_backward " + shape_str(s) + " dim " + std::to_string(d));
}

TEST(L2NormalizeBackward, FiniteDifferences) {
  for (int64_t d = 0; d < 3; ++d) check_l2n_backward({2, 3, 4}, d, 1e-12f, false, 1.f);
  for (int64_t d = 0; d < 2; ++d) check_l2n_backward({4, 5}, d, 1e-12f, true, 1.f);
  check_l2n_backward({3, 4}, 1, 1.f, false, 0.1f);  // every row's norm < eps: gradient is g / eps
}

// ---- topk ----

TEST(TopK, LargestSmallestEveryDim) {
  const Shape s{4, 6, 5};
  Tensor a = rand_tensor(s, 21);
  for (int64_t d = 0; d < 3; ++d)
    for (bool largest : {true, false}) {
      const int64_t k = 3;
      TopK t = topk(transposed_copy(a), k, d, largest);
      Shape os = s;
      os[d] = k;
      ASSERT_EQ(t.values.shape(), os);
      ASSERT_EQ(t.indices.dtype(), DType::Int64);
      // Reference: sort each line.
      for (int64_t i = 0; i < shape_numel(os); ++i) {
        std::vector<int64_t> m = unravel(i, os);
        std::vector<std::pair<float, int64_t>> line;
        for (int64_t j = 0; j < s[d]; ++j) {
          std::vector<int64_t> mm = m;
          mm[d] = j;
          line.push_back({static_cast<float>(a.at(mm)), j});
        }
        std::stable_sort(line.begin(), line.end(),
                         [&](auto& x, auto& y) { return largest ? x.first > y.first : x.first < y.first; });
        EXPECT_EQ(t.values.at(m), line[m[d]].first);
        EXPECT_EQ(t.indices.at(m), line[m[d]].second);
      }
    }
}

TEST(TopK, TiesNaNAndErrors) {
  Tensor a = from_vector(std::vector<float>{1, 3, 3, NAN, 0, 3}, {6});
  TopK t = topk(a, 4);
  std::vector<float> v = t.values.to_vector<float>();
  EXPECT_TRUE(std::isnan(v[0]));  // NaN counts as the largest, as in torch
  EXPECT_EQ(std::vector<float>(v.begin() + 1, v.end()), (std::vector<float>{3, 3, 3}));
  EXPECT_EQ(t.indices.to_vector<int64_t>(), (std::vector<int64_t>{3, 1, 2, 5}));
  TopK s = topk(a, 2, 0, false);
  EXPECT_EQ(s.values.to_vector<float>(), (std::vector<float>{0, 1}));
  EXPECT_EQ(s.indices.to_vector<int64_t>(), (std::vector<int64_t>{4, 0}));
  EXPECT_EQ(topk(a, 0).values.shape(), (Shape{0}));
  // Large (parallel) input: each row's top value is its max.
  Tensor big = rand_tensor({500, 300}, 22);
  TopK bt = topk(big, 5, 1);
  for (int64_t r = 0; r < 500; r += 37) {
    std::vector<float> row = big.select(0, r).contiguous().to_vector<float>();
    std::sort(row.begin(), row.end(), std::greater<float>());
    for (int j = 0; j < 5; ++j) EXPECT_EQ(bt.values.at({r, j}), row[j]);
  }
  expect_error([&] { topk(a, 7); }, {"topk", "k = 7", "size 6"});
  expect_error([&] { topk(idx({1, 2}), 1); }, {"topk", "int64"});
}

}  // namespace
