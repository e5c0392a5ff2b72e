// Matrix products (see matmul.h): the shared front end (shape checks, batch broadcasting, layout analysis),
// then three backends: a cached oneDNN matmul primitive (default), an OpenBLAS cblas_sgemm loop over the
// batch, and a plain triple loop accumulating in double (the test oracle). Not here: autograd nodes (they
// call these with transpose flags) and convolutions (conv.cpp).
#include "tensor/matmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "tensor/dnnl_context.h"
#include "tensor/precision.h"
#include "tensor/profile.h"

namespace sonar {

namespace {

std::atomic<MatmulBackend> g_default_backend{MatmulBackend::OneDNN};

MatmulBackend resolve(MatmulBackend b) {
  if (b != MatmulBackend::Auto) return b;
  MatmulBackend d = g_default_backend.load();
  return d == MatmulBackend::Auto ? MatmulBackend::OneDNN : d;
}

// One operand's logical matrix op(X) [rows, cols] as dense memory: row-major (element (r, c) at r*ld + c)
// or column-major (at r + c*ld), plus its strides over the (collapsed) batch dims, 0 where broadcast.
struct Operand {
  const float* ptr = nullptr;
  int64_t rows = 0, cols = 0;
  bool col_major = false;
  int64_t ld = 0;
  std::vector<int64_t> bstride;
  Tensor keep;  // the tensor that owns ptr (a copy when the input had to be made dense)
};

// A whole product C[b] = A[b] @ B[b] (+ bias) after analysis.
struct Problem {
  std::vector<int64_t> bshape;   // batch dims of size > 1, collapsed where all strides allow
  std::vector<int64_t> cstride;  // C's strides over those dims
  int64_t M = 0, N = 0, K = 0;
  Operand A, B;
  float* C = nullptr;
  int64_t ldc = 0;              // C's row stride (its column stride is 1)
  bool accumulate = false;      // C += product instead of C = product
  const float* bias = nullptr;  // [N] or null
};

// Classifies the last two dims of `t` (a logical [rows, cols] view) as a dense row- or column-major matrix.
bool dense_layout(const Tensor& t, bool& col_major, int64_t& ld) {
  const int64_t r = t.size(-2), c = t.size(-1), rs = t.stride(-2), cs = t.stride(-1);
  if ((c == 1 || cs == 1) && (r == 1 || rs >= c)) {
    col_major = false;
    ld = (r == 1) ? std::max<int64_t>(c, 1) : rs;
    return true;
  }
  if ((r == 1 || rs == 1) && (c == 1 || cs >= r)) {
    col_major = true;
    ld = (c == 1) ? std::max<int64_t>(r, 1) : cs;
    return true;
  }
  return false;
}

// Strides of t's batch dims aligned to the output batch shape `out` (right-aligned, 0 where broadcast).
std::vector<int64_t> batch_strides(const Tensor& t, const Shape& out) {
  const int64_t nb = static_cast<int64_t>(out.size()), tb = t.dim() - 2;
  std::vector<int64_t> s(nb, 0);
  for (int64_t i = 0; i < tb; ++i) {
    const int64_t od = nb - tb + i;
    s[od] = (t.size(i) == 1) ? 0 : t.stride(i);
  }
  return s;
}

Shape broadcast_batch(const Tensor& a, const Tensor& b, const Tensor& a_in, const Tensor& b_in, bool ta, bool tb) {
  const int64_t na = a.dim() - 2, nb = b.dim() - 2, n = std::max(na, nb);
  Shape out(n, 1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t ia = i - (n - na), ib = i - (n - nb);
    const int64_t sa = ia >= 0 ? a.size(ia) : 1, sb = ib >= 0 ? b.size(ib) : 1;
    SONAR_CHECK(sa == sb || sa == 1 || sb == 1, "matmul: batch dims of a ", shape_str(a_in.shape()),
                (ta ? " (transposed)" : ""), " and b ", shape_str(b_in.shape()), (tb ? " (transposed)" : ""),
                " do not broadcast (", sa, " vs ", sb, " at batch dim ", i, ")");
    out[i] = std::max(sa, sb);
  }
  return out;
}

void check_operand(const Tensor& t, const char* op, const char* name) {
  SONAR_CHECK(t.defined(), op, ": ", name, " is undefined");
  SONAR_CHECK(t.dtype() == DType::Float32, op, ": ", name, " must be float32, got ", dtype_name(t.dtype()), " ",
              shape_str(t.shape()));
}

// Logical views: A [..., M, K], B [..., K, N]; checks ranks, dtypes and the inner dimension.
void logical_views(const Tensor& a, const Tensor& b, bool ta, bool tb, Tensor& A, Tensor& B) {
  check_operand(a, "matmul", "a");
  check_operand(b, "matmul", "b");
  SONAR_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: both operands need at least 2 dims, got a ", shape_str(a.shape()),
              " and b ", shape_str(b.shape()));
  A = ta ? a.transpose(-2, -1) : a;
  B = tb ? b.transpose(-2, -1) : b;
  SONAR_CHECK(A.size(-1) == B.size(-2), "matmul: inner dimensions differ: a ", shape_str(a.shape()),
              (ta ? " (transposed)" : ""), " gives K=", A.size(-1), " but b ", shape_str(b.shape()),
              (tb ? " (transposed)" : ""), " gives K=", B.size(-2));
}

std::atomic<int64_t> g_operand_copies{0};

Operand make_operand(Tensor t, const Shape& out_batch) {
  Operand o;
  if (!dense_layout(t, o.col_major, o.ld)) {
    g_operand_copies.fetch_add(1, std::memory_order_relaxed);
    t = t.contiguous();
    dense_layout(t, o.col_major, o.ld);
  }
  o.ptr = t.data<float>();
  o.rows = t.size(-2);
  o.cols = t.size(-1);
  o.bstride = batch_strides(t, out_batch);
  o.keep = t;
  return o;
}

// True when C's matrices have dense rows (column stride 1), as every fast backend writes them.
bool dense_rows(const Tensor& C) {
  const int64_t M = C.size(-2), N = C.size(-1);
  return (N == 1 || C.stride(-1) == 1) && (M == 1 || C.stride(-2) >= N);
}

// Builds the problem for C ([out_batch..., M, N] with dense rows) from logical views.
Problem analyse(const Tensor& A, const Tensor& B, const Shape& out_batch, const Tensor& C, const float* bias,
                bool accumulate) {
  Problem p;
  p.M = A.size(-2);
  p.K = A.size(-1);
  p.N = B.size(-1);
  p.A = make_operand(A, out_batch);
  p.B = make_operand(B, out_batch);
  p.C = C.data<float>();
  p.ldc = p.M == 1 ? std::max<int64_t>(p.N, 1) : C.stride(-2);
  p.accumulate = accumulate;
  p.bias = bias;
  const Shape cst = batch_strides(C, out_batch);
  // Keep batch dims of size > 1 and merge neighbours whose strides nest for all three tensors.
  std::vector<int64_t> sz, sa, sb, sc;
  for (size_t i = 0; i < out_batch.size(); ++i) {
    if (out_batch[i] == 1) continue;
    const int64_t a = p.A.bstride[i], b = p.B.bstride[i], c = cst[i];
    if (!sz.empty() && sa.back() == a * out_batch[i] && sb.back() == b * out_batch[i] &&
        sc.back() == c * out_batch[i]) {
      sz.back() *= out_batch[i];
      sa.back() = a;
      sb.back() = b;
      sc.back() = c;
      continue;
    }
    sz.push_back(out_batch[i]);
    sa.push_back(a);
    sb.push_back(b);
    sc.push_back(c);
  }
  // B shared by the whole batch and A's batch stacked row-major: one big [batch*M, K] product.
  if (sz.size() == 1 && sb[0] == 0 && !p.A.col_major &&
      ((p.M == 1 && sa[0] >= p.K && sc[0] >= p.N) || (p.M > 1 && sa[0] == p.M * p.A.ld && sc[0] == p.M * p.ldc))) {
    if (p.M == 1) {
      p.A.ld = sa[0];
      p.ldc = sc[0];
    }
    p.M *= sz[0];
    p.A.rows = p.M;
    sz.clear();
    sa.clear();
    sb.clear();
    sc.clear();
  }
  p.bshape = sz;
  p.A.bstride = sa;
  p.B.bstride = sb;
  p.cstride = sc;
  return p;
}

// ---------------------------------------------------------------- reference
// Plain loops over the logical views' own strides (no layout analysis, no copies): the oracle.
void matmul_reference_into(const Tensor& A, const Tensor& B, const Tensor& C, const Shape& out_batch, const float* bias,
                           bool accumulate) {
  const int64_t M = A.size(-2), K = A.size(-1), N = B.size(-1);
  const std::vector<int64_t> sa = batch_strides(A, out_batch), sb = batch_strides(B, out_batch),
                             sc = batch_strides(C, out_batch);
  const int64_t cm = C.stride(-2), cn = C.stride(-1);
  const int64_t nbatch = shape_numel(out_batch);
  const int64_t am = A.stride(-2), ak = A.stride(-1), bk = B.stride(-2), bn = B.stride(-1);
  const float* pa = A.data<float>();
  const float* pb = B.data<float>();
  float* pc = C.data<float>();
  const int64_t nd = static_cast<int64_t>(out_batch.size());
  // Small products stay on one thread (a parallel region would cost more than the work).
#pragma omp parallel for schedule(static) if (nbatch * M * N * K > (int64_t{1} << 15))
  for (int64_t bm = 0; bm < nbatch * M; ++bm) {
    const int64_t bi = bm / M, m = bm % M;
    int64_t oa = 0, ob = 0, oc = 0, rem = bi;
    for (int64_t d = nd - 1; d >= 0; --d) {
      const int64_t idx = rem % out_batch[d];
      rem /= out_batch[d];
      oa += idx * sa[d];
      ob += idx * sb[d];
      oc += idx * sc[d];
    }
    const float* arow = pa + oa + m * am;
    float* crow = pc + oc + m * cm;
    for (int64_t n = 0; n < N; ++n) {
      double acc = bias ? static_cast<double>(bias[n]) : 0.0;
      if (accumulate) acc += crow[n * cn];
      const float* bcol = pb + ob + n * bn;
      for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(arow[k * ak]) * static_cast<double>(bcol[k * bk]);
      crow[n * cn] = static_cast<float>(acc);
    }
  }
}

// ---------------------------------------------------------------- OpenBLAS
// OpenBLAS (the pthread build) keeps its own thread pool; it follows omp_get_max_threads() like oneDNN does.
void sync_openblas_threads() {
  static std::atomic<int> current{-1};
  const int n = omp_get_max_threads();
  if (current.exchange(n) != n) openblas_set_num_threads(n);
}

void run_openblas(const Problem& p) {
  sync_openblas_threads();
  const int64_t nbatch = shape_numel(p.bshape);
  const int64_t nd = static_cast<int64_t>(p.bshape.size());
  const CBLAS_TRANSPOSE ta = p.A.col_major ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = p.B.col_major ? CblasTrans : CblasNoTrans;
  for (int64_t bi = 0; bi < nbatch; ++bi) {
    int64_t oa = 0, ob = 0, oc = 0, rem = bi;
    for (int64_t d = nd - 1; d >= 0; --d) {
      const int64_t idx = rem % p.bshape[d];
      rem /= p.bshape[d];
      oa += idx * p.A.bstride[d];
      ob += idx * p.B.bstride[d];
      oc += idx * p.cstride[d];
    }
    float* c = p.C + oc;
    float beta = p.accumulate ? 1.0f : 0.0f;
    if (p.bias) {
      if (p.accumulate) {
        for (int64_t m = 0; m < p.M; ++m)
          for (int64_t n = 0; n < p.N; ++n) c[m * p.ldc + n] += p.bias[n];
      } else {
        for (int64_t m = 0; m < p.M; ++m) std::memcpy(c + m * p.ldc, p.bias, sizeof(float) * p.N);
      }
      beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(p.M), static_cast<blasint>(p.N), static_cast<blasint>(p.K),
                1.0f, p.A.ptr + oa, static_cast<blasint>(p.A.ld), p.B.ptr + ob, static_cast<blasint>(p.B.ld), beta, c,
                static_cast<blasint>(p.ldc));
  }
}

// ---------------------------------------------------------------- oneDNN
using dnnl::memory;

struct MatmulPrim {
  dnnl::matmul prim;
  std::string impl;
  bool fast = false;  // false for oneDNN's reference implementation: the OpenBLAS loop is used instead
  memory::desc a_md, b_md, c_md, bias_md;
};

// dims/strides of one operand as a oneDNN descriptor over [batch..., rows, cols].
void operand_md(const Operand& o, const std::vector<int64_t>& bshape, memory::dims& dims, memory::dims& strides) {
  const size_t nb = bshape.size();
  dims.assign(nb + 2, 1);
  strides.assign(nb + 2, 1);
  dims[nb] = o.rows;
  dims[nb + 1] = o.cols;
  strides[nb] = o.col_major ? 1 : o.ld;
  strides[nb + 1] = o.col_major ? o.ld : 1;
  int64_t span = o.col_major ? o.ld * o.cols : o.ld * o.rows;  // stride given to broadcast (size-1) dims
  for (size_t i = nb; i-- > 0;) {
    if (o.bstride[i] == 0) {
      dims[i] = 1;
      strides[i] = span;
    } else {
      dims[i] = bshape[i];
      strides[i] = o.bstride[i];
      span = o.bstride[i] * bshape[i];
    }
  }
}

// bf16: operands A and B as bfloat16 (same strides), C and bias float32, float32 accumulation.
std::shared_ptr<MatmulPrim> onednn_prim(const Problem& p, bool bf16 = false) {
  const memory::data_type in_type = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  memory::dims ad, as, bd, bs;
  operand_md(p.A, p.bshape, ad, as);
  operand_md(p.B, p.bshape, bd, bs);
  const size_t nb = p.bshape.size();
  memory::dims cd(p.bshape.begin(), p.bshape.end()), cs(p.cstride.begin(), p.cstride.end());
  cd.push_back(p.M);
  cd.push_back(p.N);
  cs.push_back(p.ldc);
  cs.push_back(1);
  dnnl_ctx::Key key("matmul");
  key << (bf16 ? "bf16" : "f32") << dnnl_ctx::max_threads() << ad << as << bd << bs << cd << cs << (p.bias ? "bias" : "nobias")
      << (p.accumulate ? "acc" : "set");
  return dnnl_ctx::cached<MatmulPrim>(key, [&] {
    auto r = std::make_shared<MatmulPrim>();
    r->a_md = memory::desc(ad, in_type, as);
    r->b_md = memory::desc(bd, in_type, bs);
    r->c_md = memory::desc(cd, memory::data_type::f32, cs);
    dnnl::matmul::desc d = [&] {
      if (!p.bias) return dnnl::matmul::desc(r->a_md, r->b_md, r->c_md);
      memory::dims bias_d(nb + 2, 1);
      bias_d[nb + 1] = p.N;
      memory::dims bias_s(nb + 2, p.N);
      bias_s[nb + 1] = 1;
      r->bias_md = memory::desc(bias_d, memory::data_type::f32, bias_s);
      return dnnl::matmul::desc(r->a_md, r->b_md, r->bias_md, r->c_md);
    }();
    try {
      dnnl::primitive_attr attr;
      if (p.accumulate) {
        dnnl::post_ops ops;
        ops.append_sum(1.0f);
        attr.set_post_ops(ops);
      }
      dnnl::matmul::primitive_desc pd(d, attr, dnnl_ctx::engine());
      r->impl = pd.impl_info_str();
      r->fast = r->impl.rfind("ref", 0) != 0;
      if (r->fast || bf16) r->prim = dnnl::matmul(pd);  // bf16 has no other backend: run what oneDNN has
    } catch (const dnnl::error& e) {
      SONAR_CHECK(!bf16, "matmul: oneDNN has no bf16 matmul for M=", p.M, " N=", p.N, " K=", p.K, " (", e.what(), ")");
      r->impl = std::string("unsupported: ") + e.what();
      r->fast = false;
    }
    return r;
  });
}

// 2-D products (including batches folded into rows, as in Linear) go through oneDNN's jit sgemm, batched ones
// through the cached brgemm matmul primitive. Measured per core (docs/performance.md): the 2.6 brgemm kernel
// repacks a row-major right operand for every block of rows and drops to 75 GFLOP/s when that operand is
// [768, 3072] (BEATs' MLP backward), where sgemm runs at 180; on the transposed-weight forward products sgemm
// is 4-13% faster too, bias included (written first, then accumulated into with beta = 1).
bool prefer_sgemm(const Problem& p) { return p.bshape.empty(); }

// With several threads, a large product is split into one block of output columns per thread, each block a
// single-threaded sgemm over the whole K. Every output element is then summed exactly as sgemm sums it alone
// (the results were bit-identical on every BEATs shape), and the split avoids sgemm's own 2-thread partition,
// which is slow when K is long and M short: BEATs' fc2 forward (496 x 3072 -> 768) ran at 283 GFLOP/s with
// it and 369 with the split on 2 cores of an AMD EPYC Zen 5; the other wide shapes gained 2-8%
// (docs/performance.md). Small products, and calls already inside a parallel region, run sgemm as is.
constexpr int64_t kSplitMinWork = int64_t{1} << 24;  // multiply-adds
constexpr int64_t kSplitMinCols = 64;                // output columns per thread at least

void run_dnnl_sgemm(const Problem& p) {
  float beta = p.accumulate ? 1.0f : 0.0f;
  if (p.bias) {
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t n = 0; n < p.N; ++n) p.C[m * p.ldc + n] = (p.accumulate ? p.C[m * p.ldc + n] : 0.0f) + p.bias[n];
    beta = 1.0f;
  }
  // Output columns [n0, n0 + n): B's column n0 is n0 floats into a row-major [K x N], n0 rows into a
  // column-major one (a transposed [N x K]).
  auto columns = [&](int64_t n0, int64_t n) {
    const float* b = p.B.col_major ? p.B.ptr + n0 * p.B.ld : p.B.ptr + n0;
    return dnnl_sgemm(p.A.col_major ? 'T' : 'N', p.B.col_major ? 'T' : 'N', p.M, n, p.K, 1.0f, p.A.ptr, p.A.ld, b,
                      p.B.ld, beta, p.C + n0, p.ldc);
  };
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const int64_t blocks = std::min<int64_t>(threads, p.N / kSplitMinCols);
  std::atomic<int> status{dnnl_success};
  // Only where the output is wider than tall: for a tall one (the weight gradient [3072, 768] of fc1) sgemm's
  // own split over rows was 15% faster than columns.
  if (blocks < 2 || p.M >= p.N || p.M * p.N * p.K < kSplitMinWork) {
    status = columns(0, p.N);
  } else {
    const int64_t per = ((p.N + blocks - 1) / blocks + 15) & ~int64_t{15};  // a multiple of 16 columns
#pragma omp parallel for num_threads(static_cast<int>(blocks)) schedule(static, 1)
    for (int64_t i = 0; i < blocks; ++i) {
      const int64_t n0 = std::min(p.N, i * per), n = std::min(p.N, n0 + per) - n0;
      if (n <= 0) continue;
      const dnnl_status_t st = columns(n0, n);
      if (st != dnnl_success) status = st;
    }
  }
  SONAR_CHECK(status == dnnl_success, "matmul: dnnl_sgemm failed (status ", status.load(), ") for M=", p.M,
              " N=", p.N, " K=", p.K);
}

// Elements from an operand's first element to its last (inclusive), through its strides.
int64_t operand_span(const Operand& o, const std::vector<int64_t>& bshape) {
  int64_t last = o.col_major ? (o.rows - 1) + (o.cols - 1) * o.ld : (o.rows - 1) * o.ld + (o.cols - 1);
  for (size_t i = 0; i < bshape.size(); ++i) last += (bshape[i] - 1) * o.bstride[i];
  return last + 1;
}

// A bf16 x bf16 -> float32 matmul primitive for the given descriptors (C = A B, or C += A B when accumulate);
// `what` names the shape in the error when oneDNN has none.
std::shared_ptr<MatmulPrim> make_bf16_prim(const memory::desc& a, const memory::desc& b, const memory::desc& c,
                                           bool accumulate, const std::string& what) {
  auto r = std::make_shared<MatmulPrim>();
  r->a_md = a;
  r->b_md = b;
  r->c_md = c;
  dnnl::primitive_attr attr;
  if (accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  try {
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, dnnl_ctx::engine());
    r->impl = pd.impl_info_str();
    r->prim = dnnl::matmul(pd);
    r->fast = true;
  } catch (const dnnl::error& e) {
    SONAR_FAIL("matmul: oneDNN has no bf16 matmul for ", what, " (", e.what(), ")");
  }
  return r;
}

// A 2-D bf16 product whose M, N, K and leading dimensions are given at execution (oneDNN's runtime dims):
// one primitive per layout (transposes, accumulate) serves every shape. oneDNN builds it in ~0.2 ms where a
// fixed-shape brgemm primitive takes 2-15 ms of JIT, so shapes seen only once or twice (masking changes the
// number of visible patches every step) use it; it runs at ~80% of the fixed-shape kernel's rate.
std::shared_ptr<MatmulPrim> bf16_runtime_prim(bool a_col, bool b_col, bool accumulate) {
  constexpr memory::dim R = DNNL_RUNTIME_DIM_VAL;
  dnnl_ctx::Key key("matmul_bf16_runtime");
  key << dnnl_ctx::max_threads() << (a_col ? "a_col" : "a_row") << (b_col ? "b_col" : "b_row")
      << (accumulate ? "acc" : "set");
  return dnnl_ctx::cached<MatmulPrim>(key, [&] {
    const memory::dims col{1, R}, row{R, 1};
    return make_bf16_prim(memory::desc({R, R}, memory::data_type::bf16, a_col ? col : row),
                          memory::desc({R, R}, memory::data_type::bf16, b_col ? col : row),
                          memory::desc({R, R}, memory::data_type::f32, row), accumulate, "runtime shapes");
  });
}

// Fixed-shape bf16 primitives are built for a 2-D shape from its second call on (shapes that recur every step
// or every clip); its first call runs on the runtime-shape primitive.
constexpr int kBf16FixedShapeAfterCalls = 1;

bool bf16_use_fixed_shape(const Problem& p) {
  if (!p.bshape.empty()) return true;  // batched products: always the fixed-shape primitive
  static std::mutex mu;
  static std::unordered_map<std::string, int> calls;
  dnnl_ctx::Key key("bf16_shape");
  key << p.M << p.N << p.K << p.A.ld << p.B.ld << p.ldc << (p.A.col_major ? 1 : 0) << (p.B.col_major ? 1 : 0)
      << (p.bias ? 1 : 0) << (p.accumulate ? 1 : 0) << dnnl_ctx::max_threads();
  std::lock_guard<std::mutex> lock(mu);
  return ++calls[key.str()] > kBf16FixedShapeAfterCalls;
}

// bf16 products (tensor/precision.h): each operand's memory span is converted to bfloat16 with the same
// strides (a registered weight comes from the cache, converted once), then a cached oneDNN matmul primitive
// with bf16 sources and float32 accumulation, bias and output (fixed-shape, or runtime-shape for a 2-D
// shape's first call).
void run_bf16(const Problem& p) {
  const Tensor a16 = bf16_detail::bf16_span(p.A.keep, p.A.ptr, operand_span(p.A, p.bshape));
  const Tensor b16 = bf16_detail::bf16_span(p.B.keep, p.B.ptr, operand_span(p.B, p.bshape));
  const dnnl::engine& eng = dnnl_ctx::engine();
  dnnl::stream& s = dnnl_ctx::stream();
  if (!bf16_use_fixed_shape(p)) {
    bool accumulate = p.accumulate;
    if (p.bias) {  // the runtime-shape primitive takes no bias: write it first, then accumulate onto it
      for (int64_t m = 0; m < p.M; ++m)
        for (int64_t n = 0; n < p.N; ++n) p.C[m * p.ldc + n] = (p.accumulate ? p.C[m * p.ldc + n] : 0.0f) + p.bias[n];
      accumulate = true;
    }
    std::shared_ptr<MatmulPrim> mp = bf16_runtime_prim(p.A.col_major, p.B.col_major, accumulate);
    auto md = [](int64_t rows, int64_t cols, bool col, int64_t ld, memory::data_type t) {
      return memory::desc({rows, cols}, t, col ? memory::dims{1, ld} : memory::dims{ld, 1});
    };
    memory am(md(p.M, p.K, p.A.col_major, p.A.ld, memory::data_type::bf16), eng, a16.bytes());
    memory bm(md(p.K, p.N, p.B.col_major, p.B.ld, memory::data_type::bf16), eng, b16.bytes());
    memory cm(md(p.M, p.N, false, p.ldc, memory::data_type::f32), eng, p.C);
    mp->prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    s.wait();
    return;
  }
  std::shared_ptr<MatmulPrim> mp = onednn_prim(p, true);
  memory am(mp->a_md, eng, a16.bytes());
  memory bm(mp->b_md, eng, b16.bytes());
  memory cm(mp->c_md, eng, p.C);
  if (p.bias) {
    memory biasm(mp->bias_md, eng, const_cast<float*>(p.bias));
    mp->prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_BIAS, biasm}, {DNNL_ARG_DST, cm}});
  } else {
    mp->prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  }
  s.wait();
}

}  // namespace

void matmul_bf16_raw(const uint16_t* A, int64_t lda, bool trans_a, const uint16_t* B, int64_t ldb, bool trans_b,
                     float* C, int64_t ldc, int64_t M, int64_t N, int64_t K, bool accumulate) {
  SONAR_CHECK(M > 0 && N > 0 && K > 0, "matmul_bf16_raw: empty product M=", M, " N=", N, " K=", K);
  const memory::dims as = trans_a ? memory::dims{1, lda} : memory::dims{lda, 1};
  const memory::dims bs = trans_b ? memory::dims{1, ldb} : memory::dims{ldb, 1};
  dnnl_ctx::Key key("matmul_bf16_raw");
  key << dnnl_ctx::max_threads() << M << N << K << as << bs << ldc << (accumulate ? "acc" : "set");
  std::shared_ptr<MatmulPrim> mp = dnnl_ctx::cached<MatmulPrim>(key, [&] {
    return make_bf16_prim(memory::desc({M, K}, memory::data_type::bf16, as),
                          memory::desc({K, N}, memory::data_type::bf16, bs),
                          memory::desc({M, N}, memory::data_type::f32, memory::dims{ldc, 1}), accumulate,
                          "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
  });
  const dnnl::engine& eng = dnnl_ctx::engine();
  memory am(mp->a_md, eng, const_cast<uint16_t*>(A));
  memory bm(mp->b_md, eng, const_cast<uint16_t*>(B));
  memory cm(mp->c_md, eng, C);
  dnnl::stream& s = dnnl_ctx::stream();
  mp->prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  s.wait();
}

namespace {

void run_onednn(const Problem& p) {
  if (matmul_precision() == Precision::BF16) {
    run_bf16(p);
    return;
  }
  if (prefer_sgemm(p)) {
    run_dnnl_sgemm(p);
    return;
  }
  std::shared_ptr<MatmulPrim> mp = onednn_prim(p);
  if (!mp->fast) {
    run_openblas(p);
    return;
  }
  const dnnl::engine& eng = dnnl_ctx::engine();
  memory am(mp->a_md, eng, const_cast<float*>(p.A.ptr));
  memory bm(mp->b_md, eng, const_cast<float*>(p.B.ptr));
  memory cm(mp->c_md, eng, p.C);
  dnnl::stream& s = dnnl_ctx::stream();
  if (p.bias) {
    memory biasm(mp->bias_md, eng, const_cast<float*>(p.bias));
    mp->prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_BIAS, biasm}, {DNNL_ARG_DST, cm}});
  } else {
    mp->prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  }
  s.wait();
}

// Writes (or adds, when accumulate) the contiguous `src` into `dst` (same shape, any strides).
void store(const Tensor& dst, const Tensor& src, bool accumulate) {
  const float* ps = src.data<float>();
  float* pd = dst.data<float>();
  for_each_offset(dst.shape(), dst.strides(),
                  [&](int64_t i, int64_t off) { pd[off] = accumulate ? pd[off] + ps[i] : ps[i]; });
}

// Shared driver for matmul, matmul_into and linear. With `out` undefined a fresh contiguous result is
// returned; otherwise the product is written (or added) through out's strides and out is returned.
Tensor matmul_impl(const Tensor& a, const Tensor& b, bool ta, bool tb, const Tensor& bias, MatmulBackend backend,
                   const Tensor& out = Tensor(), bool accumulate = false) {
  Tensor A, B;
  logical_views(a, b, ta, tb, A, B);
  const Shape out_batch = broadcast_batch(A, B, a, b, ta, tb);
  Shape out_shape = out_batch;
  out_shape.push_back(A.size(-2));
  out_shape.push_back(B.size(-1));
  Tensor C;
  if (out.defined()) {
    check_operand(out, "matmul_into", "out");
    SONAR_CHECK(out.shape() == out_shape, "matmul_into: out ", shape_str(out.shape()), " should be ",
                shape_str(out_shape), " for a ", shape_str(a.shape()), (ta ? " (transposed)" : ""), " and b ",
                shape_str(b.shape()), (tb ? " (transposed)" : ""));
    for (int64_t d = 0; d < out.dim(); ++d)
      SONAR_CHECK(out.size(d) <= 1 || out.stride(d) != 0, "matmul_into: out ", shape_str(out.shape()),
                  " is broadcast (stride 0) along dim ", d, "; its elements would overlap");
    if (!dense_rows(out)) {  // no backend writes such rows: compute, then store through the strides
      Tensor tmp = matmul_impl(a, b, ta, tb, bias, backend);
      store(out, tmp, accumulate);
      return out;
    }
    C = out;
  } else {
    C = Tensor::empty(out_shape, DType::Float32);
    accumulate = false;
  }
  const float* bias_ptr = nullptr;
  Tensor bias_c;
  if (bias.defined()) {
    check_operand(bias, "linear", "bias");
    SONAR_CHECK(bias.dim() == 1 && bias.size(0) == B.size(-1), "linear: bias ", shape_str(bias.shape()),
                " does not match ", B.size(-1), " output features");
    bias_c = bias.contiguous();
    bias_ptr = bias_c.data<float>();
  }
  if (C.numel() == 0) return C;
  if (A.size(-1) == 0) {  // empty inner dim: the product is 0 (plus bias)
    const int64_t N = B.size(-1);
    Tensor tmp = Tensor::empty(out_shape, DType::Float32);
    float* t = tmp.data<float>();
    for (int64_t i = 0; i < tmp.numel(); ++i) t[i] = bias_ptr ? bias_ptr[i % N] : 0.0f;
    store(C, tmp, accumulate);
    return C;
  }
  profile::count_flops(2.0 * static_cast<double>(C.numel()) * static_cast<double>(A.size(-1)));
  switch (resolve(backend)) {
    case MatmulBackend::Reference:
      matmul_reference_into(A, B, C, out_batch, bias_ptr, accumulate);
      break;
    case MatmulBackend::OpenBLAS:
      run_openblas(analyse(A, B, out_batch, C, bias_ptr, accumulate));
      break;
    default:
      run_onednn(analyse(A, B, out_batch, C, bias_ptr, accumulate));
      break;
  }
  return C;
}

void check_linear(const Tensor& x, const Tensor& weight) {
  check_operand(x, "linear", "x");
  check_operand(weight, "linear", "weight");
  SONAR_CHECK(weight.dim() == 2, "linear: weight must be [out, in], got ", shape_str(weight.shape()));
  SONAR_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "linear: x ", shape_str(x.shape()), " has ",
              (x.dim() >= 1 ? x.size(-1) : 0), " input features but weight ", shape_str(weight.shape()), " expects ",
              weight.size(1));
}

}  // namespace

void set_default_matmul_backend(MatmulBackend b) { g_default_backend.store(b); }
int64_t matmul_operand_copies() { return g_operand_copies.load(std::memory_order_relaxed); }
MatmulBackend default_matmul_backend() { return g_default_backend.load(); }

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, MatmulBackend backend) {
  return matmul_impl(a, b, trans_a, trans_b, Tensor(), backend);
}

void matmul_into(const Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, bool accumulate,
                 MatmulBackend backend) {
  SONAR_CHECK(out.defined(), "matmul_into: out is undefined");
  matmul_impl(a, b, trans_a, trans_b, Tensor(), backend, out, accumulate);
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, MatmulBackend backend) {
  check_linear(x, weight);
  if (x.dim() == 1) {
    Tensor y = matmul_impl(x.unsqueeze(0), weight, false, true, bias, backend);
    return y.view({weight.size(0)});
  }
  return matmul_impl(x, weight, false, true, bias, backend);
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  return linear(x, weight, bias, MatmulBackend::Auto);
}

LinearGrads linear_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool need_bias,
                            MatmulBackend backend) {
  check_linear(x, weight);
  check_operand(grad_y, "linear_backward", "grad_y");
  Shape expect = x.shape();
  expect.back() = weight.size(0);
  SONAR_CHECK(grad_y.shape() == expect, "linear_backward: grad_y ", shape_str(grad_y.shape()), " should be ",
              shape_str(expect), " for x ", shape_str(x.shape()), " and weight ", shape_str(weight.shape()));
  const int64_t out = weight.size(0), in = weight.size(1);
  LinearGrads g;
  // Rows of all leading dims: [R, out] and [R, in] (views when the layout allows, else copies).
  Tensor gy2 = grad_y.reshape({-1, out});
  Tensor x2 = x.reshape({-1, in});
  {
    // bf16: dy is an operand of both products; converted once for the two (nothing in float32).
    Bf16WeightCache dy_once({gy2});
    g.dx = matmul(gy2, weight, false, false, backend).view(x.shape());
    g.dweight = matmul(gy2, x2, true, false, backend);
  }
  if (need_bias) {
    g.dbias = Tensor::empty({out}, DType::Float32);
    Tensor gyc = gy2.contiguous();
    const float* pg = gyc.data<float>();
    float* pb = g.dbias.data<float>();
    const int64_t R = gyc.size(0);
    // Column sums in double, rows in order (each column is summed exactly as a plain loop over r would), but
    // a block of columns at a time so that the loop over a row vectorises and reads memory in order: walking
    // one column down the rows was scalar and strided, 3 ms per fc1 call of BEATs-base (docs/performance.md).
    constexpr int64_t kColumns = 256;
#pragma omp parallel for schedule(static) if (R * out > (int64_t{1} << 15))
    for (int64_t o0 = 0; o0 < out; o0 += kColumns) {
      const int64_t n = std::min(kColumns, out - o0);
      double acc[kColumns] = {};
      for (int64_t r = 0; r < R; ++r) {
        const float* row = pg + r * out + o0;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) acc[j] += row[j];
      }
      for (int64_t j = 0; j < n; ++j) pb[o0 + j] = static_cast<float>(acc[j]);
    }
  }
  return g;
}

std::string matmul_onednn_impl(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  Tensor A, B;
  logical_views(a, b, trans_a, trans_b, A, B);
  const Shape out_batch = broadcast_batch(A, B, a, b, trans_a, trans_b);
  Shape out_shape = out_batch;
  out_shape.push_back(A.size(-2));
  out_shape.push_back(B.size(-1));
  Tensor C = Tensor::empty(out_shape, DType::Float32);
  if (C.numel() == 0 || A.size(-1) == 0) return "none (empty)";
  const Problem p = analyse(A, B, out_batch, C, nullptr, false);
  if (matmul_precision() == Precision::BF16) return "bf16 " + onednn_prim(p, true)->impl;
  if (prefer_sgemm(p)) return "sgemm:jit (dnnl_sgemm)";
  std::shared_ptr<MatmulPrim> mp = onednn_prim(p);
  return mp->fast ? mp->impl : "openblas (oneDNN offers " + mp->impl + ")";
}

}  // namespace sonar
