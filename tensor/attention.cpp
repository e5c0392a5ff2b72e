// Fused attention kernels (see tensor/attention.h): a blocked forward that keeps the row log-sum-exp (and,
// with keep_probs, the probabilities), a backward that reads the kept probabilities or recomputes them per
// (batch, head) in blocks of query rows, and the plain double-precision reference kernels. Work is split over (batch, head) in the forward and over heads in the
// backward (the bias gradient is summed over the batch, so one thread owns one head's rows of it).
#include "tensor/attention.h"

// GCC 12's AVX-512 intrinsics trip -Wmaybe-uninitialized on their own placeholder operand (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif

#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "tensor/creation.h"
#include "tensor/elementwise_math.h"
#include "tensor/matmul.h"
#include "tensor/precision.h"
#include "tensor/profile.h"
#include "tensor/random.h"

namespace sonar {
namespace {

constexpr int64_t kRowTile = 4;        // packed query rows are padded to a multiple of this
constexpr int64_t kColTile = 16;       // packed key and head-width columns are padded to a multiple of this
constexpr int64_t kForwardRows = 32;   // query rows scored at once in the forward (multiple of kRowTile)
constexpr int64_t kBackwardRows = 32;  // query rows recomputed at once in the backward (multiple of kRowTile)
// bf16 mode: as many query rows per block as keep a block's float32 scores within this many floats (1 MB),
// so that each bf16 product is one oneDNN call over a whole head at BEATs' lengths (496 x 512 scores) while a
// long clip's blocks stay bounded (the float32 path's blocks are kForwardRows / kBackwardRows rows).
constexpr int64_t kBf16BlockFloats = int64_t{1} << 18;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Below this many multiply-adds (B*H*T*S*D) a call runs on one thread: waking a team costs more.
constexpr int64_t kParallelWork = int64_t{1} << 18;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Query rows per block in bf16 mode for Tp padded query rows and Sp padded keys (a multiple of kRowTile).
int64_t bf16_block_rows(int64_t Tp, int64_t Sp) {
  return std::min(Tp, std::max(kRowTile, kBf16BlockFloats / Sp / kRowTile * kRowTile));
}

struct Dims {
  int64_t B = 0, T = 0, S = 0, C = 0, H = 0, D = 0;
  bool relative_bias = false;  // bias given as [H, T + S - 1] (a function of s - t), not [H, T, S]
  // Offset of bias row (h, t) in the bias tensor; the row's S values are contiguous in either form.
  int64_t bias_row(int64_t h, int64_t t) const {
    return relative_bias ? h * (T + S - 1) + (T - 1 - t) : (h * T + t) * S;
  }
  int64_t bias_numel() const { return relative_bias ? H * (T + S - 1) : H * T * S; }
};

Dims check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, const Tensor& gate,
                  const Tensor& mask, const AttentionParams& p, const char* op) {
  SONAR_CHECK(q.defined() && k.defined() && v.defined(), op, ": q, k and v must be defined");
  SONAR_CHECK(q.dtype() == DType::Float32 && k.dtype() == DType::Float32 && v.dtype() == DType::Float32, op,
              ": q, k, v must be float32");
  SONAR_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, op, ": q, k, v must be [B, T, C]; got q ",
              shape_str(q.shape()), ", k ", shape_str(k.shape()), ", v ", shape_str(v.shape()));
  Dims d;
  d.B = q.size(0);
  d.T = q.size(1);
  d.C = q.size(2);
  d.S = k.size(1);
  d.H = p.num_heads;
  SONAR_CHECK(d.H > 0 && d.C % d.H == 0, op, ": ", d.C, " channels do not split into ", d.H, " heads");
  d.D = d.C / d.H;
  SONAR_CHECK(k.size(0) == d.B && v.size(0) == d.B && k.size(2) == d.C && v.size(2) == d.C && v.size(1) == d.S,
              op, ": shapes disagree: q ", shape_str(q.shape()), ", k ", shape_str(k.shape()), ", v ",
              shape_str(v.shape()));
  if (bias.defined()) {
    SONAR_CHECK(bias.dtype() == DType::Float32, op, ": bias must be float32");
    d.relative_bias = bias.dim() == 2;
    SONAR_CHECK(bias.shape() == (Shape{d.H, d.T, d.S}) || bias.shape() == (Shape{d.H, d.T + d.S - 1}), op,
                ": bias must be [H, T, S] = ", shape_str({d.H, d.T, d.S}), " or, relative, [H, T + S - 1] = ",
                shape_str({d.H, d.T + d.S - 1}), ", got ", shape_str(bias.shape()));
  }
  if (gate.defined()) {
    SONAR_CHECK(bias.defined(), op, ": a gate needs a bias");
    SONAR_CHECK(gate.dtype() == DType::Float32, op, ": gate must be float32");
    SONAR_CHECK(gate.shape() == (Shape{d.B, d.H, d.T}), op, ": gate must be [B, H, T] = ",
                shape_str({d.B, d.H, d.T}), ", got ", shape_str(gate.shape()));
  }
  if (mask.defined()) {
    SONAR_CHECK(mask.dtype() == DType::UInt8 || mask.dtype() == DType::Bool, op,
                ": key padding mask must be uint8 or bool, got ", dtype_name(mask.dtype()));
    SONAR_CHECK(mask.shape() == (Shape{d.B, d.S}), op, ": key padding mask must be [B, S] = ",
                shape_str({d.B, d.S}), ", got ", shape_str(mask.shape()));
  }
  SONAR_CHECK(p.dropout_p >= 0.0f && p.dropout_p < 1.0f, op, ": dropout probability ", p.dropout_p,
              " outside [0, 1)");
  SONAR_CHECK(p.alpha > 0.0f, op, ": alpha must be positive, got ", p.alpha);
  return d;
}

// A float32 tensor whose last dim has stride 1 (copied when it has not); other strides are kept.
Tensor rows_dense(const Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// C[M x N] (+)= op(A)[M x K] * B[K x N], row-major with leading dims. op(A) = A ([M x K], lda) or, with
// trans_a, the transpose of a stored [K x M] matrix (lda its row stride), read in place. oneDNN's sgemm,
// single-threaded here because every caller runs inside the kernels' parallel region over (batch, head).
// Measured per core on BEATs-base shapes (docs/performance.md): 1.7x the register-tiled loop it replaced on
// both the forward and the backward kernel; the summation order of the products changed with it (results
// move in the last bits; the parity and reference tests pass unchanged).
void gemm(const float* A, int64_t lda, bool trans_a, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t M,
          int64_t N, int64_t K, bool accumulate) {
  const dnnl_status_t st =
      dnnl_sgemm(trans_a ? 'T' : 'N', 'N', M, N, K, 1.0f, A, lda, B, ldb, accumulate ? 1.0f : 0.0f, C, ldc);
  SONAR_CHECK(st == dnnl_success, "attention: dnnl_sgemm failed (status ", static_cast<int>(st), ") for M=", M,
              " N=", N, " K=", K);
}
void gemm_nn(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t M, int64_t N,
             int64_t K, bool accumulate) {
  gemm(A, lda, false, B, ldb, C, ldc, M, N, K, accumulate);
}

// bf16 mode (tensor/precision.h): the products take bfloat16 operands, accumulate in float32. Rows of n floats
// (src row stride ls) to bf16 rows (dst row stride ld), rounded to nearest even as convert_to_bf16 does, with
// optional scaling in the official two roundings ((x * a) * b); columns n .. ld and rows `rows` .. pad_rows zero.
void rows_to_bf16(const float* src, int64_t ls, int64_t rows, int64_t n, uint16_t* dst, int64_t ld,
                  int64_t pad_rows, float a = 1.0f, float b = 1.0f) {
  const bool scaled = a != 1.0f || b != 1.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = src + r * ls;
    uint16_t* y = dst + r * ld;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = float_to_bf16(scaled ? (x[j] * a) * b : x[j]);
    std::fill(y + n, y + ld, uint16_t{0});
  }
  for (int64_t r = rows; r < pad_rows; ++r) std::fill(dst + r * ld, dst + (r + 1) * ld, uint16_t{0});
}

// attention_dropout_keep inlined for the row loops, so that they vectorise: the hash of random_bits
// (detail::stream_bits, tensor/random.h) and the same test u >= p on u = (bits >> 40) / 2^24, written as an
// integer comparison with ceil(p * 2^24) (exact: both sides are integers below 2^24 scaled by the same power
// of 2).
using detail::mix64;
uint64_t keep_threshold(float p) { return static_cast<uint64_t>(std::ceil(static_cast<double>(p) * 16777216.0)); }
// The dropout decisions of one row of probabilities: keep(s) is true when element s survives.
struct DropoutRow {
  uint64_t base, first, threshold;  // mix64(seed), the row's first counter, keep_threshold(p)
  SONAR_INLINE bool keep(int64_t s) const {
    return (detail::stream_bits(base, first + static_cast<uint64_t>(s)) >> 40) >= threshold;
  }
};

// Read-only views of the inputs shared by the fast kernels.
struct Inputs {
  const float *q, *k, *v, *bias, *gate;
  const uint8_t* mask;
  int64_t qb, qt, kb, kt, vb, vt;  // batch and time strides (channel stride is 1)
};

Inputs gather_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, const Tensor& gate,
                     const Tensor& mask) {
  Inputs in{};
  in.q = q.data<float>();
  in.k = k.data<float>();
  in.v = v.data<float>();
  in.bias = bias.defined() ? bias.data<float>() : nullptr;
  in.gate = gate.defined() ? gate.data<float>() : nullptr;
  in.mask = mask.defined() ? mask.bytes() : nullptr;
  in.qb = q.stride(0);
  in.qt = q.stride(1);
  in.kb = k.stride(0);
  in.kt = k.stride(1);
  in.vb = v.stride(0);
  in.vt = v.stride(1);
  return in;
}

#if defined(__AVX512F__)
// dst[j * ld_dst + i] = src[i * ld_src + j] for i, j < 16: rows interleaved by 32 and 64 bits within each
// 128-bit lane, then the 4 x 4 lanes transposed. The keys' transpose per head was 10% of the forward kernel's
// time as a scalar scatter.
SONAR_INLINE void transpose16x16(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // u[4g + c], lane L: column 4L + c of rows 4g .. 4g + 3.
  auto pd = [](__m512 x) { return _mm512_castps_pd(x); };
  for (int g = 0; g < 16; g += 4) {
    r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[g]), pd(t[g + 2])));
    r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[g]), pd(t[g + 2])));
    r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[g + 1]), pd(t[g + 3])));
    r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[g + 1]), pd(t[g + 3])));
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44), v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
    const __m512 v2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44),
                 v3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
    _mm512_storeu_ps(dst + (0 + c) * ld_dst, _mm512_shuffle_f32x4(v0, v2, 0x88));
    _mm512_storeu_ps(dst + (4 + c) * ld_dst, _mm512_shuffle_f32x4(v0, v2, 0xDD));
    _mm512_storeu_ps(dst + (8 + c) * ld_dst, _mm512_shuffle_f32x4(v1, v3, 0x88));
    _mm512_storeu_ps(dst + (12 + c) * ld_dst, _mm512_shuffle_f32x4(v1, v3, 0xDD));
  }
}
#endif

// Packs head h of batch b: Qs [Tp x D] scaled queries, Kt [D x Sp] transposed keys, zero-padded.
void pack_scores_operands(const Inputs& in, const Dims& d, const AttentionParams& p, int64_t b, int64_t h,
                          int64_t Tp, int64_t Sp, float* Qs, float* Kt) {
  const float inv_alpha = 1.0f / p.alpha;
  for (int64_t t = 0; t < Tp; ++t) {
    float* dst = Qs + t * d.D;
    if (t < d.T) {
      const float* src = in.q + b * in.qb + t * in.qt + h * d.D;
      // Two roundings as in the official code: q *= scaling; q *= 1 / alpha.
      for (int64_t j = 0; j < d.D; ++j) dst[j] = (src[j] * p.scale) * inv_alpha;
    } else {
      std::fill(dst, dst + d.D, 0.0f);
    }
  }
  for (int64_t j = 0; j < d.D; ++j) std::fill(Kt + j * Sp + d.S, Kt + (j + 1) * Sp, 0.0f);
  const float* k0 = in.k + b * in.kb + h * d.D;
  int64_t s0 = 0;
#if defined(__AVX512F__)
  if (d.D % 16 == 0)
    for (; s0 + 16 <= d.S; s0 += 16)
      for (int64_t j0 = 0; j0 < d.D; j0 += 16) transpose16x16(k0 + s0 * in.kt + j0, in.kt, Kt + j0 * Sp + s0, Sp);
#endif
  for (int64_t s = s0; s < d.S; ++s) {
    const float* src = k0 + s * in.kt;
    for (int64_t j = 0; j < d.D; ++j) Kt[j * Sp + s] = src[j];
  }
}

// bf16 mode's counterpart: head h of clip b as bf16 rows, zero-padded: the scaled queries [Tp x D] when Qs
// is given (the same two roundings), the keys [Sp x D] (the score product reads them transposed in place)
// and the values [Sp x v_ld].
void pack_bf16_operands(const Inputs& in, const Dims& d, const AttentionParams& p, int64_t b, int64_t h,
                        int64_t Tp, int64_t Sp, uint16_t* Qs, uint16_t* K, uint16_t* V, int64_t v_ld) {
  if (Qs) rows_to_bf16(in.q + b * in.qb + h * d.D, in.qt, d.T, d.D, Qs, d.D, Tp, p.scale, 1.0f / p.alpha);
  rows_to_bf16(in.k + b * in.kb + h * d.D, in.kt, d.S, d.D, K, d.D, Sp);
  rows_to_bf16(in.v + b * in.vb + h * d.D, in.vt, d.S, d.D, V, v_ld, Sp);
}

// One row's logits from its raw scores q.k, in the arithmetic (and rounding) of the official code:
// (score - rowmax) * alpha, then + gate * bias; masked keys -inf. `max` is the row max of the raw scores.
struct RowLogits {
  float max, alpha, gate;
  const float* bias;     // this row of the bias, or null
  const uint8_t* mask;   // this clip's key padding mask, or null
  // The logit of key s; the flags are template arguments so that each loop is branch-free and vectorises.
  template <bool kBias, bool kMask>
  SONAR_INLINE float at(const float* row, int64_t s) const {
    const float l = (row[s] - max) * alpha;
    if constexpr (kBias && kMask) return mask[s] ? kNegInf : l + gate * bias[s];
    if constexpr (kBias && !kMask) return l + gate * bias[s];
    if constexpr (!kBias && kMask) return mask[s] ? kNegInf : l;
    return l;
  }
  // Calls f(std::bool_constant<kBias>, std::bool_constant<kMask>) for this row's kind.
  template <class F>
  SONAR_INLINE auto dispatch(F&& f) const {
    if (bias && mask) return f(std::true_type{}, std::true_type{});
    if (bias) return f(std::true_type{}, std::false_type{});
    if (mask) return f(std::false_type{}, std::true_type{});
    return f(std::false_type{}, std::false_type{});
  }
};

// The logit context of row t of head h, clip b (the row max of its raw scores over the S real keys).
RowLogits row_context(const float* row, const Inputs& in, const Dims& d, const AttentionParams& p, int64_t b,
                      int64_t h, int64_t t) {
  float m = kNegInf;
#pragma omp simd reduction(max : m)
  for (int64_t s = 0; s < d.S; ++s) m = row[s] > m ? row[s] : m;
  return RowLogits{m, p.alpha, in.gate ? in.gate[(b * d.H + h) * d.T + t] : 1.0f,
                   in.bias ? in.bias + d.bias_row(h, t) : nullptr, in.mask ? in.mask + b * d.S : nullptr};
}

// Turns a row of raw scores into final logits in place (padded columns untouched) and returns their max
// (-inf when every key is masked).
float row_logits(float* row, const Inputs& in, const Dims& d, const AttentionParams& p, int64_t b, int64_t h,
                 int64_t t) {
  const RowLogits c = row_context(row, in, d, p, b, h, t);
  return c.dispatch([&](auto with_bias, auto with_mask) {
    float lmax = kNegInf;
#pragma omp simd reduction(max : lmax)
    for (int64_t s = 0; s < d.S; ++s) {
      const float l = c.at<with_bias, with_mask>(row, s);
      row[s] = l;
      lmax = l > lmax ? l : lmax;
    }
    return lmax;
  });
}

// row[s] = exp(row[s] - shift) for s < n; returns the sum in double.
double exp_row(float* row, int64_t n, float shift) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t s = 0; s < n; ++s) {
    const float e = detail::exp_f(row[s] - shift);
    row[s] = e;
    sum += static_cast<double>(e);
  }
  return sum;
}

// The backward's recomputation of a row of probabilities, in place: row_logits and then exp_row(row, S, lse)
// fused into one pass after the row max (the same float operations on the same values, so the same bits).
void row_probs(float* row, const Inputs& in, const Dims& d, const AttentionParams& p, int64_t b, int64_t h,
               int64_t t, float lse) {
  const RowLogits c = row_context(row, in, d, p, b, h, t);
  c.dispatch([&](auto with_bias, auto with_mask) {
#pragma omp simd
    for (int64_t s = 0; s < d.S; ++s) row[s] = detail::exp_f(c.at<with_bias, with_mask>(row, s) - lse);
  });
}

// Calls f with four std::bool_constant arguments equal to a, b, c, e (one instantiation per combination).
template <class F>
SONAR_INLINE auto with_flags(bool a, bool b, bool c, bool e, F&& f) {
  auto last = [&](auto x, auto y, auto z) {
    return e ? f(x, y, z, std::true_type{}) : f(x, y, z, std::false_type{});
  };
  auto third = [&](auto x, auto y) { return c ? last(x, y, std::true_type{}) : last(x, y, std::false_type{}); };
  auto second = [&](auto x) { return b ? third(x, std::true_type{}) : third(x, std::false_type{}); };
  return a ? second(std::true_type{}) : second(std::false_type{});
}

uint64_t dropout_counter(const Dims& d, const AttentionParams& p, int64_t b, int64_t h, int64_t t, int64_t s) {
  return p.dropout_offset + static_cast<uint64_t>(((b * d.H + h) * d.T + t) * d.S + s);
}

}  // namespace

bool attention_dropout_keep(uint64_t seed, uint64_t counter, float p) {
  if (p <= 0.0f) return true;
  const double u = static_cast<double>(random_bits(seed, counter) >> 40) * (1.0 / 16777216.0);  // [0, 1)
  return u >= static_cast<double>(p);
}

int64_t attention_dropout_counters(int64_t batch, int64_t heads, int64_t tgt_len, int64_t src_len) {
  return batch * heads * tgt_len * src_len;
}

AttentionForward attention_forward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                   const Tensor& bias_in, const Tensor& gate_in, const Tensor& mask_in,
                                   const AttentionParams& p) {
  const Dims d = check_inputs(q_in, k_in, v_in, bias_in, gate_in, mask_in, p, "attention_forward");
  const Tensor q = rows_dense(q_in), k = rows_dense(k_in), v = rows_dense(v_in);
  const Tensor bias = bias_in.defined() ? bias_in.contiguous() : Tensor();
  const Tensor gate = gate_in.defined() ? gate_in.contiguous() : Tensor();
  const Tensor mask = mask_in.defined() ? mask_in.contiguous() : Tensor();
  const Inputs in = gather_inputs(q, k, v, bias, gate, mask);

  AttentionForward fwd;
  fwd.out = Tensor::empty({d.B, d.T, d.C});
  fwd.lse = Tensor::empty({d.B, d.H, d.T});
  if (p.keep_probs) fwd.probs = Tensor::empty({d.B, d.H, d.T, d.S});
  float* out = fwd.out.data<float>();
  float* lse = fwd.lse.data<float>();
  float* probs = p.keep_probs ? fwd.probs.data<float>() : nullptr;
  if (d.B * d.T * d.C == 0) return fwd;
  if (d.S == 0) {  // nothing to attend to: zero output, every row "fully masked"
    fwd.out.zero_();
    fwd.lse.fill_(-std::numeric_limits<double>::infinity());
    return fwd;
  }

  // Profiler: the two products per head, Q K^T and P V.
  profile::count_flops(4.0 * static_cast<double>(d.B * d.T) * static_cast<double>(d.S * d.C));
  const int64_t Tp = round_up(d.T, kRowTile), Sp = round_up(d.S, kColTile), Dp = round_up(d.D, kColTile);
  const float keep_scale = p.dropout_p > 0.0f ? 1.0f / (1.0f - p.dropout_p) : 1.0f;
  const uint64_t threshold = keep_threshold(p.dropout_p);
  const bool parallel = d.B * d.H * d.T * d.S * d.D > kParallelWork;

  // bf16: blocks of all query rows of a head at BEATs' lengths, so that each product is one oneDNN call (a call
  // per 32 rows cost more than the bf16 products save).
  const bool bf16 = matmul_precision() == Precision::BF16;
  const int64_t R = bf16 ? bf16_block_rows(Tp, Sp) : kForwardRows;

#pragma omp parallel if (parallel)
  {
    const int64_t f32 = bf16 ? 0 : 1, h16 = 1 - f32;  // each mode's packings only
    std::vector<float> Qs(f32 * Tp * d.D), Kt(f32 * d.D * Sp), Vp(f32 * Sp * Dp, 0.0f), sc(R * Sp), ob(R * Dp);
    std::vector<uint16_t> Q16(h16 * Tp * d.D), K16(h16 * Sp * d.D), V16(h16 * Sp * Dp), P16(h16 * R * Sp);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < d.B; ++b) {
      for (int64_t h = 0; h < d.H; ++h) {
        if (bf16) {
          pack_bf16_operands(in, d, p, b, h, Tp, Sp, Q16.data(), K16.data(), V16.data(), Dp);
        } else {
          pack_scores_operands(in, d, p, b, h, Tp, Sp, Qs.data(), Kt.data());
          for (int64_t s = 0; s < d.S; ++s) {
            const float* src = in.v + b * in.vb + s * in.vt + h * d.D;
            std::copy(src, src + d.D, Vp.data() + s * Dp);
          }
        }
        for (int64_t t0 = 0; t0 < Tp; t0 += R) {
          const int64_t rows = std::min(R, Tp - t0);  // a multiple of kRowTile
          if (bf16) {
            matmul_bf16_raw(Q16.data() + t0 * d.D, d.D, false, K16.data(), d.D, true, sc.data(), Sp, rows, Sp, d.D);
          } else {
            gemm_nn(Qs.data() + t0 * d.D, d.D, Kt.data(), Sp, sc.data(), Sp, rows, Sp, d.D, false);
          }
          for (int64_t r = 0; r < rows; ++r) {
            float* row = sc.data() + r * Sp;
            const int64_t t = t0 + r;
            if (t >= d.T) {
              std::fill(row, row + Sp, 0.0f);
              continue;
            }
            const float lmax = row_logits(row, in, d, p, b, h, t);
            float* lse_t = lse + (b * d.H + h) * d.T + t;
            float* kept = probs ? probs + ((b * d.H + h) * d.T + t) * d.S : nullptr;
            if (lmax == kNegInf) {
              std::fill(row, row + Sp, 0.0f);
              if (kept) std::fill(kept, kept + d.S, 0.0f);
              *lse_t = kNegInf;
              continue;
            }
            const double sum = exp_row(row, d.S, lmax);
            const float inv = static_cast<float>(1.0 / sum);
            if (p.dropout_p > 0.0f) {  // the mask generated and applied in one pass
              const DropoutRow drop{mix64(p.dropout_seed), dropout_counter(d, p, b, h, t, 0), threshold};
              if (kept) {
#pragma omp simd
                for (int64_t s = 0; s < d.S; ++s) {
                  const float pr = row[s] * inv;
                  kept[s] = pr;
                  row[s] = drop.keep(s) ? pr * keep_scale : 0.0f;
                }
              } else {
#pragma omp simd
                for (int64_t s = 0; s < d.S; ++s) {
                  const float pr = row[s] * inv;
                  row[s] = drop.keep(s) ? pr * keep_scale : 0.0f;
                }
              }
            } else {
#pragma omp simd
              for (int64_t s = 0; s < d.S; ++s) row[s] *= inv;
              if (kept) std::copy(row, row + d.S, kept);
            }
            std::fill(row + d.S, row + Sp, 0.0f);
            *lse_t = lmax + static_cast<float>(std::log(sum));
          }
          if (bf16) {
            rows_to_bf16(sc.data(), Sp, rows, Sp, P16.data(), Sp, rows);
            matmul_bf16_raw(P16.data(), Sp, false, V16.data(), Dp, false, ob.data(), Dp, rows, Dp, Sp);
          } else {
            gemm_nn(sc.data(), Sp, Vp.data(), Dp, ob.data(), Dp, rows, Dp, Sp, false);
          }
          for (int64_t r = 0; r < rows && t0 + r < d.T; ++r)
            std::copy(ob.data() + r * Dp, ob.data() + r * Dp + d.D, out + (b * d.T + t0 + r) * d.C + h * d.D);
        }
      }
    }
  }
  return fwd;
}

AttentionGrads attention_backward(const Tensor& grad_out_in, const Tensor& q_in, const Tensor& k_in,
                                  const Tensor& v_in, const Tensor& bias_in, const Tensor& gate_in,
                                  const Tensor& mask_in, const AttentionForward& fwd, const AttentionParams& p,
                                  const AttentionNeeds& needs) {
  const Dims d = check_inputs(q_in, k_in, v_in, bias_in, gate_in, mask_in, p, "attention_backward");
  SONAR_CHECK(grad_out_in.defined() && grad_out_in.shape() == (Shape{d.B, d.T, d.C}),
              "attention_backward: grad_out must be [B, T, C] = ", shape_str({d.B, d.T, d.C}));
  SONAR_CHECK(fwd.lse.defined() && fwd.lse.shape() == (Shape{d.B, d.H, d.T}),
              "attention_backward: forward log-sum-exp must be [B, H, T] = ", shape_str({d.B, d.H, d.T}));
  const Tensor q = rows_dense(q_in), k = rows_dense(k_in), v = rows_dense(v_in);
  const Tensor go = grad_out_in.contiguous();
  const Tensor lse_t = fwd.lse.contiguous();
  SONAR_CHECK(!fwd.probs.defined() || fwd.probs.shape() == (Shape{d.B, d.H, d.T, d.S}),
              "attention_backward: kept probabilities must be [B, H, T, S] = ", shape_str({d.B, d.H, d.T, d.S}),
              ", got ", shape_str(fwd.probs.shape()));
  const Tensor probs_t = fwd.probs.defined() ? fwd.probs.contiguous() : Tensor();
  const float* kept = probs_t.defined() ? probs_t.data<float>() : nullptr;
  const Tensor bias = bias_in.defined() ? bias_in.contiguous() : Tensor();
  const Tensor gate = gate_in.defined() ? gate_in.contiguous() : Tensor();
  const Tensor mask = mask_in.defined() ? mask_in.contiguous() : Tensor();
  const Inputs in = gather_inputs(q, k, v, bias, gate, mask);

  AttentionGrads g;
  const bool want_bias = needs.bias && bias.defined();
  const bool want_gate = needs.gate && gate.defined();
  if (needs.q) g.dq = Tensor::empty({d.B, d.T, d.C});
  if (needs.k) g.dk = Tensor::empty({d.B, d.S, d.C});
  if (needs.v) g.dv = Tensor::empty({d.B, d.S, d.C});
  if (want_bias) g.dbias = d.relative_bias ? zeros({d.H, d.T + d.S - 1}) : Tensor::empty({d.H, d.T, d.S});
  if (want_gate) g.dgate = Tensor::empty({d.B, d.H, d.T});
  // The kernel below writes every element of every output (a [H, T, S] dbias is written by the first batch
  // item and added to by the others; a relative one, whose rows overlap, starts at zero and is added to), so
  // the outputs are zeroed only when there is nothing to compute.
  if (d.B * d.T * d.S * d.C == 0) {
    for (Tensor* t : {&g.dq, &g.dk, &g.dv, &g.dbias, &g.dgate})
      if (t->defined()) t->zero_();
    return g;
  }
  // Profiler: the five products per head (Q K^T recomputed unless the forward kept the probabilities,
  // dP = dO V^T, dV, dQ, dK).
  profile::count_flops((kept ? 8.0 : 10.0) * static_cast<double>(d.B * d.T) * static_cast<double>(d.S * d.C));

  float* dq = g.dq.defined() ? g.dq.data<float>() : nullptr;
  float* dk = g.dk.defined() ? g.dk.data<float>() : nullptr;
  float* dv = g.dv.defined() ? g.dv.data<float>() : nullptr;
  float* dbias = want_bias ? g.dbias.data<float>() : nullptr;
  float* dgate = want_gate ? g.dgate.data<float>() : nullptr;
  const float* gop = go.data<float>();
  const float* lse = lse_t.data<float>();

  const int64_t Tp = round_up(d.T, kRowTile), Sp = round_up(d.S, kColTile), Dp = round_up(d.D, kColTile);
  // bf16 (as in the forward): blocks of all query rows per head at BEATs' lengths, the five products on bf16
  // copies; dK and dV accumulate over the blocks of a long clip.
  const bool bf16 = matmul_precision() == Precision::BF16;
  const int64_t R = bf16 ? bf16_block_rows(Tp, Sp) : kBackwardRows;
  const float keep_scale = p.dropout_p > 0.0f ? 1.0f / (1.0f - p.dropout_p) : 1.0f;
  const uint64_t threshold = keep_threshold(p.dropout_p);
  const bool parallel = d.B * d.H * d.T * d.S * d.D > kParallelWork;

#pragma omp parallel if (parallel)
  {
    const int64_t f32 = bf16 ? 0 : 1, h16 = 1 - f32;  // each mode's packings only
    std::vector<float> Qs(f32 * Tp * d.D), Kt(f32 * d.D * Sp), Vt(f32 * d.D * Sp), Kp(f32 * Sp * Dp, 0.0f),
        Qp(f32 * R * Dp), dOp(f32 * R * Dp), dOs(f32 * R * d.D), P(R * Sp), dP(R * Sp), blk(R * Dp), dkb(Sp * Dp),
        dvb(Sp * Dp);
    // Scaled queries (for recomputed scores), keys and values [Sp x D], the block's unscaled queries and output
    // gradients [R x D], its dL/dlogits and dropped probabilities [R x Sp].
    std::vector<uint16_t> Qs16(h16 * (kept ? 0 : Tp * d.D)), K16(h16 * Sp * d.D), V16(h16 * Sp * d.D),
        Q16(h16 * R * d.D), dO16(h16 * R * d.D), dS16(h16 * R * Sp), P16(h16 * R * Sp);
    std::vector<float> keep(Sp);  // the row's dropout factors: 1/(1-p) kept, 0 dropped
#pragma omp for schedule(dynamic)
    for (int64_t h = 0; h < d.H; ++h) {
      for (int64_t b = 0; b < d.B; ++b) {
        if (bf16) {
          pack_bf16_operands(in, d, p, b, h, Tp, Sp, kept ? nullptr : Qs16.data(), K16.data(), V16.data(), d.D);
        } else {
          if (!kept) pack_scores_operands(in, d, p, b, h, Tp, Sp, Qs.data(), Kt.data());
          for (int64_t j = 0; j < d.D; ++j) std::fill(Vt.data() + j * Sp + d.S, Vt.data() + (j + 1) * Sp, 0.0f);
          for (int64_t s = 0; s < d.S; ++s) {
            const float* vs = in.v + b * in.vb + s * in.vt + h * d.D;
            const float* ks = in.k + b * in.kb + s * in.kt + h * d.D;
            for (int64_t j = 0; j < d.D; ++j) {
              Vt[j * Sp + s] = vs[j];
              Kp[s * Dp + j] = ks[j];
            }
          }
        }
        std::fill(dkb.begin(), dkb.end(), 0.0f);
        std::fill(dvb.begin(), dvb.end(), 0.0f);
        for (int64_t t0 = 0; t0 < Tp; t0 += R) {
          const int64_t rows = std::min(R, Tp - t0);  // a multiple of kRowTile
          // Recompute the probabilities of this block of query rows (their raw scores here, the rest per row),
          // unless the forward kept them.
          if (!kept && bf16)
            matmul_bf16_raw(Qs16.data() + t0 * d.D, d.D, false, K16.data(), d.D, true, P.data(), Sp, rows, Sp, d.D);
          if (!kept && !bf16)
            gemm_nn(Qs.data() + t0 * d.D, d.D, Kt.data(), Sp, P.data(), Sp, rows, Sp, d.D, false);
          // dL/d(dropped probabilities) = dO . v
          if (!bf16) {
            std::fill(dOs.begin(), dOs.end(), 0.0f);
            std::fill(dOp.begin(), dOp.end(), 0.0f);
            std::fill(Qp.begin(), Qp.end(), 0.0f);
            for (int64_t r = 0; r < rows && t0 + r < d.T; ++r) {
              const int64_t t = t0 + r;
              const float* gsrc = gop + (b * d.T + t) * d.C + h * d.D;
              const float* qsrc = in.q + b * in.qb + t * in.qt + h * d.D;
              std::copy(gsrc, gsrc + d.D, dOs.data() + r * d.D);
              std::copy(gsrc, gsrc + d.D, dOp.data() + r * Dp);
              std::copy(qsrc, qsrc + d.D, Qp.data() + r * Dp);
            }
            gemm_nn(dOs.data(), d.D, Vt.data(), Sp, dP.data(), Sp, rows, Sp, d.D, false);
          } else {
            const int64_t live = std::max<int64_t>(0, std::min(rows, d.T - t0));  // rows with a query
            rows_to_bf16(gop + (b * d.T + t0) * d.C + h * d.D, d.C, live, d.D, dO16.data(), d.D, rows);
            rows_to_bf16(in.q + b * in.qb + t0 * in.qt + h * d.D, in.qt, live, d.D, Q16.data(), d.D, rows);
            matmul_bf16_raw(dO16.data(), d.D, false, V16.data(), d.D, true, dP.data(), Sp, rows, Sp, d.D);
          }
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t t = t0 + r;
            float* prow = P.data() + r * Sp;
            float* dprow = dP.data() + r * Sp;
            const float l = t < d.T ? lse[(b * d.H + h) * d.T + t] : kNegInf;
            if (t >= d.T || l == kNegInf) {
              std::fill(prow, prow + Sp, 0.0f);
              std::fill(dprow, dprow + Sp, 0.0f);
              if (t < d.T) {  // a fully masked row has no gradient; the outputs were not zeroed
                if (dgate) dgate[(b * d.H + h) * d.T + t] = 0.0f;
                if (dbias && b == 0 && !d.relative_bias)
                  std::fill(dbias + d.bias_row(h, t), dbias + d.bias_row(h, t) + d.S, 0.0f);
              }
              continue;
            }
            // The row's passes: the probabilities (kept by the forward, or recomputed here: max, then logits
            // and exp), dropout on dL/dP, delta, then one pass for dL/dlogits, the bias gradient, the gate's
            // sum and the dropped probabilities.
            // pr: probabilities before dropout (the kept row, or prow recomputed in place); dprow: dL/dP.
            const float* pr = prow;
            if (kept) {
              pr = kept + ((b * d.H + h) * d.T + t) * d.S;
            } else {
              row_probs(prow, in, d, p, b, h, t, l);
            }
            float* kp = keep.data();
            const bool dropout = p.dropout_p > 0.0f;
            if (dropout) {  // apart from the sum below: with it, this loop did not vectorise (1.6x slower)
              const DropoutRow drop{mix64(p.dropout_seed), dropout_counter(d, p, b, h, t, 0), threshold};
#pragma omp simd
              for (int64_t s = 0; s < d.S; ++s) {
                const bool k = drop.keep(s);
                kp[s] = k ? keep_scale : 0.0f;
                dprow[s] = k ? dprow[s] * keep_scale : 0.0f;
              }
            }
            double delta = 0.0;
#pragma omp simd reduction(+ : delta)
            for (int64_t s = 0; s < d.S; ++s) delta += static_cast<double>(pr[s]) * dprow[s];
            const float delta_f = static_cast<float>(delta);
            // One pass: dprow becomes dL/dlogits; dbias gets gate * dL/dlogits (written by the first batch
            // item, added to by the others; always added to in the relative form, where a head's rows overlap
            // and the thread that owns the head owns all of them); the gate's gradient sums dL/dlogits * bias;
            // prow becomes the dropped probabilities used by the forward's P @ V. The flags are template
            // arguments so that each variant is branch-free and vectorises.
            const float gt = in.gate ? in.gate[(b * d.H + h) * d.T + t] : 1.0f;
            float* dbrow = dbias ? dbias + d.bias_row(h, t) : nullptr;
            const float* brow = dgate ? in.bias + d.bias_row(h, t) : nullptr;
            const double dgate_sum = with_flags(
                dbrow != nullptr, b == 0 && !d.relative_bias, dgate != nullptr, dropout,
                [&](auto with_dbias, auto first_clip, auto with_dgate, auto with_dropout) {
                  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
                  for (int64_t s = 0; s < d.S; ++s) {
                    const float ds = pr[s] * (dprow[s] - delta_f);
                    dprow[s] = ds;
                    if constexpr (with_dbias && first_clip)
                      dbrow[s] = gt * ds + 0.0f;  // + 0: a -0 product stores +0, as adding it to a zeroed row did
                    if constexpr (with_dbias && !first_clip) dbrow[s] += gt * ds;
                    if constexpr (with_dgate) acc += static_cast<double>(ds) * brow[s];
                    if constexpr (with_dropout) {
                      prow[s] = pr[s] * kp[s];  // pr >= 0: a dropped one is +0
                    } else {
                      prow[s] = pr[s];
                    }
                  }
                  return acc;
                });
            std::fill(prow + d.S, prow + Sp, 0.0f);
            std::fill(dprow + d.S, dprow + Sp, 0.0f);
            if (dgate) dgate[(b * d.H + h) * d.T + t] = static_cast<float>(dgate_sum);
          }
          if (bf16) {  // the three products below on bf16 copies of dL/dlogits and the dropped probabilities
            rows_to_bf16(dP.data(), Sp, rows, Sp, dS16.data(), Sp, rows);
            rows_to_bf16(P.data(), Sp, rows, Sp, P16.data(), Sp, rows);
          }
          if (dq) {  // dq = scale * dlogits @ K
            if (bf16) {
              matmul_bf16_raw(dS16.data(), Sp, false, K16.data(), d.D, false, blk.data(), Dp, rows, d.D, Sp);
            } else {
              gemm_nn(dP.data(), Sp, Kp.data(), Dp, blk.data(), Dp, rows, Dp, Sp, false);
            }
            for (int64_t r = 0; r < rows && t0 + r < d.T; ++r) {
              float* dst = dq + (b * d.T + t0 + r) * d.C + h * d.D;
              for (int64_t j = 0; j < d.D; ++j) dst[j] = p.scale * blk[r * Dp + j];
            }
          }
          // dk += dlogits^T @ Q  (scaled at the end), dv += P_dropped^T @ dO; the transposes are read in place
          if (dk && bf16)
            matmul_bf16_raw(dS16.data(), Sp, true, Q16.data(), d.D, false, dkb.data(), Dp, Sp, d.D, rows, t0 > 0);
          if (dk && !bf16) gemm(dP.data(), Sp, true, Qp.data(), Dp, dkb.data(), Dp, Sp, Dp, rows, true);
          if (dv && bf16)
            matmul_bf16_raw(P16.data(), Sp, true, dO16.data(), d.D, false, dvb.data(), Dp, Sp, d.D, rows, t0 > 0);
          if (dv && !bf16) gemm(P.data(), Sp, true, dOp.data(), Dp, dvb.data(), Dp, Sp, Dp, rows, true);
        }
        for (int64_t s = 0; s < d.S; ++s) {
          if (dk) {
            float* dst = dk + (b * d.S + s) * d.C + h * d.D;
            for (int64_t j = 0; j < d.D; ++j) dst[j] = p.scale * dkb[s * Dp + j];
          }
          if (dv) std::copy(dvb.data() + s * Dp, dvb.data() + s * Dp + d.D, dv + (b * d.S + s) * d.C + h * d.D);
        }
      }
    }
  }
  return g;
}

// ---------------------------------------------------------------------------------------------------------
// Reference kernels: the definition, computed with plain loops in double precision.

namespace {

struct RefProbs {
  std::vector<double> P;   // [B, H, T, S] probabilities before dropout
  std::vector<double> Pd;  // [B, H, T, S] after dropout (scaled)
  std::vector<uint8_t> dead;  // [B, H, T] rows with every key masked
  std::vector<double> lse;    // [B, H, T] log-sum-exp of the logits
};

double ref_at(const Tensor& t, int64_t i, int64_t j, int64_t l) { return t.at({i, j, l}); }
double ref_bias(const Tensor& bias, const Dims& d, int64_t h, int64_t t, int64_t s) {
  return d.relative_bias ? bias.at({h, s - t + d.T - 1}) : bias.at({h, t, s});
}

RefProbs reference_probs(const Tensor& q, const Tensor& k, const Tensor& bias, const Tensor& gate,
                         const Tensor& mask, const AttentionParams& p, const Dims& d) {
  RefProbs r;
  r.P.assign(d.B * d.H * d.T * d.S, 0.0);
  r.Pd.assign(r.P.size(), 0.0);
  r.dead.assign(d.B * d.H * d.T, 0);
  r.lse.assign(d.B * d.H * d.T, -std::numeric_limits<double>::infinity());
  std::vector<double> sc(d.S);
  const double keep_scale = p.dropout_p > 0.0f ? 1.0 / (1.0 - static_cast<double>(p.dropout_p)) : 1.0;
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.H; ++h)
      for (int64_t t = 0; t < d.T; ++t) {
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t s = 0; s < d.S; ++s) {
          double acc = 0.0;
          for (int64_t j = 0; j < d.D; ++j)
            acc += ref_at(q, b, t, h * d.D + j) * p.scale / p.alpha * ref_at(k, b, s, h * d.D + j);
          sc[s] = acc;
          m = std::max(m, acc);
        }
        double lmax = -std::numeric_limits<double>::infinity();
        for (int64_t s = 0; s < d.S; ++s) {
          double l = (sc[s] - m) * p.alpha;
          if (mask.defined() && mask.at({b, s}) != 0.0) {
            l = -std::numeric_limits<double>::infinity();
          } else if (bias.defined()) {
            const double g = gate.defined() ? gate.at({b, h, t}) : 1.0;
            l += g * ref_bias(bias, d, h, t, s);
          }
          sc[s] = l;
          lmax = std::max(lmax, l);
        }
        const int64_t row = ((b * d.H + h) * d.T + t) * d.S;
        if (lmax == -std::numeric_limits<double>::infinity()) {
          r.dead[(b * d.H + h) * d.T + t] = 1;
          continue;
        }
        double sum = 0.0;
        for (int64_t s = 0; s < d.S; ++s) sum += std::exp(sc[s] - lmax);
        r.lse[(b * d.H + h) * d.T + t] = lmax + std::log(sum);
        for (int64_t s = 0; s < d.S; ++s) {
          const double pr = std::exp(sc[s] - lmax) / sum;
          r.P[row + s] = pr;
          const bool keep = attention_dropout_keep(p.dropout_seed, dropout_counter(d, p, b, h, t, s), p.dropout_p);
          r.Pd[row + s] = keep ? pr * keep_scale : 0.0;
        }
      }
  return r;
}

}  // namespace

AttentionForward attention_forward_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                                             const Tensor& gate, const Tensor& mask, const AttentionParams& p) {
  const Dims d = check_inputs(q, k, v, bias, gate, mask, p, "attention_forward_reference");
  const RefProbs r = reference_probs(q, k, bias, gate, mask, p, d);
  std::vector<float> out(d.B * d.T * d.C, 0.0f), lse(d.B * d.H * d.T);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.H; ++h)
      for (int64_t t = 0; t < d.T; ++t) {
        const int64_t row = ((b * d.H + h) * d.T + t) * d.S;
        for (int64_t j = 0; j < d.D; ++j) {
          double acc = 0.0;
          for (int64_t s = 0; s < d.S; ++s) acc += r.Pd[row + s] * ref_at(v, b, s, h * d.D + j);
          out[(b * d.T + t) * d.C + h * d.D + j] = static_cast<float>(acc);
        }
        lse[(b * d.H + h) * d.T + t] = static_cast<float>(r.lse[(b * d.H + h) * d.T + t]);
      }
  AttentionForward fwd;
  fwd.out = from_vector(out, {d.B, d.T, d.C});
  fwd.lse = from_vector(lse, {d.B, d.H, d.T});
  return fwd;
}

AttentionGrads attention_backward_reference(const Tensor& grad_out, const Tensor& q, const Tensor& k,
                                            const Tensor& v, const Tensor& bias, const Tensor& gate,
                                            const Tensor& mask, const AttentionParams& p,
                                            const AttentionNeeds& needs) {
  const Dims d = check_inputs(q, k, v, bias, gate, mask, p, "attention_backward_reference");
  SONAR_CHECK(grad_out.shape() == (Shape{d.B, d.T, d.C}), "attention_backward_reference: grad_out must be ",
              shape_str({d.B, d.T, d.C}));
  const RefProbs r = reference_probs(q, k, bias, gate, mask, p, d);
  const double keep_scale = p.dropout_p > 0.0f ? 1.0 / (1.0 - static_cast<double>(p.dropout_p)) : 1.0;
  std::vector<double> dq(d.B * d.T * d.C, 0.0), dk(d.B * d.S * d.C, 0.0), dv(d.B * d.S * d.C, 0.0),
      dbias(d.bias_numel(), 0.0), dgate(d.B * d.H * d.T, 0.0);
  std::vector<double> dl(d.S);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.H; ++h)
      for (int64_t t = 0; t < d.T; ++t) {
        const int64_t row = ((b * d.H + h) * d.T + t) * d.S;
        if (r.dead[(b * d.H + h) * d.T + t]) continue;
        // dL/dPd[s] = dO . v_s; dL/dP[s] = keep * scale * that.
        double delta = 0.0;
        for (int64_t s = 0; s < d.S; ++s) {
          double dpd = 0.0;
          for (int64_t j = 0; j < d.D; ++j)
            dpd += grad_out.at({b, t, h * d.D + j}) * ref_at(v, b, s, h * d.D + j);
          const bool keep = attention_dropout_keep(p.dropout_seed, dropout_counter(d, p, b, h, t, s), p.dropout_p);
          dl[s] = keep ? dpd * keep_scale : 0.0;
          delta += r.P[row + s] * dl[s];
          for (int64_t j = 0; j < d.D; ++j)
            dv[(b * d.S + s) * d.C + h * d.D + j] += r.Pd[row + s] * grad_out.at({b, t, h * d.D + j});
        }
        for (int64_t s = 0; s < d.S; ++s) dl[s] = r.P[row + s] * (dl[s] - delta);
        const double g = gate.defined() ? gate.at({b, h, t}) : 1.0;
        for (int64_t s = 0; s < d.S; ++s) {
          if (bias.defined()) {
            dbias[d.bias_row(h, t) + s] += g * dl[s];
            dgate[(b * d.H + h) * d.T + t] += dl[s] * ref_bias(bias, d, h, t, s);
          }
          for (int64_t j = 0; j < d.D; ++j) {
            dq[(b * d.T + t) * d.C + h * d.D + j] += p.scale * dl[s] * ref_at(k, b, s, h * d.D + j);
            dk[(b * d.S + s) * d.C + h * d.D + j] += p.scale * dl[s] * ref_at(q, b, t, h * d.D + j);
          }
        }
      }
  auto to_tensor = [](const std::vector<double>& x, const Shape& shape) {
    std::vector<float> f(x.begin(), x.end());
    return from_vector(f, shape);
  };
  AttentionGrads g;
  if (needs.q) g.dq = to_tensor(dq, {d.B, d.T, d.C});
  if (needs.k) g.dk = to_tensor(dk, {d.B, d.S, d.C});
  if (needs.v) g.dv = to_tensor(dv, {d.B, d.S, d.C});
  if (needs.bias && bias.defined()) g.dbias = to_tensor(dbias, bias.shape());
  if (needs.gate && gate.defined()) g.dgate = to_tensor(dgate, {d.B, d.H, d.T});
  return g;
}

}  // namespace sonar
