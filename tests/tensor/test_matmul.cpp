// Tests of matmul/linear (tensor/matmul.h): the reference kernel against hand-computed products, then the
// oneDNN and OpenBLAS backends against the reference on odd shapes, transposes, broadcast batches and
// strided (non-contiguous) operands, linear and its backward, and the error messages. Not tested here:
// speed (bench/bench_tensor.cpp) and autograd nodes (tests/autograd).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <tuple>

#include "tensor/dnnl_context.h"
#include "tensor/matmul.h"
#include "tests/test_util.h"

using namespace sonar;

namespace {

using testutil::error_of;
using testutil::expect_close_finite;

// Deterministic uniform [-1, 1) values (this file's LCG stream).
Tensor uniform(const Shape& shape, uint64_t seed) { return testutil::lcg_uniform(shape, seed, 12345); }

// float32 products against the double-accumulating reference: error grows with the inner dim K.
constexpr double kAbsTolPerK = 2e-6;  // per accumulated term, inputs in [-1, 1]
constexpr double kRelTol = 1e-5;

double tol_for(int64_t K) { return kAbsTolPerK * static_cast<double>(std::max<int64_t>(K, 1)); }

const MatmulBackend kFast[] = {MatmulBackend::OneDNN, MatmulBackend::OpenBLAS};
const char* name(MatmulBackend b) { return b == MatmulBackend::OneDNN ? "oneDNN" : "OpenBLAS"; }

// Checks every fast backend against the reference for one call.
void check_all(const Tensor& a, const Tensor& b, bool ta, bool tb, const std::string& what) {
  Tensor ref = matmul(a, b, ta, tb, MatmulBackend::Reference);
  const int64_t K = ta ? a.size(-2) : a.size(-1);
  for (MatmulBackend be : kFast) {
    Tensor c = matmul(a, b, ta, tb, be);
    expect_close_finite(c, ref, tol_for(K), kRelTol, what + " [" + name(be) + "]");
  }
}

}  // namespace

TEST(Matmul, ReferenceMatchesHandComputedProduct) {
  // [[1,2,3],[4,5,6]] @ [[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
  Tensor a = from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = from_vector(std::vector<float>{7, 8, 9, 10, 11, 12}, {3, 2});
  Tensor c = matmul(a, b, false, false, MatmulBackend::Reference);
  EXPECT_EQ(c.to_vector<float>(), (std::vector<float>{58, 64, 139, 154}));
  // a^T [3,2] @ a [2,3]: entry (0,0) = 1*1 + 4*4 = 17, (1,2) = 2*3 + 5*6 = 36
  Tensor g = matmul(a, a, true, false, MatmulBackend::Reference);
  EXPECT_EQ(g.shape(), (Shape{3, 3}));
  EXPECT_EQ(g.at({0, 0}), 17.0);
  EXPECT_EQ(g.at({1, 2}), 36.0);
  // a @ a^T: (0,1) = 1*4 + 2*5 + 3*6 = 32
  EXPECT_EQ(matmul(a, a, false, true, MatmulBackend::Reference).at({0, 1}), 32.0);
}

TEST(Matmul, ReferenceAccumulatesInDouble) {
  // 1e8 + 1 - 1e8 in float32 loses the 1; a double accumulator keeps it.
  Tensor a = from_vector(std::vector<float>{1e8f, 1.f, -1e8f}, {1, 3});
  Tensor b = from_vector(std::vector<float>{1.f, 1.f, 1.f}, {3, 1});
  EXPECT_EQ(matmul(a, b, false, false, MatmulBackend::Reference).item<float>(), 1.0f);
}

TEST(Matmul, OddShapes) {
  check_all(uniform({1, 1}, 1), uniform({1, 1}, 2), false, false, "1x1x1");
  check_all(uniform({7, 13}, 3), uniform({13, 5}, 4), false, false, "7x13x5");
  check_all(uniform({1, 13}, 5), uniform({13, 9}, 6), false, false, "1x13x9");
  check_all(uniform({9, 13}, 7), uniform({13, 1}, 8), false, false, "9x13x1");
  check_all(uniform({33, 70}, 9), uniform({70, 65}, 10), false, false, "33x70x65");
}

TEST(Matmul, Transposes) {
  Tensor a = uniform({13, 7}, 11);  // op(a) = a^T is [7, 13]
  Tensor b = uniform({5, 13}, 12);  // op(b) = b^T is [13, 5]
  check_all(a, uniform({13, 5}, 13), true, false, "a^T b");
  check_all(uniform({7, 13}, 14), b, false, true, "a b^T");
  check_all(a, b, true, true, "a^T b^T");
  // A transposed view is the same as the transpose flag.
  Tensor r1 = matmul(a.t(), b.t());
  Tensor r2 = matmul(a, b, true, true);
  expect_close_finite(r1, r2, 0, 0, "view vs flag");
}

TEST(Matmul, BatchedAndBroadcastBatch) {
  check_all(uniform({3, 7, 13}, 20), uniform({3, 13, 5}, 21), false, false, "batched 3x7x13x5");
  check_all(uniform({3, 13, 7}, 22), uniform({3, 5, 13}, 23), true, true, "batched both transposed");
  check_all(uniform({2, 1, 4, 5}, 24), uniform({3, 5, 6}, 25), false, false, "broadcast [2,1]x[3]");
  check_all(uniform({4, 7, 13}, 26), uniform({13, 5}, 27), false, false, "batched a, 2-D b");
  check_all(uniform({7, 13}, 28), uniform({4, 13, 5}, 29), false, false, "2-D a, batched b");
  check_all(uniform({2, 3, 7, 13}, 30), uniform({2, 3, 5, 13}, 31), false, true, "4-D batched, b^T");
  Tensor r = matmul(uniform({2, 1, 4, 5}, 24), uniform({3, 5, 6}, 25));
  EXPECT_EQ(r.shape(), (Shape{2, 3, 4, 6}));
}

TEST(Matmul, StridedOperandsWithoutCopy) {
  // Column slice: rows have a leading dimension larger than the row length.
  Tensor big = uniform({9, 20}, 40);
  Tensor a = big.narrow(1, 3, 11);  // [9, 11], ld 20
  ASSERT_FALSE(a.is_contiguous());
  check_all(a, uniform({11, 6}, 41), false, false, "column slice");
  check_all(a, uniform({9, 6}, 42), true, false, "column slice transposed");
  // Attention layout: [B, T, H, D] viewed as [B, H, T, D] and multiplied by its own transpose.
  Tensor q = uniform({2, 7, 3, 4}, 43).permute({0, 2, 1, 3});
  Tensor k = uniform({2, 7, 3, 4}, 44).permute({0, 2, 1, 3});
  check_all(q, k, false, true, "attention q k^T");
  // Expanded (stride 0) batch of b.
  Tensor w = uniform({1, 13, 5}, 45).expand({4, 13, 5});
  check_all(uniform({4, 7, 13}, 46), w, false, false, "expanded b");
  // Not a dense matrix (every other column): must be copied, result still right.
  Tensor s = uniform({7, 26}, 47).slice(1, 0, 26, 2);  // [7, 13], column stride 2
  check_all(s, uniform({13, 5}, 48), false, false, "stepped columns");
  // Broadcast matrix rows (stride 0 inside the matrix).
  Tensor e = uniform({1, 13}, 49).expand({7, 13});
  check_all(e, uniform({13, 5}, 50), false, false, "expanded rows");
}

TEST(Matmul, TransposedOperandsUseFastOneDnnKernelsWithoutCopies) {
  // The backward products dA = dC @ B^T and dB = A^T @ dC, 2-D and batched (attention), must not copy their
  // operands nor fall back to slow kernels; neither may transposed or column-sliced views.
  Tensor a = uniform({64, 48}, 60), b = uniform({48, 32}, 61), dc = uniform({64, 32}, 62);
  Tensor qa = uniform({3, 64, 48}, 63), qb = uniform({3, 48, 32}, 64), qdc = uniform({3, 64, 32}, 65);
  Tensor wide = uniform({48, 40}, 66);
  const std::tuple<Tensor, Tensor, bool, bool> calls[] = {
      {a, b, false, false},      {dc, b, false, true},
      {a, dc, true, false},      {qa, qb, false, false},
      {qdc, qb, false, true},    {qa, qdc, true, false},
      {a.t(), dc, false, false}, {a, wide.narrow(1, 5, 32), false, false}};
  for (const auto& [x, y, ta, tb] : calls) {
    const std::string impl = matmul_onednn_impl(x, y, ta, tb);
    EXPECT_EQ(impl.rfind("ref", 0), std::string::npos) << impl;
    EXPECT_EQ(impl.rfind("openblas", 0), std::string::npos) << impl;
    for (MatmulBackend be : kFast) {
      const int64_t before = matmul_operand_copies();
      matmul(x, y, ta, tb, be);
      EXPECT_EQ(matmul_operand_copies(), before)
          << shape_str(x.shape()) << " x " << shape_str(y.shape()) << " " << name(be);
    }
  }
  // A stepped (non-dense) view is copied, and counted.
  const int64_t before = matmul_operand_copies();
  matmul(uniform({7, 26}, 67).slice(1, 0, 26, 2), uniform({13, 5}, 68), false, false, MatmulBackend::OneDNN);
  EXPECT_EQ(matmul_operand_copies(), before + 1);
}

TEST(Matmul, TwoDimUsesOneDnnSgemmAndBatchesUsePrimitives) {
  EXPECT_EQ(matmul_onednn_impl(uniform({8, 6}, 1), uniform({6, 5}, 2)), "sgemm:jit (dnnl_sgemm)");
  EXPECT_EQ(matmul_onednn_impl(uniform({6, 8}, 1), uniform({6, 5}, 2), true, false), "sgemm:jit (dnnl_sgemm)");
  EXPECT_EQ(matmul_onednn_impl(uniform({8, 6}, 1), uniform({5, 6}, 2), false, true), "sgemm:jit (dnnl_sgemm)");
  // A batch sharing b folds into one 2-D product.
  EXPECT_EQ(matmul_onednn_impl(uniform({3, 8, 6}, 1), uniform({5, 6}, 2), false, true), "sgemm:jit (dnnl_sgemm)");
  EXPECT_EQ(matmul_onednn_impl(uniform({3, 8, 6}, 1), uniform({3, 6, 5}, 2)).rfind("brg", 0), 0u);
  // Accumulating and bias paths of the sgemm route (bias through linear with a row-major weight view).
  Tensor a = uniform({9, 6}, 3), b = uniform({6, 5}, 4);
  Tensor want = matmul(a, b, false, false, MatmulBackend::Reference);
  Tensor out = Tensor::empty({9, 5});
  out.fill_(0.5);
  matmul_into(out, a, b, false, false, true, MatmulBackend::OneDNN);
  std::vector<float> w = want.to_vector<float>();
  for (float& v : w) v += 0.5f;
  expect_close_finite(out, from_vector(w, {9, 5}), tol_for(6), kRelTol, "sgemm accumulate");
  Tensor wt = uniform({6, 5}, 5).t();  // [5, 6] weight whose transpose is row-major
  Tensor bias = uniform({5}, 6);
  Tensor ref = matmul(a, wt, false, true, MatmulBackend::Reference);
  std::vector<float> r = ref.to_vector<float>();
  const std::vector<float> bv = bias.to_vector<float>();
  for (size_t i = 0; i < r.size(); ++i) r[i] += bv[i % 5];
  expect_close_finite(linear(a, wt, bias, MatmulBackend::OneDNN), from_vector(r, {9, 5}), tol_for(6), kRelTol,
                      "sgemm bias");
}

TEST(Matmul, EmptyDims) {
  Tensor c = matmul(uniform({0, 3}, 1), uniform({3, 4}, 2));
  EXPECT_EQ(c.shape(), (Shape{0, 4}));
  for (MatmulBackend be : {MatmulBackend::OneDNN, MatmulBackend::OpenBLAS, MatmulBackend::Reference}) {
    Tensor z = matmul(Tensor::empty({2, 0}), Tensor::empty({0, 3}), false, false, be);
    EXPECT_EQ(z.to_vector<float>(), std::vector<float>(6, 0.0f));
  }
}

TEST(Matmul, PrimitivesAreCachedAndThreadCountIsPartOfTheKey) {
  // A batched product: the cached brgemm primitive path.
  Tensor a = uniform({2, 17, 19}, 70), b = uniform({2, 23, 19}, 71);
  ASSERT_EQ(matmul_onednn_impl(a, b, false, true).rfind("brg", 0), 0u) << matmul_onednn_impl(a, b, false, true);
  matmul(a, b, false, true, MatmulBackend::OneDNN);
  const size_t n = dnnl_ctx::cache_size();
  Tensor c1 = matmul(a, b, false, true, MatmulBackend::OneDNN);
  EXPECT_EQ(dnnl_ctx::cache_size(), n);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  Tensor c2 = matmul(a, b, false, true, MatmulBackend::OneDNN);
  omp_set_num_threads(threads);
  if (threads > 1) {
    EXPECT_EQ(dnnl_ctx::cache_size(), n + 1);
  }
  expect_close_finite(c2, c1, tol_for(19), kRelTol, "1 thread vs many");
}

// Wide 2-D products (more columns than rows, at least 2^24 multiply-adds) run as one sgemm per block of output
// columns when there are several threads (tensor/matmul.cpp). N = 1000 is not a multiple of the 16-column
// block rounding, so the last block is a remainder. Both operand layouts, the bias, and 1 vs 2 threads.
TEST(Matmul, WideProductsSplitOverThreadsMatchTheReference) {
  const int threads = omp_get_max_threads();
  omp_set_num_threads(2);
  const int64_t M = 64, K = 640, N = 1000;  // 41 M multiply-adds
  Tensor x = uniform({M, K}, 95), w = uniform({N, K}, 96), wt = uniform({K, N}, 97), bias = uniform({N}, 98);
  check_all(x, w, false, true, "x w^T (weights layout)");
  check_all(x, wt, false, false, "x w (row-major right operand)");
  Tensor ref = matmul(x, w, false, true, MatmulBackend::Reference);
  std::vector<float> rv = ref.to_vector<float>();
  const std::vector<float> bv = bias.to_vector<float>();
  for (size_t i = 0; i < rv.size(); ++i) rv[i] = static_cast<float>(static_cast<double>(rv[i]) + bv[i % N]);
  const Tensor two = linear(x, w, bias);
  expect_close_finite(two, from_vector(rv, ref.shape()), tol_for(K), kRelTol, "linear with bias, 2 threads");
  omp_set_num_threads(1);
  const Tensor one = linear(x, w, bias);
  omp_set_num_threads(threads);
  expect_close_finite(two, one, tol_for(K), kRelTol, "2 threads (split) vs 1 thread (one sgemm)");
}

TEST(Matmul, DefaultBackendSwitch) {
  EXPECT_EQ(default_matmul_backend(), MatmulBackend::OneDNN);
  Tensor a = uniform({5, 6}, 80), b = uniform({6, 7}, 81);
  Tensor want = matmul(a, b, false, false, MatmulBackend::Reference);
  for (MatmulBackend be : {MatmulBackend::OpenBLAS, MatmulBackend::Reference, MatmulBackend::OneDNN}) {
    set_default_matmul_backend(be);
    expect_close_finite(matmul(a, b), want, tol_for(6), kRelTol, "default backend");
  }
  set_default_matmul_backend(MatmulBackend::OneDNN);
}

TEST(Linear, MatchesReferenceWithAndWithoutBias) {
  Tensor w = uniform({5, 13}, 90), bias = uniform({5}, 91);
  for (const Shape& xs : {Shape{7, 13}, Shape{2, 3, 13}, Shape{1, 13}}) {
    Tensor x = uniform(xs, 92);
    Tensor ref = matmul(x, w, false, true, MatmulBackend::Reference);
    // Add the bias by hand in double to the reference.
    std::vector<float> rv = ref.to_vector<float>();
    const std::vector<float> bv = bias.to_vector<float>();
    for (size_t i = 0; i < rv.size(); ++i) rv[i] = static_cast<float>(static_cast<double>(rv[i]) + bv[i % 5]);
    Tensor ref_b = from_vector(rv, ref.shape());
    for (MatmulBackend be : {MatmulBackend::OneDNN, MatmulBackend::OpenBLAS, MatmulBackend::Reference}) {
      expect_close_finite(linear(x, w, bias, be), ref_b, tol_for(13), kRelTol,
                          std::string("linear+bias ") + shape_str(xs));
      expect_close_finite(linear(x, w, Tensor(), be), ref, tol_for(13), kRelTol,
                          std::string("linear ") + shape_str(xs));
    }
  }
  // A 1-D input gives a 1-D output; a permuted (non-contiguous) 3-D input is accepted.
  EXPECT_EQ(linear(uniform({13}, 93), w, bias).shape(), (Shape{5}));
  Tensor xp = uniform({3, 2, 13}, 94).permute({1, 0, 2});
  expect_close_finite(linear(xp, w, bias), linear(xp.contiguous(), w, bias, MatmulBackend::Reference), tol_for(13),
                      kRelTol, "permuted x");
}

TEST(Linear, BackwardMatchesExplicitLoops) {
  const int64_t B = 2, T = 3, in = 6, out = 4;
  Tensor x = uniform({B, T, in}, 100), w = uniform({out, in}, 101), gy = uniform({B, T, out}, 102);
  LinearGrads g = linear_backward(gy, x, w, true);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < in; ++i) {
        double acc = 0;
        for (int64_t o = 0; o < out; ++o) acc += gy.at({b, t, o}) * w.at({o, i});
        EXPECT_NEAR(g.dx.at({b, t, i}), acc, tol_for(out));
      }
  for (int64_t o = 0; o < out; ++o) {
    double db = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) db += gy.at({b, t, o});
    EXPECT_NEAR(g.dbias.at({o}), db, tol_for(B * T));
    for (int64_t i = 0; i < in; ++i) {
      double acc = 0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t) acc += gy.at({b, t, o}) * x.at({b, t, i});
      EXPECT_NEAR(g.dweight.at({o, i}), acc, tol_for(B * T));
    }
  }
  EXPECT_FALSE(linear_backward(gy, x, w, false).dbias.defined());
}

TEST(MatmulErrors, InnerDimMismatchNamesBothShapes) {
  const std::string msg = error_of([] { matmul(Tensor::empty({2, 3}), Tensor::empty({4, 5})); });
  EXPECT_NE(msg.find("matmul"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[2, 3]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[4, 5]"), std::string::npos) << msg;
  const std::string msg_t = error_of([] { matmul(Tensor::empty({2, 3}), Tensor::empty({3, 5}), true, false); });
  EXPECT_NE(msg_t.find("transposed"), std::string::npos) << msg_t;
}

TEST(MatmulErrors, BadRankDtypeBatchAndLinearShapes) {
  EXPECT_NE(error_of([] {
              matmul(Tensor::empty({3}), Tensor::empty({3, 2}));
            }).find("at least 2 dims"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              matmul(Tensor::empty({2, 3}, DType::Int64), Tensor::empty({3, 2}));
            }).find("float32"),
            std::string::npos);
  const std::string batch = error_of([] { matmul(Tensor::empty({2, 2, 3}), Tensor::empty({3, 3, 2})); });
  EXPECT_NE(batch.find("do not broadcast"), std::string::npos) << batch;
  const std::string lin = error_of([] { linear(Tensor::empty({4, 7}), Tensor::empty({5, 6}), Tensor()); });
  EXPECT_NE(lin.find("[4, 7]"), std::string::npos) << lin;
  EXPECT_NE(lin.find("[5, 6]"), std::string::npos) << lin;
  const std::string bias = error_of([] { linear(Tensor::empty({4, 6}), Tensor::empty({5, 6}), Tensor::empty({4})); });
  EXPECT_NE(bias.find("bias"), std::string::npos) << bias;
}

TEST(MatmulInto, WritesAndAccumulatesThroughStrides) {
  const MatmulBackend all[] = {MatmulBackend::OneDNN, MatmulBackend::OpenBLAS, MatmulBackend::Reference};
  Tensor a = uniform({3, 7, 13}, 110), b = uniform({3, 5, 13}, 111);
  Tensor want = matmul(a, b, false, true, MatmulBackend::Reference);  // [3, 7, 5]
  for (MatmulBackend be : all) {
    // A column block of a wider buffer: rows have stride 9; the columns outside the block stay untouched.
    Tensor buf = Tensor::empty({3, 7, 9});
    buf.fill_(2.0);
    Tensor out = buf.narrow(2, 3, 5);
    matmul_into(out, a, b, false, true, false, be);
    expect_close_finite(out, want, tol_for(13), kRelTol, std::string("into block [") + name(be) + "]");
    EXPECT_EQ(buf.at({1, 4, 0}), 2.0);
    EXPECT_EQ(buf.at({2, 6, 8}), 2.0);
    // Accumulate: out = want + want.
    matmul_into(out, a, b, false, true, true, be);
    Tensor twice = from_vector(want.to_vector<float>(), want.shape());
    for (float* p = twice.data<float>(); p != twice.data<float>() + twice.numel(); ++p) *p *= 2;
    expect_close_finite(out, twice, 2 * tol_for(13), kRelTol, std::string("accumulate [") + name(be) + "]");
    // Column-major out (non-dense rows): computed through a temporary.
    Tensor cm = Tensor::empty({3, 5, 7}).transpose(1, 2);
    cm.fill_(1.0);
    matmul_into(cm, a, b, false, true, true, be);
    Tensor plus1 = from_vector(want.to_vector<float>(), want.shape());
    for (float* p = plus1.data<float>(); p != plus1.data<float>() + plus1.numel(); ++p) *p += 1;
    expect_close_finite(cm, plus1, tol_for(13), kRelTol, std::string("column-major out [") + name(be) + "]");
  }
  // 2-D b shared by the batch, written into a slice of a bigger output (the fold of batch into rows).
  Tensor x = uniform({4, 6, 13}, 112), w = uniform({5, 13}, 113);
  Tensor big = Tensor::empty({4, 6, 8});
  matmul_into(big.narrow(2, 0, 5), x, w, false, true);
  expect_close_finite(big.narrow(2, 0, 5), matmul(x, w, false, true, MatmulBackend::Reference), tol_for(13), kRelTol,
                      "shared b into slice");
}

TEST(MatmulInto, RejectsWrongShapeAndOverlappingOut) {
  const std::string shape = error_of([] {
    matmul_into(Tensor::empty({2, 4}), Tensor::empty({2, 3}), Tensor::empty({3, 5}));
  });
  EXPECT_NE(shape.find("[2, 5]"), std::string::npos) << shape;
  const std::string overlap = error_of([] {
    matmul_into(Tensor::empty({1, 5}).expand({2, 5}), Tensor::empty({2, 3}), Tensor::empty({3, 5}));
  });
  EXPECT_NE(overlap.find("stride 0"), std::string::npos) << overlap;
}
