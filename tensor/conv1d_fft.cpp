// Stride-1 grouped 1-D convolution by FFT (see conv1d_fft.h). The convolution here is a correlation,
// y[o, t] = sum_i sum_k w[o, i, k] x[i, t + k - P]. Output block j (hop outputs from j * hop) reads the input
// segment s_j[m] = x[j * hop - P + m], m < nf = hop + K - 1, so with the weight row zero-padded to nf the
// circular correlation of length nf is the linear one on that block (no wrap-around):
//   forward  Y_j = sum_i conj(W_i) S_ij          y_j = irfft(Y_j)[0, hop) / nf
//   dW       dW_oi = sum_(n, j) conj(DY_oj) S_ij  dw_oi = irfft(dW_oi)[0, K) / nf
//   dx       DS_ij = sum_o W_oi DY_oj             dx[j * hop - P + m] += irfft(DS_ij)[m] / nf (overlap-add)
// where DY_oj is the spectrum of the output-gradient block zero-padded to nf. Spectra are kept as separate
// real and imaginary planes so the sums over channels are plain vectorised loops over frequencies; FFTW
// transforms in its interleaved format (its split-format plans ran 1.4-1.7x slower here), 16 rows at a time
// through a small per-thread buffer, and the rows are split or joined there. Every sum runs in a fixed order,
// so results do not depend on the number of threads.
#include "tensor/conv1d_fft.h"

#include <fftw3.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "tensor/error.h"

namespace sonar::conv1d_fft {
namespace {

constexpr int64_t kMinLength = 16;      // 64-byte segments: every row offset keeps the buffers' alignment
constexpr int64_t kSpectrumAlign = 16;  // floats; each spectrum starts on a 64-byte boundary
constexpr int64_t kChunk = 16;          // transforms per FFTW call (the rest go one at a time)
constexpr int64_t kMinItems = 8;        // backward work items at least (a group's outputs split if needed)

// A float buffer from fftwf_malloc: aligned as FFTW's SIMD plans expect (a plan made on aligned arrays may
// only run on equally aligned ones; the unaligned variant was 4x slower here).
class Buffer {
 public:
  explicit Buffer(int64_t n) : p_(static_cast<float*>(fftwf_malloc(sizeof(float) * std::max<int64_t>(n, 1)))) {
    SONAR_CHECK(p_ != nullptr, "conv1d (fft): cannot allocate ", n, " floats");
  }
  ~Buffer() { fftwf_free(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  float* get() const { return p_; }

 private:
  float* p_;
};

// The plans for `howmany` transforms of length nf: real rows nf apart, interleaved spectra fs complex apart.
struct PlanPair {
  fftwf_plan r2c = nullptr, c2r = nullptr;
};

// Plans are made once per (nf, fs, howmany) under a lock (FFTW's planner is not thread-safe; running a plan
// on new arrays is) and kept for the life of the process. FFTW_ESTIMATE picks the algorithm by rule, not by
// timing, so every run computes the same bits.
PlanPair plans(int64_t nf, int64_t fs, int64_t howmany) {
  static std::mutex mu;
  static std::map<std::pair<int64_t, int64_t>, std::map<int64_t, PlanPair>> cache;
  std::lock_guard<std::mutex> lock(mu);
  PlanPair& p = cache[{nf, fs}][howmany];
  if (p.r2c != nullptr) return p;
  Buffer real(nf * howmany), cplx(2 * fs * howmany);
  const int n = static_cast<int>(nf), h = static_cast<int>(howmany), d = static_cast<int>(fs);
  auto* c = reinterpret_cast<fftwf_complex*>(cplx.get());
  p.r2c = fftwf_plan_many_dft_r2c(1, &n, h, real.get(), nullptr, 1, n, c, nullptr, 1, d, FFTW_ESTIMATE);
  p.c2r = fftwf_plan_many_dft_c2r(1, &n, h, c, nullptr, 1, d, real.get(), nullptr, 1, n, FFTW_ESTIMATE);
  SONAR_CHECK(p.r2c != nullptr && p.c2r != nullptr, "conv1d (fft): FFTW could not plan ", howmany,
              " transforms of length ", nf);
  return p;
}

// The block structure of one call.
struct Layout {
  int64_t nf = 0;   // segment (transform) length
  int64_t hop = 0;  // outputs per segment, nf - K + 1
  int64_t nb = 0;   // segments per row
  int64_t F = 0;    // frequencies, nf / 2 + 1
  int64_t fs = 0;   // floats between spectra, F rounded up to kSpectrumAlign
  int64_t NB = 0;   // segments per channel over the batch, N * nb
  int64_t Cg = 0, Og = 0;
  PlanPair chunk, single;  // plans for kChunk transforms and for one
};

int64_t pow2_at_least(int64_t n) {
  int64_t p = kMinLength;
  while (p < n) p *= 2;
  return p;
}

// The block structure of a call without the plans (also what flops() counts from).
Layout sizes_of(const Geometry& g) {
  Layout s;
  s.nf = fft_length(g);
  s.hop = s.nf - g.K + 1;
  s.nb = (g.Lo + s.hop - 1) / s.hop;
  s.F = s.nf / 2 + 1;
  s.fs = (s.F + kSpectrumAlign - 1) / kSpectrumAlign * kSpectrumAlign;
  s.NB = g.N * s.nb;
  s.Cg = g.C / g.G;
  s.Og = g.O / g.G;
  return s;
}

Layout layout_of(const Geometry& g) {
  Layout s = sizes_of(g);
  s.chunk = plans(s.nf, s.fs, kChunk);
  s.single = plans(s.nf, s.fs, 1);
  return s;
}

// Segment j of an input row starts at input position j * hop - P; its samples m in [lo, hi) lie inside the
// row [0, L) (the others are the zero padding).
struct SegmentSpan {
  int64_t start, lo, hi;
};
SegmentSpan segment_span(const Geometry& g, const Layout& s, int64_t j) {
  const int64_t start = j * s.hop - g.P;
  const int64_t lo = std::clamp<int64_t>(-start, 0, s.nf), hi = std::clamp<int64_t>(g.L - start, lo, s.nf);
  return {start, lo, hi};
}

// This thread's buffer of kChunk interleaved spectra (grown on demand, kept for the thread's life).
fftwf_complex* chunk_buffer(int64_t fs) {
  thread_local std::unique_ptr<Buffer> buf;
  thread_local int64_t floats = 0;
  if (floats < 2 * fs * kChunk) {
    buf = std::make_unique<Buffer>(2 * fs * kChunk);
    floats = 2 * fs * kChunk;
  }
  return reinterpret_cast<fftwf_complex*>(buf->get());
}

// Runs f(first row, rows, plan pair) over `count` rows in chunks of kChunk (the rest one at a time).
template <class F>
void by_chunks(const Layout& s, int64_t count, F&& f) {
  int64_t r = 0;
  for (; r + kChunk <= count; r += kChunk) f(r, kChunk, s.chunk);
  for (; r < count; ++r) f(r, 1, s.single);
}

// Spectra of `count` real rows (nf apart) into the planes re/im (fs apart), lanes F.. set to zero.
void rfft_rows(const Layout& s, int64_t count, float* real, float* re, float* im) {
  fftwf_complex* c = chunk_buffer(s.fs);
  by_chunks(s, count, [&](int64_t r0, int64_t rows, const PlanPair& p) {
    fftwf_execute_dft_r2c(p.r2c, real + r0 * s.nf, c);
    for (int64_t r = 0; r < rows; ++r) {
      const float* __restrict src = c[r * s.fs];
      float* __restrict dr = re + (r0 + r) * s.fs;
      float* __restrict di = im + (r0 + r) * s.fs;
#pragma omp simd
      for (int64_t f = 0; f < s.F; ++f) {
        dr[f] = src[2 * f];
        di[f] = src[2 * f + 1];
      }
      std::fill(dr + s.F, dr + s.fs, 0.0f);
      std::fill(di + s.F, di + s.fs, 0.0f);
    }
  });
}

// Unnormalised inverse transforms of `count` spectra (planes re/im, fs apart) into real rows (nf apart).
void irfft_rows(const Layout& s, int64_t count, const float* re, const float* im, float* real) {
  fftwf_complex* c = chunk_buffer(s.fs);
  by_chunks(s, count, [&](int64_t r0, int64_t rows, const PlanPair& p) {
    for (int64_t r = 0; r < rows; ++r) {
      float* __restrict dst = c[r * s.fs];
      const float* __restrict sr = re + (r0 + r) * s.fs;
      const float* __restrict si = im + (r0 + r) * s.fs;
#pragma omp simd
      for (int64_t f = 0; f < s.F; ++f) {
        dst[2 * f] = sr[f];
        dst[2 * f + 1] = si[f];
      }
    }
    fftwf_execute_dft_c2r(p.c2r, c, real + r0 * s.nf);  // overwrites the chunk buffer, not the planes
  });
}

// The NB input segments of channel c, seg[(n * nb + j) * nf + m] = x[n, c, j * hop - P + m] (0 outside [0, L)).
void cut_segments(const Geometry& g, const Layout& s, const float* x, int64_t c, float* seg) {
  for (int64_t n = 0; n < g.N; ++n) {
    const float* row = x + (n * g.C + c) * g.L;
    for (int64_t j = 0; j < s.nb; ++j) {
      float* dst = seg + (n * s.nb + j) * s.nf;
      const SegmentSpan sp = segment_span(g, s, j);
      std::fill(dst, dst + sp.lo, 0.0f);
      std::memcpy(dst + sp.lo, row + sp.start + sp.lo, sizeof(float) * static_cast<size_t>(sp.hi - sp.lo));
      std::fill(dst + sp.hi, dst + s.nf, 0.0f);
    }
  }
}

// The NB output-gradient blocks of output o: blk[(n * nb + j) * nf + u] = dy[n, o, j * hop + u] for u < hop
// inside [0, Lo), else 0.
void cut_blocks(const Geometry& g, const Layout& s, const float* dy, int64_t o, float* blk) {
  for (int64_t n = 0; n < g.N; ++n) {
    const float* row = dy + (n * g.O + o) * g.Lo;
    for (int64_t j = 0; j < s.nb; ++j) {
      float* dst = blk + (n * s.nb + j) * s.nf;
      const int64_t len = std::min(s.hop, g.Lo - j * s.hop);
      std::memcpy(dst, row + j * s.hop, sizeof(float) * static_cast<size_t>(len));
      std::fill(dst + len, dst + s.nf, 0.0f);
    }
  }
}

// Spectra of the Cg weight rows of output o (each zero-padded to nf in wpad, whose tail stays zero).
void weight_spectra(const Geometry& g, const Layout& s, const float* w, int64_t o, float* wpad, float* re,
                    float* im) {
  for (int64_t i = 0; i < s.Cg; ++i)
    std::memcpy(wpad + i * s.nf, w + (o * s.Cg + i) * g.K, sizeof(float) * static_cast<size_t>(g.K));
  rfft_rows(s, s.Cg, wpad, re, im);
}

// Sets n floats to zero (buffers whose zero-padded tails are written once and then kept).
void zero(float* p, int64_t n) { std::fill(p, p + n, 0.0f); }

// ---- products of spectra, frequencies vectorised in register blocks of kLanes ----
// Spectra are rows of fs floats (F used, the rest zero), real and imaginary planes apart. The padding lanes
// are zero, so the kernels run over all fs lanes in whole vectors; each sum runs in a fixed order.
constexpr int64_t kLanes = 16;  // one AVX-512 vector of floats (two AVX2 ones)
constexpr int kBlock = 4;       // rows kept in registers at once

struct Planes {
  float* re;
  float* im;
  int64_t fs;
  float* r(int64_t row) const { return re + row * fs; }
  float* i(int64_t row) const { return im + row * fs; }
  Planes at(int64_t row) const { return {re + row * fs, im + row * fs, fs}; }
};

// out[q] = sum over p < n of conj(a[p]) * m[p * p_step + q * q_step], for kQ consecutive q. The forward's
// products (p = input channel, q = segment) and the weight gradient's (p = segment, q = input channel).
template <int kQ>
void conj_product_sum(const Planes& a, int64_t n, const Planes& m, int64_t p_step, int64_t q_step,
                      const Planes& out) {
  for (int64_t f = 0; f < a.fs; f += kLanes) {
    float yr[kQ][kLanes] = {}, yi[kQ][kLanes] = {};
    for (int64_t p = 0; p < n; ++p) {
      const float* __restrict ar = a.r(p) + f;
      const float* __restrict ai = a.i(p) + f;
      for (int q = 0; q < kQ; ++q) {
        const float* __restrict mr = m.r(p * p_step + q * q_step) + f;
        const float* __restrict mi = m.i(p * p_step + q * q_step) + f;
#pragma omp simd
        for (int l = 0; l < kLanes; ++l) {
          yr[q][l] += ar[l] * mr[l] + ai[l] * mi[l];
          yi[q][l] += ar[l] * mi[l] - ai[l] * mr[l];
        }
      }
    }
    for (int q = 0; q < kQ; ++q) {
      std::copy(yr[q], yr[q] + kLanes, out.r(q) + f);
      std::copy(yi[q], yi[q] + kLanes, out.i(q) + f);
    }
  }
}

// Runs kernel<kBlock> over whole blocks of `rows` and kernel<1> over the rest; block(r0, kernel) calls the
// kernel for rows r0.. (a template lambda taking the block size as an integral constant).
template <class F>
void in_blocks(int64_t rows, F&& block) {
  int64_t r = 0;
  for (; r + kBlock <= rows; r += kBlock) block(r, std::integral_constant<int, kBlock>{});
  for (; r < rows; ++r) block(r, std::integral_constant<int, 1>{});
}

// x[i * stride + b] (+)= a[i] * d[b] for i < n, b < nd: the input gradient's products, summed over outputs
// (the caller's loop); `first` writes instead of adding.
void add_products(const Planes& a, int64_t n, const Planes& d, int64_t nd, const Planes& x, int64_t stride,
                  bool first) {
  for (int64_t i = 0; i < n; ++i) {
    const float* __restrict ar = a.r(i);
    const float* __restrict ai = a.i(i);
    for (int64_t b = 0; b < nd; ++b) {
      const float* __restrict dr = d.r(b);
      const float* __restrict di = d.i(b);
      float* __restrict xr = x.r(i * stride + b);
      float* __restrict xi = x.i(i * stride + b);
      if (first) {
#pragma omp simd
        for (int64_t f = 0; f < a.fs; ++f) {
          xr[f] = ar[f] * dr[f] - ai[f] * di[f];
          xi[f] = ar[f] * di[f] + ai[f] * dr[f];
        }
      } else {
#pragma omp simd
        for (int64_t f = 0; f < a.fs; ++f) {
          xr[f] += ar[f] * dr[f] - ai[f] * di[f];
          xi[f] += ar[f] * di[f] + ai[f] * dr[f];
        }
      }
    }
  }
}

// Spectra of every input channel: re/im [C][NB][fs].
void input_spectra(const Geometry& g, const Layout& s, const float* x, float* re, float* im) {
#pragma omp parallel
  {
    Buffer seg(s.NB * s.nf);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < g.C; ++c) {
      cut_segments(g, s, x, c, seg.get());
      rfft_rows(s, s.NB, seg.get(), re + c * s.NB * s.fs, im + c * s.NB * s.fs);
    }
  }
}

}  // namespace

int64_t fft_length(const Geometry& g) { return std::min(pow2_at_least(2 * g.K), pow2_at_least(g.Lo + g.K - 1)); }

double flops(const Geometry& g, bool backward, bool need_dx) {
  const Layout s = sizes_of(g);
  const double per_transform = 2.5 * static_cast<double>(s.nf) * std::log2(static_cast<double>(s.nf));
  const double weights = static_cast<double>(g.O * s.Cg), segs = static_cast<double>(g.C * s.NB),
               blocks = static_cast<double>(g.O * s.NB);
  const double products = 8.0 * static_cast<double>(g.O * s.Cg * s.NB) * static_cast<double>(s.F);
  if (!backward) return per_transform * (segs + weights + blocks) + products;
  return per_transform * (segs + blocks + 2 * weights + (need_dx ? segs : 0.0)) + products * (need_dx ? 2.0 : 1.0);
}

void forward(const Geometry& g, const float* x, const float* w, const float* bias, float* y) {
  const Layout s = layout_of(g);
  Buffer sre(g.C * s.NB * s.fs), sim(g.C * s.NB * s.fs);
  input_spectra(g, s, x, sre.get(), sim.get());
  const Planes S{sre.get(), sim.get(), s.fs};
  const float scale = 1.0f / static_cast<float>(s.nf);
#pragma omp parallel
  {
    Buffer wpad(s.Cg * s.nf), wre(s.Cg * s.fs), wim(s.Cg * s.fs), yre(s.NB * s.fs), yim(s.NB * s.fs),
        yt(s.NB * s.nf);
    zero(wpad.get(), s.Cg * s.nf);
#pragma omp for schedule(static)
    for (int64_t o = 0; o < g.O; ++o) {
      const int64_t c0 = o / s.Og * s.Cg;
      weight_spectra(g, s, w, o, wpad.get(), wre.get(), wim.get());
      // Y_b = sum_i conj(W_i) S_(c0+i),b
      const Planes W{wre.get(), wim.get(), s.fs}, Y{yre.get(), yim.get(), s.fs};
      in_blocks(s.NB, [&](int64_t b, auto kb) {
        conj_product_sum<decltype(kb)::value>(W, s.Cg, S.at(c0 * s.NB + b), s.NB, 1, Y.at(b));
      });
      irfft_rows(s, s.NB, yre.get(), yim.get(), yt.get());
      const float bo = bias ? bias[o] : 0.0f;
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t j = 0; j < s.nb; ++j) {
          const float* src = yt.get() + (n * s.nb + j) * s.nf;
          float* dst = y + (n * g.O + o) * g.Lo + j * s.hop;
          const int64_t len = std::min(s.hop, g.Lo - j * s.hop);
#pragma omp simd
          for (int64_t u = 0; u < len; ++u) dst[u] = src[u] * scale + bo;
        }
    }
  }
}

void backward(const Geometry& g, const float* dy, const float* x, const float* w, float* dx, float* dw) {
  const Layout s = layout_of(g);
  const bool need_dx = dx != nullptr;
  Buffer sre(g.C * s.NB * s.fs), sim(g.C * s.NB * s.fs), dyre(g.O * s.NB * s.fs), dyim(g.O * s.NB * s.fs);
  Buffer xre(need_dx ? g.C * s.NB * s.fs : 0), xim(need_dx ? g.C * s.NB * s.fs : 0);  // DS, the dx spectra
  input_spectra(g, s, x, sre.get(), sim.get());
#pragma omp parallel
  {
    Buffer blk(s.NB * s.nf);
#pragma omp for schedule(static)
    for (int64_t o = 0; o < g.O; ++o) {
      cut_blocks(g, s, dy, o, blk.get());
      rfft_rows(s, s.NB, blk.get(), dyre.get() + o * s.NB * s.fs, dyim.get() + o * s.NB * s.fs);
    }
  }
  const Planes S{sre.get(), sim.get(), s.fs}, DY{dyre.get(), dyim.get(), s.fs}, X{xre.get(), xim.get(), s.fs};
  const float scale = 1.0f / static_cast<float>(s.nf);
  // Work items: a group's outputs in `parts` consecutive ranges (one range when there are kMinItems groups or
  // more; with fewer groups their outputs are split so that the threads share them). An item sums DS over its
  // outputs in order into the group's DS rows (one range) or into its own partial rows, which are then added
  // range by range. The split depends on the problem only, so the results do not depend on the thread count.
  const int64_t parts = std::min(s.Og, (kMinItems + g.G - 1) / g.G);
  const int64_t part_floats = parts > 1 && need_dx ? s.Cg * s.NB * s.fs : 0;
  Buffer pre(g.G * parts * part_floats), pim(g.G * parts * part_floats);
#pragma omp parallel
  {
    Buffer wpad(s.Cg * s.nf), wre(s.Cg * s.fs), wim(s.Cg * s.fs), gre(s.Cg * s.fs), gim(s.Cg * s.fs),
        gt(s.Cg * s.nf);
    zero(wpad.get(), s.Cg * s.nf);
    const Planes G{gre.get(), gim.get(), s.fs};
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < g.G * parts; ++item) {
      const int64_t grp = item / parts, part = item % parts, c0 = grp * s.Cg;
      const int64_t first = s.Og * part / parts, last = s.Og * (part + 1) / parts;
      const Planes XS = parts > 1 ? Planes{pre.get() + item * part_floats, pim.get() + item * part_floats, s.fs}
                                  : X.at(c0 * s.NB);
      for (int64_t oo = first; oo < last; ++oo) {
        const int64_t o = grp * s.Og + oo;
        weight_spectra(g, s, w, o, wpad.get(), wre.get(), wim.get());
        const Planes W{wre.get(), wim.get(), s.fs}, D = DY.at(o * s.NB);
        // dW_oi = sum_b conj(DY_ob) S_(c0+i),b
        in_blocks(s.Cg, [&](int64_t i, auto ki) {
          conj_product_sum<decltype(ki)::value>(D, s.NB, S.at((c0 + i) * s.NB), 1, s.NB, G.at(i));
        });
        // DS_(c0+i),b (+)= W_oi DY_ob, summed over the item's outputs in order (the first writes)
        if (need_dx) add_products(W, s.Cg, D, s.NB, XS, s.NB, oo == first);
        irfft_rows(s, s.Cg, gre.get(), gim.get(), gt.get());
        for (int64_t i = 0; i < s.Cg; ++i) {
          const float* src = gt.get() + i * s.nf;
          float* dst = dw + (o * s.Cg + i) * g.K;
#pragma omp simd
          for (int64_t k = 0; k < g.K; ++k) dst[k] = src[k] * scale;
        }
      }
    }
  }
  if (!need_dx) return;
  if (parts > 1) {  // DS = the items' partial sums, added in range order
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < g.C; ++c) {
      const int64_t grp = c / s.Cg, row = (c % s.Cg) * s.NB * s.fs, n = s.NB * s.fs;
      float* __restrict xr = xre.get() + c * n;
      float* __restrict xi = xim.get() + c * n;
      for (int64_t part = 0; part < parts; ++part) {
        const float* __restrict ar = pre.get() + (grp * parts + part) * part_floats + row;
        const float* __restrict ai = pim.get() + (grp * parts + part) * part_floats + row;
        if (part == 0) {
          std::copy(ar, ar + n, xr);
          std::copy(ai, ai + n, xi);
          continue;
        }
#pragma omp simd
        for (int64_t k = 0; k < n; ++k) {
          xr[k] += ar[k];
          xi[k] += ai[k];
        }
      }
    }
  }
  // dx: each channel's segments back to time and added onto the positions they were cut from.
#pragma omp parallel
  {
    Buffer seg(s.NB * s.nf);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < g.C; ++c) {
      irfft_rows(s, s.NB, xre.get() + c * s.NB * s.fs, xim.get() + c * s.NB * s.fs, seg.get());
      for (int64_t n = 0; n < g.N; ++n) {
        float* row = dx + (n * g.C + c) * g.L;
        zero(row, g.L);
        for (int64_t j = 0; j < s.nb; ++j) {
          const float* src = seg.get() + (n * s.nb + j) * s.nf;
          const SegmentSpan sp = segment_span(g, s, j);
#pragma omp simd
          for (int64_t m = sp.lo; m < sp.hi; ++m) row[sp.start + m] += src[m] * scale;
        }
      }
    }
  }
}

}  // namespace sonar::conv1d_fft
