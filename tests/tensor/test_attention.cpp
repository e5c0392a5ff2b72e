// Tests of the fused attention kernels (tensor/attention.h): the blocked forward/backward against the
// double-precision reference kernels, a finite-difference check of the gradients, masking, dropout and the
// BEATs score stabilisation. Not here: the autograd wrapper (tests/nn/test_attention_op.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "tensor/attention.h"
#include "tensor/ops.h"
#include "tensor/precision.h"
#include "tests/test_util.h"

namespace sonar {
namespace {

constexpr double kFastVsReferenceTol = 2e-5;  // relative to the largest magnitude of the reference
// bf16 mode: operands rounded to 8 significant bits (relative error up to 2^-9 = 2e-3 each); measured 2-6e-3
// at BEATs' shape (12 heads of 64, 496 keys), so 10 units of 2^-9.
constexpr double kBf16VsReferenceTol = 2e-2;
// The bf16 path must really run: its results differ from the float32 kernel's by more than this.
constexpr double kBf16MinDifference = 1e-4;
constexpr double kFiniteDiffTol = 2e-3;       // relative to the largest analytic gradient
constexpr double kFiniteDiffStep = 1e-2;

double max_abs(const Tensor& t) {
  double m = 0.0;
  for (float x : t.contiguous().to_vector<float>()) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

// max |a - b| / max |b|, with the first mismatch reported.
double rel_err(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(shape_str(a.shape()), shape_str(b.shape()));
  auto va = a.contiguous().to_vector<float>(), vb = b.contiguous().to_vector<float>();
  double scale = std::max(max_abs(b), 1e-12), worst = 0.0;
  for (size_t i = 0; i < va.size(); ++i) {
    EXPECT_FALSE(std::isnan(va[i])) << "NaN at " << i;
    worst = std::max(worst, std::fabs(static_cast<double>(va[i]) - vb[i]) / scale);
  }
  return worst;
}

struct Case {
  int64_t B = 2, T = 13, S = 13, H = 3, D = 5;
  bool bias = true, gate = true, mask = true;
  float alpha = 32.0f, dropout = 0.0f;
  bool strided_qkv = true;  // q, k, v as narrowed views of one [B, T, 3C] tensor
  bool relative_bias = false;  // the bias as [H, T + S - 1] (a function of s - t) instead of [H, T, S]
};

struct Inputs {
  Tensor q, k, v, bias, gate, mask, go;
  AttentionParams p;
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  Generator gen(seed);
  Inputs in;
  const int64_t C = c.H * c.D;
  if (c.strided_qkv && c.T == c.S) {
    Tensor qkv = randn({c.B, c.T, 3 * C}, gen);
    in.q = qkv.narrow(2, 0, C);
    in.k = qkv.narrow(2, C, C);
    in.v = qkv.narrow(2, 2 * C, C);
  } else {
    in.q = randn({c.B, c.T, C}, gen);
    in.k = randn({c.B, c.S, C}, gen);
    in.v = randn({c.B, c.S, C}, gen);
  }
  if (c.bias) in.bias = c.relative_bias ? randn({c.H, c.T + c.S - 1}, gen) : randn({c.H, c.T, c.S}, gen);
  if (c.gate) in.gate = add(rand({c.B, c.H, c.T}, gen), 0.5f);
  if (c.mask) {
    std::vector<uint8_t> m(c.B * c.S, 0);
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t s = c.S - 3 * b; s < c.S; ++s) m[b * c.S + s] = 1;  // clip b loses its last 3b keys
    in.mask = from_bytes(m, {c.B, c.S});
  }
  in.go = randn({c.B, c.T, C}, gen);
  in.p.num_heads = c.H;
  in.p.scale = 1.0f / std::sqrt(static_cast<float>(c.D));
  in.p.alpha = c.alpha;
  in.p.dropout_p = c.dropout;
  in.p.dropout_seed = seed * 7 + 1;
  in.p.dropout_offset = 11;
  return in;
}

// Both backward paths: probabilities recomputed, and kept by the forward (keep_probs).
void compare_with_reference(const Case& c, double tol = kFastVsReferenceTol) {
  for (bool keep : {false, true}) {
    SCOPED_TRACE(keep ? "probabilities kept by the forward" : "probabilities recomputed");
    Inputs in = make_inputs(c, 42);
    AttentionParams pf = in.p;
    pf.keep_probs = keep;
    AttentionForward fast = attention_forward(in.q, in.k, in.v, in.bias, in.gate, in.mask, pf);
    EXPECT_EQ(fast.probs.defined(), keep);
    AttentionForward ref = attention_forward_reference(in.q, in.k, in.v, in.bias, in.gate, in.mask, in.p);
    EXPECT_LT(rel_err(fast.out, ref.out), tol);
    EXPECT_LT(rel_err(fast.lse, ref.lse), tol);
    AttentionGrads gf = attention_backward(in.go, in.q, in.k, in.v, in.bias, in.gate, in.mask, fast, in.p);
    AttentionGrads gr = attention_backward_reference(in.go, in.q, in.k, in.v, in.bias, in.gate, in.mask, in.p);
    EXPECT_LT(rel_err(gf.dq, gr.dq), tol);
    EXPECT_LT(rel_err(gf.dk, gr.dk), tol);
    EXPECT_LT(rel_err(gf.dv, gr.dv), tol);
    if (c.bias) {
      EXPECT_LT(rel_err(gf.dbias, gr.dbias), tol);
    }
    if (c.gate) {
      EXPECT_LT(rel_err(gf.dgate, gr.dgate), tol);
    }
  }
}

TEST(Attention, MatchesReferenceWithBiasGateAndMask) { compare_with_reference(Case{}); }

TEST(Attention, MatchesReferencePlain) {
  Case c;
  c.bias = c.gate = c.mask = false;
  c.alpha = 1.0f;
  c.strided_qkv = false;
  compare_with_reference(c);
}

TEST(Attention, MatchesReferenceCrossLengthsAndBiasWithoutGate) {
  Case c;
  c.T = 7;
  c.S = 37;  // more keys than one backward block of rows, not a multiple of the tile
  c.gate = false;
  c.D = 16;
  compare_with_reference(c);
}

TEST(Attention, MatchesReferenceLongerThanOneBackwardBlock) {
  Case c;
  c.B = 1;
  c.T = c.S = 70;
  c.H = 2;
  c.D = 8;
  compare_with_reference(c);
}

// Heads of 32 channels over 40 keys, q/k/v strided views of one tensor: the keys' packing runs the 16 x 16
// block transpose (two column blocks, two key blocks) and its scalar tail (8 keys).
TEST(Attention, MatchesReferenceWideHeadsStridedKeys) {
  Case c;
  c.B = 1;
  c.T = c.S = 40;
  c.H = 2;
  c.D = 32;
  compare_with_reference(c);
}

// bf16 mode (tensor/precision.h): the five products on bf16 copies with float32 accumulation, one block of
// all query rows per head. Against the double reference within the bf16 band, on both backward paths, with
// masking, dropout, both bias forms, cross lengths and strided inputs; and visibly different from float32.
TEST(Attention, Bf16ProductsStayWithinTheirBandOfTheReference) {
  const std::string why = bf16_unsupported_reason();
  if (!why.empty()) GTEST_SKIP() << why;
  PrecisionGuard bf16(Precision::BF16);
  Case square;  // [H, T, S] bias, gate, mask
  square.T = square.S = 40;
  square.D = 16;
  Case relative = square;
  relative.relative_bias = true;
  relative.dropout = 0.3f;
  Case cross;
  cross.T = 7;
  cross.S = 37;
  cross.D = 16;
  cross.gate = false;
  // 4100 keys: blocks of 60 query rows keep the block's scores within 1 MB, so 130 queries take three blocks
  // and dK, dV accumulate over them.
  Case long_keys = relative;
  long_keys.B = 1;
  long_keys.H = 1;
  long_keys.D = 8;
  long_keys.T = 130;
  long_keys.S = 4100;
  for (const Case& c : {square, relative, cross, long_keys}) {
    SCOPED_TRACE("T = " + std::to_string(c.T) + ", S = " + std::to_string(c.S));
    compare_with_reference(c, kBf16VsReferenceTol);
    Inputs in = make_inputs(c, 42);
    const AttentionForward b16 = attention_forward(in.q, in.k, in.v, in.bias, in.gate, in.mask, in.p);
    const AttentionGrads g16 = attention_backward(in.go, in.q, in.k, in.v, in.bias, in.gate, in.mask, b16, in.p);
    PrecisionGuard f32(Precision::F32);
    const AttentionForward f = attention_forward(in.q, in.k, in.v, in.bias, in.gate, in.mask, in.p);
    const AttentionGrads g = attention_backward(in.go, in.q, in.k, in.v, in.bias, in.gate, in.mask, f, in.p);
    EXPECT_GT(rel_err(b16.out, f.out), kBf16MinDifference);
    EXPECT_GT(rel_err(g16.dq, g.dq), kBf16MinDifference);
    EXPECT_GT(rel_err(g16.dk, g.dk), kBf16MinDifference);
    EXPECT_GT(rel_err(g16.dv, g.dv), kBf16MinDifference);
  }
}

TEST(Attention, MatchesReferenceWithDropout) {
  Case c;
  c.dropout = 0.3f;
  compare_with_reference(c);
}

TEST(Attention, MatchesReferenceWithRelativeBias) {
  for (int64_t T : {13, 7, 70}) {
    Case c;
    c.relative_bias = true;
    c.T = T;
    c.S = T == 7 ? 37 : T;  // square, cross lengths, and longer than one backward block of rows
    c.dropout = T == 13 ? 0.3f : 0.0f;
    c.gate = T != 7;
    SCOPED_TRACE("T = " + std::to_string(c.T) + ", S = " + std::to_string(c.S));
    compare_with_reference(c);
  }
}

// The relative form [H, T + S - 1] against its expansion to [H, T, S] built here with plain loops: the same
// bias values, so the forward and every gradient but the bias's are bit-identical; the relative bias
// gradient is the expanded one summed along each diagonal s - t.
TEST(Attention, RelativeBiasEqualsItsExpansion) {
  for (bool keep : {false, true}) {
    Case c;
    c.relative_bias = true;
    c.T = 9;
    c.S = 40;
    c.dropout = 0.2f;
    Inputs in = make_inputs(c, 5);
    const int64_t R = c.T + c.S - 1;
    const std::vector<float> rel = in.bias.to_vector<float>();
    std::vector<float> dense(c.H * c.T * c.S);
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t t = 0; t < c.T; ++t)
        for (int64_t s = 0; s < c.S; ++s) dense[(h * c.T + t) * c.S + s] = rel[h * R + (s - t + c.T - 1)];
    const Tensor dense_bias = from_vector(dense, {c.H, c.T, c.S});
    AttentionParams pf = in.p;
    pf.keep_probs = keep;
    AttentionForward fr = attention_forward(in.q, in.k, in.v, in.bias, in.gate, in.mask, pf);
    AttentionForward fd = attention_forward(in.q, in.k, in.v, dense_bias, in.gate, in.mask, pf);
    EXPECT_EQ(fr.out.to_vector<float>(), fd.out.to_vector<float>());
    EXPECT_EQ(fr.lse.to_vector<float>(), fd.lse.to_vector<float>());
    AttentionGrads gr = attention_backward(in.go, in.q, in.k, in.v, in.bias, in.gate, in.mask, fr, in.p);
    AttentionGrads gd = attention_backward(in.go, in.q, in.k, in.v, dense_bias, in.gate, in.mask, fd, in.p);
    EXPECT_EQ(gr.dq.to_vector<float>(), gd.dq.to_vector<float>());
    EXPECT_EQ(gr.dk.to_vector<float>(), gd.dk.to_vector<float>());
    EXPECT_EQ(gr.dv.to_vector<float>(), gd.dv.to_vector<float>());
    EXPECT_EQ(gr.dgate.to_vector<float>(), gd.dgate.to_vector<float>());
    ASSERT_EQ(gr.dbias.shape(), (Shape{c.H, R}));
    const std::vector<float> dd = gd.dbias.to_vector<float>();
    std::vector<float> diag(c.H * R, 0.0f);
    std::vector<double> acc(c.H * R, 0.0);
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t t = 0; t < c.T; ++t)
        for (int64_t s = 0; s < c.S; ++s) acc[h * R + (s - t + c.T - 1)] += dd[(h * c.T + t) * c.S + s];
    for (size_t i = 0; i < acc.size(); ++i) diag[i] = static_cast<float>(acc[i]);
    EXPECT_LT(rel_err(gr.dbias, from_vector(diag, {c.H, R})), kFastVsReferenceTol) << (keep ? "kept" : "recomputed");
  }
}

// The kept probabilities are the softmax the output was made from: with no dropout, out = P V per head; they
// do not depend on dropout (kept before it); every live row sums to 1 and a fully masked row is zero. Keeping
// them changes nothing else: out and lse are bit-identical to a forward that does not keep them.
TEST(Attention, KeptProbabilitiesAreTheSoftmaxTheOutputUses) {
  Case c;
  c.T = c.S = 37;
  Inputs in = make_inputs(c, 23);
  std::vector<uint8_t> m(c.B * c.S, 0);
  for (int64_t s = 0; s < c.S; ++s) m[1 * c.S + s] = s >= 30;  // clip 1 loses its last 7 keys
  in.mask = from_bytes(m, {c.B, c.S});
  AttentionParams keep = in.p;
  keep.keep_probs = true;
  AttentionForward f = attention_forward(in.q, in.k, in.v, in.bias, in.gate, in.mask, keep);
  AttentionForward plain = attention_forward(in.q, in.k, in.v, in.bias, in.gate, in.mask, in.p);
  ASSERT_EQ(shape_str(f.probs.shape()), shape_str({c.B, c.H, c.T, c.S}));
  EXPECT_EQ(f.out.to_vector<float>(), plain.out.to_vector<float>());
  EXPECT_EQ(f.lse.to_vector<float>(), plain.lse.to_vector<float>());
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h) {
      Tensor P = f.probs.select(0, b).select(0, h);                               // [T, S]
      Tensor V = in.v.select(0, b).narrow(1, h * c.D, c.D);                       // [S, D]
      Tensor out = f.out.select(0, b).narrow(1, h * c.D, c.D);                    // [T, D]
      EXPECT_LT(rel_err(matmul(P, V), out), kFastVsReferenceTol) << "clip " << b << " head " << h;
      Tensor rows = sum(P, {1});
      for (float r : rows.to_vector<float>()) EXPECT_NEAR(r, 1.0f, 1e-5f);  // float sums of 37 terms
      if (b == 1) {
        EXPECT_EQ(max_abs(P.narrow(1, 30, 7)), 0.0);  // masked keys get no weight
      }
    }
  AttentionParams dropped = keep;
  dropped.dropout_p = 0.4f;
  AttentionForward fd = attention_forward(in.q, in.k, in.v, in.bias, in.gate, in.mask, dropped);
  EXPECT_EQ(fd.probs.to_vector<float>(), f.probs.to_vector<float>());
  EXPECT_GT(rel_err(fd.out, f.out), 1e-2);  // dropout did act on the output
  Tensor dead = ones({c.B, c.S}, DType::UInt8);
  AttentionForward fm = attention_forward(in.q, in.k, in.v, in.bias, in.gate, dead, keep);
  EXPECT_EQ(max_abs(fm.probs), 0.0);
}

TEST(Attention, StabilisationDoesNotChangeTheResult) {
  Case c;
  Inputs in = make_inputs(c, 5);
  AttentionParams plain = in.p;
  plain.alpha = 1.0f;
  Tensor a = attention_forward(in.q, in.k, in.v, in.bias, in.gate, in.mask, in.p).out;
  Tensor b = attention_forward(in.q, in.k, in.v, in.bias, in.gate, in.mask, plain).out;
  EXPECT_LT(rel_err(a, b), kFastVsReferenceTol);
}

TEST(Attention, FullyMaskedRowGivesZerosAndNoNaN) {
  Case c;
  c.B = 1;
  Inputs in = make_inputs(c, 9);
  in.mask = ones({1, c.S}, DType::UInt8);
  AttentionForward f = attention_forward(in.q, in.k, in.v, in.bias, in.gate, in.mask, in.p);
  EXPECT_EQ(max_abs(f.out), 0.0);
  AttentionGrads g = attention_backward(in.go, in.q, in.k, in.v, in.bias, in.gate, in.mask, f, in.p);
  EXPECT_EQ(max_abs(g.dq), 0.0);
  EXPECT_EQ(max_abs(g.dk), 0.0);
  EXPECT_EQ(max_abs(g.dv), 0.0);
  EXPECT_EQ(max_abs(g.dbias), 0.0);
  EXPECT_EQ(max_abs(g.dgate), 0.0);
}

// The backward writes its outputs without zeroing them first (the bias gradient is written by the first clip
// and added to by the others), so a fully masked row must still leave zeros. Freed blocks of the outputs'
// sizes are filled with NaN first, so that a missed element shows up instead of reading a lucky zero.
TEST(Attention, FullyMaskedClipBesideALiveOneMatchesReference) {
  const bool bf16_here = bf16_unsupported_reason().empty();
  for (bool bf16 : {false, true}) for (int dead : {0, 1}) for (bool relative : {false, true}) {
    if (bf16 && !bf16_here) continue;
    PrecisionGuard precision(bf16 ? Precision::BF16 : Precision::F32);
    const double tol = bf16 ? kBf16VsReferenceTol : kFastVsReferenceTol;
    SCOPED_TRACE(bf16 ? "bf16" : "float32");
    Case c;
    c.relative_bias = relative;
    c.T = c.S = 40;  // longer than one backward block of rows
    Inputs in = make_inputs(c, 17 + dead);
    std::vector<uint8_t> m(c.B * c.S, 0);
    for (int64_t s = 0; s < c.S; ++s) m[dead * c.S + s] = 1;
    in.mask = from_bytes(m, {c.B, c.S});
    for (const Shape& s : {Shape{c.B, c.T, c.H * c.D}, Shape{c.H, c.T, c.S}, Shape{c.B, c.H, c.T}}) {
      Tensor junk = Tensor::empty(s);
      junk.fill_(std::nan(""));
    }
    AttentionParams pf = in.p;
    pf.keep_probs = dead == 1;  // both backward paths
    AttentionForward f = attention_forward(in.q, in.k, in.v, in.bias, in.gate, in.mask, pf);
    AttentionGrads g = attention_backward(in.go, in.q, in.k, in.v, in.bias, in.gate, in.mask, f, in.p);
    AttentionGrads r = attention_backward_reference(in.go, in.q, in.k, in.v, in.bias, in.gate, in.mask, in.p);
    EXPECT_LT(rel_err(g.dq, r.dq), tol) << "dead clip " << dead;
    EXPECT_LT(rel_err(g.dk, r.dk), tol) << "dead clip " << dead;
    EXPECT_LT(rel_err(g.dv, r.dv), tol) << "dead clip " << dead;
    EXPECT_LT(rel_err(g.dbias, r.dbias), tol) << "dead clip " << dead;
    EXPECT_LT(rel_err(g.dgate, r.dgate), tol) << "dead clip " << dead;
    EXPECT_EQ(max_abs(g.dgate.select(0, dead)), 0.0) << "dead clip " << dead;
  }
}

TEST(Attention, MaskedKeysDoNotInfluenceTheOutput) {
  Case c;
  c.B = 1;
  c.gate = false;
  Inputs in = make_inputs(c, 3);
  std::vector<uint8_t> m(c.S, 0);
  m[c.S - 1] = m[c.S - 2] = 1;
  in.mask = from_bytes(m, {1, c.S});
  Tensor before = attention_forward(in.q, in.k, in.v, in.bias, in.gate, in.mask, in.p).out;
  Tensor v2 = in.v.clone();
  v2.narrow(1, c.S - 2, 2).fill_(100.0);
  Tensor k2 = in.k.clone();
  k2.narrow(1, c.S - 1, 1).fill_(-50.0);
  Tensor after = attention_forward(in.q, k2, v2, in.bias, in.gate, in.mask, in.p).out;
  EXPECT_LT(rel_err(after, before), kFastVsReferenceTol);
}

TEST(Attention, DropoutKeepsAboutOneMinusP) {
  const float p = 0.25f;
  int kept = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) kept += attention_dropout_keep(123, i, p);
  EXPECT_NEAR(static_cast<double>(kept) / n, 1.0 - p, 0.02);
  EXPECT_EQ(attention_dropout_counters(2, 3, 4, 5), 120);
}

TEST(Attention, RejectsBadShapes) {
  Case c;
  Inputs in = make_inputs(c, 1);
  EXPECT_THROW(attention_forward(in.q, in.k, in.v, zeros({c.H, c.T, c.S + 1}), Tensor(), in.mask, in.p), Error);
  const std::string wrong_relative = testutil::error_of([&] {
    attention_forward(in.q, in.k, in.v, zeros({c.H, c.T + c.S}), Tensor(), in.mask, in.p);
  });
  EXPECT_NE(wrong_relative.find("[H, T + S - 1]"), std::string::npos) << wrong_relative;
  EXPECT_NE(wrong_relative.find("[3, 26]"), std::string::npos) << wrong_relative;
  EXPECT_THROW(attention_forward(in.q, in.k, in.v, Tensor(), in.gate, in.mask, in.p), Error);
  AttentionParams bad = in.p;
  bad.num_heads = 4;
  EXPECT_THROW(attention_forward(in.q, in.k, in.v, in.bias, in.gate, in.mask, bad), Error);
}

// Central finite differences of L = sum(out * go) against the fast backward, for every input element.
TEST(Attention, GradientsMatchFiniteDifferences) {
  for (bool relative : {false, true}) {
  SCOPED_TRACE(relative ? "relative bias [H, T + S - 1]" : "bias [H, T, S]");
  Case c;
  c.relative_bias = relative;
  c.B = 2;
  c.T = c.S = 6;
  c.H = 2;
  c.D = 3;
  c.alpha = 32.0f;
  c.strided_qkv = false;
  Inputs in = make_inputs(c, 77);
  Tensor q = in.q.clone(), k = in.k.clone(), v = in.v.clone(), bias = in.bias.clone(), gate = in.gate.clone();
  auto loss = [&]() {
    Tensor out = attention_forward_reference(q, k, v, bias, gate, in.mask, in.p).out;
    return sum(mul(out, in.go)).item<double>();
  };
  AttentionParams pf = in.p;
  pf.keep_probs = true;  // the recomputing path is checked against the reference kernel above
  AttentionForward f = attention_forward(q, k, v, bias, gate, in.mask, pf);
  AttentionGrads g = attention_backward(in.go, q, k, v, bias, gate, in.mask, f, in.p);
  auto check = [&](Tensor& x, const Tensor& analytic, const char* name) {
    float* data = x.data<float>();
    std::vector<float> numeric(x.numel());
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float saved = data[i];
      data[i] = saved + kFiniteDiffStep;
      const double up = loss();
      data[i] = saved - kFiniteDiffStep;
      const double down = loss();
      data[i] = saved;
      numeric[i] = static_cast<float>((up - down) / (2 * kFiniteDiffStep));
    }
    EXPECT_LT(rel_err(from_vector(numeric, x.shape()), analytic), kFiniteDiffTol) << name;
  };
  check(q, g.dq, "q");
  check(k, g.dk, "k");
  check(v, g.dv, "v");
  check(bias, g.dbias, "bias");
  check(gate, g.dgate, "gate");
  }
}

}  // namespace
}  // namespace sonar
