// Indexing and shape-assembling kernels: index_select / index_add, gather / scatter_add, embedding,
// one_hot, cat / stack / split / chunk, L2 normalisation (with backward), the backward of weight
// normalisation, and top-k.
// Indices are int64 and validated (in a serial pass, before any parallel loop) with messages naming the
// offending value, the dim and its size. Copy kernels work on any dtype by moving elements as raw words.
// Not here: reductions and softmax (tensor/reduce.h), elementwise math (tensor/elementwise.h).
#include "tensor/index.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include <omp.h>

#include "tensor/split3.h"

namespace sonar {

namespace {

constexpr int64_t kParallelMin = 1 << 14;  // elements below which a kernel stays single-threaded

using detail::Split3;
using detail::split3;

void check_index_dtype(const Tensor& index, const char* op) {
  SONAR_CHECK(index.defined(), op, ": index tensor is undefined");
  SONAR_CHECK(index.dtype() == DType::Int64, op, ": index must be an int64 tensor, got ", dtype_name(index.dtype()),
              " ", shape_str(index.shape()));
}

// Throws unless every value of the contiguous int64 array lies in [0, size).
void check_index_range(const int64_t* idx, int64_t count, int64_t size, int64_t dim, const char* op) {
  for (int64_t i = 0; i < count; ++i)
    SONAR_CHECK(idx[i] >= 0 && idx[i] < size, op, ": index ", idx[i], " out of range for dim ", dim, " of size ",
                size);
}

// Calls f(T{}) with T an unsigned word type of the given element size (elements are moved, not converted).
template <class F>
void with_word_type(size_t esize, F&& f) {
  switch (esize) {
    case 1: f(uint8_t{}); break;
    case 4: f(uint32_t{}); break;
    case 8: f(uint64_t{}); break;
    default: SONAR_FAIL("index: unsupported element size ", esize);
  }
}

Tensor index_select_impl(const Tensor& a, int64_t dim, const Tensor& index, const char* op) {
  SONAR_CHECK(a.defined(), op, ": input tensor is undefined");
  check_index_dtype(index, op);
  SONAR_CHECK(index.dim() <= 1, op, ": index must be 0-d or 1-d, got ", shape_str(index.shape()));
  SONAR_CHECK(a.dim() >= 1, op, ": input must have at least one dim, got a scalar");
  const int64_t d = wrap_dim(dim, a.dim(), op);
  Tensor ic = index.contiguous();
  const int64_t k = ic.numel();
  const int64_t* idx = ic.data<int64_t>();
  check_index_range(idx, k, a.size(d), d, op);
  Tensor x = a.contiguous();
  Shape os = a.shape();
  os[d] = k;
  Tensor out = Tensor::empty(os, a.dtype());
  if (out.numel() == 0) return out;
  const Split3 sp = split3(a.shape(), d);
  with_word_type(dtype_size(a.dtype()), [&](auto w) {
    using T = decltype(w);
    const T* src = static_cast<const T*>(x.raw_data());
    T* dst = static_cast<T*>(out.raw_data());
    const int64_t inner = sp.inner, n = sp.n;
#pragma omp parallel for schedule(static) if (out.numel() > kParallelMin)
    for (int64_t t = 0; t < sp.outer * k; ++t) {
      const int64_t o = t / k, j = t % k;
      const T* s = src + (o * n + idx[j]) * inner;
      T* q = dst + t * inner;
      if (inner == 1) *q = *s;
      else std::memcpy(q, s, static_cast<size_t>(inner) * sizeof(T));
    }
  });
  return out;
}

}  // namespace

Tensor index_select(const Tensor& a, int64_t dim, const Tensor& index) {
  return index_select_impl(a, dim, index, "index_select");
}

Tensor index_add(const Shape& shape, int64_t dim, const Tensor& index, const Tensor& grad) {
  const char* op = "index_add";
  check_index_dtype(index, op);
  SONAR_CHECK(index.dim() <= 1, op, ": index must be 0-d or 1-d, got ", shape_str(index.shape()));
  grad.check_dtype(DType::Float32, op);
  SONAR_CHECK(!shape.empty(), op, ": target shape must have at least one dim");
  const int64_t d = wrap_dim(dim, static_cast<int64_t>(shape.size()), op);
  Tensor ic = index.contiguous();
  const int64_t k = ic.numel();
  Shape gs = shape;
  gs[d] = k;
  SONAR_CHECK(grad.shape() == gs, op, ": grad has shape ", shape_str(grad.shape()), ", expected ", shape_str(gs),
              " (target ", shape_str(shape), " with dim ", d, " of size ", k, ")");
  const int64_t* idx = ic.data<int64_t>();
  check_index_range(idx, k, shape[d], d, op);
  Tensor out = Tensor::empty(shape);
  out.zero_();
  if (grad.numel() == 0) return out;
  Tensor g = grad.contiguous();
  const Split3 sp = split3(shape, d);
  const float* gp = g.data<float>();
  float* op_ = out.data<float>();
  // Parallel over (outer, inner block): the cells a task writes are disjoint from every other task's,
  // and repeated indices within a task are summed in order.
  // Blocks of 64..1024 columns, narrow enough that even one outer slice (the embedding case) gives every
  // thread a few blocks.
  const int64_t want_tasks = 4 * static_cast<int64_t>(omp_get_max_threads());
  const int64_t kBlock = std::clamp<int64_t>((sp.inner + want_tasks - 1) / want_tasks, 64, 1024);
  const int64_t nb = (sp.inner + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (grad.numel() > kParallelMin)
  for (int64_t t = 0; t < sp.outer * nb; ++t) {
    const int64_t o = t / nb, c0 = (t % nb) * kBlock, c1 = std::min(sp.inner, c0 + kBlock);
    for (int64_t j = 0; j < k; ++j) {
      const float* s = gp + (o * k + j) * sp.inner;
      float* q = op_ + (o * sp.n + idx[j]) * sp.inner;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) q[c] += s[c];
    }
  }
  return out;
}

Tensor gather(const Tensor& a, int64_t dim, const Tensor& index) {
  const char* op = "gather";
  SONAR_CHECK(a.defined(), op, ": input tensor is undefined");
  check_index_dtype(index, op);
  SONAR_CHECK(index.dim() == a.dim(), op, ": index ", shape_str(index.shape()), " must have as many dims as input ",
              shape_str(a.shape()));
  const int64_t d = wrap_dim(dim, a.dim(), op);
  for (int64_t i = 0; i < a.dim(); ++i)
    SONAR_CHECK(i == d || index.size(i) <= a.size(i), op, ": index ", shape_str(index.shape()),
                " is larger than input ", shape_str(a.shape()), " in dim ", i);
  Tensor ic = index.contiguous();
  const int64_t* idx = ic.data<int64_t>();
  const int64_t size = a.dim() == 0 ? 1 : a.size(d);
  check_index_range(idx, ic.numel(), size, d, op);
  Tensor out = Tensor::empty(index.shape(), a.dtype());
  if (out.numel() == 0) return out;
  Shape st = a.strides();
  const int64_t dstride = a.dim() == 0 ? 0 : st[d];
  if (a.dim() > 0) st[d] = 0;
  with_word_type(dtype_size(a.dtype()), [&](auto w) {
    using T = decltype(w);
    const T* src = static_cast<const T*>(a.raw_data());
    T* dst = static_cast<T*>(out.raw_data());
    for_each_offset(index.shape(), st, [&](int64_t i, int64_t off) { dst[i] = src[off + idx[i] * dstride]; });
  });
  return out;
}

Tensor scatter_add(const Tensor& a, int64_t dim, const Tensor& index, const Tensor& src) {
  const char* op = "scatter_add";
  a.check_dtype(DType::Float32, op);
  src.check_dtype(DType::Float32, op);
  check_index_dtype(index, op);
  SONAR_CHECK(index.dim() == a.dim() && src.dim() == a.dim(), op, ": input ", shape_str(a.shape()), ", index ",
              shape_str(index.shape()), " and src ", shape_str(src.shape()), " must have the same number of dims");
  const int64_t d = wrap_dim(dim, a.dim(), op);
  for (int64_t i = 0; i < a.dim(); ++i) {
    SONAR_CHECK(index.size(i) <= src.size(i), op, ": index ", shape_str(index.shape()), " is larger than src ",
                shape_str(src.shape()), " in dim ", i);
    SONAR_CHECK(i == d || index.size(i) <= a.size(i), op, ": index ", shape_str(index.shape()),
                " is larger than input ", shape_str(a.shape()), " in dim ", i);
  }
  Tensor ic = index.contiguous();
  const int64_t* idx = ic.data<int64_t>();
  const int64_t size = a.dim() == 0 ? 1 : a.size(d);
  check_index_range(idx, ic.numel(), size, d, op);
  Tensor out = a.clone();
  if (ic.numel() == 0) return out;
  // src restricted to index's extent, made contiguous so that element i of index pairs with element i.
  Tensor s = src;
  for (int64_t i = 0; i < a.dim(); ++i) s = s.narrow(i, 0, index.size(i));
  s = s.contiguous();
  const float* sp = s.data<float>();
  float* o = out.data<float>();
  Shape st = out.strides();
  const int64_t dstride = a.dim() == 0 ? 0 : st[d];
  if (a.dim() > 0) st[d] = 0;
  for_each_offset(index.shape(), st, [&](int64_t i, int64_t off) { o[off + idx[i] * dstride] += sp[i]; });
  return out;
}

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  const char* op = "embedding";
  SONAR_CHECK(weight.defined() && weight.dim() == 2, op, ": weight must be [N, D], got ",
              weight.defined() ? shape_str(weight.shape()) : std::string("undefined"));
  check_index_dtype(indices, op);
  Tensor flat = index_select_impl(weight, 0, indices.reshape({-1}), op);
  Shape os = indices.shape();
  os.push_back(weight.size(1));
  return flat.view(os);
}

Tensor one_hot(const Tensor& indices, int64_t num_classes) {
  const char* op = "one_hot";
  check_index_dtype(indices, op);
  Tensor ic = indices.contiguous();
  const int64_t n = ic.numel();
  const int64_t* idx = ic.data<int64_t>();
  if (num_classes < 0) {  // -1: infer as max + 1, like torch
    SONAR_CHECK(num_classes == -1, op, ": num_classes must be positive or -1, got ", num_classes);
    SONAR_CHECK(n > 0, op, ": cannot infer num_classes from an empty tensor");
    num_classes = *std::max_element(idx, idx + n) + 1;
  }
  for (int64_t i = 0; i < n; ++i)
    SONAR_CHECK(idx[i] >= 0 && idx[i] < num_classes, op, ": class index ", idx[i], " out of range for ",
                num_classes, " classes");
  Shape os = indices.shape();
  os.push_back(num_classes);
  Tensor out = Tensor::empty(os);
  out.zero_();
  float* o = out.data<float>();
  for (int64_t i = 0; i < n; ++i) o[i * num_classes + idx[i]] = 1.0f;
  return out;
}

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  const char* op = "cat";
  SONAR_CHECK(!tensors.empty(), op, ": expected at least one tensor");
  for (size_t i = 0; i < tensors.size(); ++i) SONAR_CHECK(tensors[i].defined(), op, ": tensor ", i, " is undefined");
  const Tensor& t0 = tensors[0];
  SONAR_CHECK(t0.dim() >= 1, op, ": cannot concatenate scalars (use stack)");
  const int64_t d = wrap_dim(dim, t0.dim(), op);
  Shape os = t0.shape();
  os[d] = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    SONAR_CHECK(t.dtype() == t0.dtype(), op, ": tensor ", i, " has dtype ", dtype_name(t.dtype()),
                " but tensor 0 has ", dtype_name(t0.dtype()));
    bool ok = t.dim() == t0.dim();
    for (int64_t j = 0; ok && j < t0.dim(); ++j) ok = j == d || t.size(j) == t0.size(j);
    SONAR_CHECK(ok, op, ": tensor ", i, " has shape ", shape_str(t.shape()), ", incompatible with tensor 0 ",
                shape_str(t0.shape()), " outside dim ", d);
    os[d] += t.size(d);
  }
  Tensor out = Tensor::empty(os, t0.dtype());
  if (out.numel() == 0) return out;
  const Split3 so = split3(os, d);
  const size_t esize = dtype_size(t0.dtype());
  char* dst = static_cast<char*>(out.raw_data());
  int64_t off = 0;
  for (const Tensor& t : tensors) {
    const int64_t n = t.size(d);
    if (n == 0) continue;
    Tensor c = t.contiguous();
    const char* src = static_cast<const char*>(c.raw_data());
    const size_t block = static_cast<size_t>(n * so.inner) * esize;
#pragma omp parallel for schedule(static) if (t.numel() > kParallelMin && so.outer > 1)
    for (int64_t o = 0; o < so.outer; ++o)
      std::memcpy(dst + static_cast<size_t>((o * so.n + off) * so.inner) * esize, src + o * block, block);
    off += n;
  }
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  const char* op = "stack";
  SONAR_CHECK(!tensors.empty(), op, ": expected at least one tensor");
  for (size_t i = 0; i < tensors.size(); ++i) {
    SONAR_CHECK(tensors[i].defined(), op, ": tensor ", i, " is undefined");
    SONAR_CHECK(tensors[i].shape() == tensors[0].shape(), op, ": tensor ", i, " has shape ",
                shape_str(tensors[i].shape()), " but tensor 0 has ", shape_str(tensors[0].shape()));
  }
  const int64_t d = wrap_dim(dim, tensors[0].dim() + 1, op);
  std::vector<Tensor> u;
  u.reserve(tensors.size());
  for (const Tensor& t : tensors) u.push_back(t.unsqueeze(d));
  return cat(u, d);
}

std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int64_t dim) {
  const char* op = "split";
  SONAR_CHECK(a.defined() && a.dim() >= 1, op, ": input must have at least one dim");
  const int64_t d = wrap_dim(dim, a.dim(), op);
  int64_t total = 0;
  for (int64_t s : sizes) {
    SONAR_CHECK(s >= 0, op, ": negative size ", s, " in ", shape_str(sizes));
    total += s;
  }
  SONAR_CHECK(total == a.size(d), op, ": sizes ", shape_str(sizes), " sum to ", total, ", but dim ", d, " of ",
              shape_str(a.shape()), " has size ", a.size(d));
  std::vector<Tensor> out;
  out.reserve(sizes.size());
  int64_t off = 0;
  for (int64_t s : sizes) {
    out.push_back(a.narrow(d, off, s));
    off += s;
  }
  return out;
}

std::vector<Tensor> chunk(const Tensor& a, int64_t chunks, int64_t dim) {
  const char* op = "chunk";
  SONAR_CHECK(chunks > 0, op, ": number of chunks must be positive, got ", chunks);
  SONAR_CHECK(a.defined() && a.dim() >= 1, op, ": input must have at least one dim");
  const int64_t d = wrap_dim(dim, a.dim(), op);
  const int64_t n = a.size(d);
  if (n == 0) return {a};
  const int64_t step = (n + chunks - 1) / chunks;  // torch.chunk: equal chunks, the last may be smaller
  std::vector<Tensor> out;
  for (int64_t off = 0; off < n; off += step) out.push_back(a.narrow(d, off, std::min(step, n - off)));
  return out;
}

// ---- L2 normalisation: y = x / max(||x||, eps) along dim ----

namespace {
// Visits every line along `dim` of a contiguous [outer, n, inner] tensor: f(base, stride) with the
// line's elements at base + j * stride, j < n.
template <class F>
void for_each_line(const Split3& sp, F&& f) {
#pragma omp parallel for schedule(static) if (sp.outer * sp.n * sp.inner > kParallelMin)
  for (int64_t t = 0; t < sp.outer * sp.inner; ++t) {
    const int64_t o = t / sp.inner, c = t % sp.inner;
    f(o * sp.n * sp.inner + c, sp.inner);
  }
}
}  // namespace

Tensor l2_normalize(const Tensor& a, int64_t dim, float eps) {
  const char* op = "l2_normalize";
  a.check_dtype(DType::Float32, op);
  SONAR_CHECK(a.dim() >= 1, op, ": input must have at least one dim, got a scalar");
  const int64_t d = wrap_dim(dim, a.dim(), op);
  Tensor x = a.contiguous();
  Tensor out = Tensor::empty(a.shape());
  if (a.numel() == 0) return out;
  const Split3 sp = split3(a.shape(), d);
  const float* xp = x.data<float>();
  float* yp = out.data<float>();
  for_each_line(sp, [&](int64_t base, int64_t stride) {
    const float* xr = xp + base;
    float* yr = yp + base;
    double ss = 0.0;
    for (int64_t j = 0; j < sp.n; ++j) ss += static_cast<double>(xr[j * stride]) * xr[j * stride];
    const float inv = static_cast<float>(1.0 / std::max(std::sqrt(ss), static_cast<double>(eps)));
    for (int64_t j = 0; j < sp.n; ++j) yr[j * stride] = xr[j * stride] * inv;
  });
  return out;
}

// With n = ||x||: where n >= eps (and n > 0), y = x / n and dx = (g - y * <g, y>) / n; otherwise the
// denominator is the constant eps and dx = g / eps. (At n == eps the gradient flows through the norm, as
// torch's clamp_min does.)
Tensor l2_normalize_backward(const Tensor& grad_y, const Tensor& x, int64_t dim, float eps) {
  const char* op = "l2_normalize_backward";
  x.check_dtype(DType::Float32, op);
  grad_y.check_dtype(DType::Float32, op);
  SONAR_CHECK(grad_y.shape() == x.shape(), op, ": grad shape ", shape_str(grad_y.shape()),
              " differs from input shape ", shape_str(x.shape()));
  SONAR_CHECK(x.dim() >= 1, op, ": input must have at least one dim, got a scalar");
  const int64_t d = wrap_dim(dim, x.dim(), op);
  Tensor xc = x.contiguous(), gc = grad_y.contiguous();
  Tensor dx = Tensor::empty(x.shape());
  if (x.numel() == 0) return dx;
  const Split3 sp = split3(x.shape(), d);
  const float* xp = xc.data<float>();
  const float* gp = gc.data<float>();
  float* dp = dx.data<float>();
  for_each_line(sp, [&](int64_t base, int64_t stride) {
    const float* xr = xp + base;
    const float* gr = gp + base;
    float* dr = dp + base;
    double ss = 0.0, gx = 0.0;
    for (int64_t j = 0; j < sp.n; ++j) {
      const double xv = xr[j * stride];
      ss += xv * xv;
      gx += xv * gr[j * stride];
    }
    const double nrm = std::sqrt(ss);
    if (nrm >= eps && nrm > 0.0) {
      const double inv = 1.0 / nrm;
      const double c = gx * inv * inv * inv;  // <g, x> / n^3
      for (int64_t j = 0; j < sp.n; ++j)
        dr[j * stride] = static_cast<float>(gr[j * stride] * inv - xr[j * stride] * c);
    } else {
      const float inv = 1.0f / eps;
      for (int64_t j = 0; j < sp.n; ++j) dr[j * stride] = gr[j * stride] * inv;
    }
  });
  return dx;
}

// ---- weight normalisation (backward) ----

WeightNormGrads weight_norm_backward(const Tensor& grad_w, const Tensor& v, const Tensor& g, const Tensor& n,
                                     int64_t dim) {
  const char* op = "weight_norm_backward";
  for (const Tensor* t : {&grad_w, &v, &g, &n}) t->check_dtype(DType::Float32, op);
  SONAR_CHECK(v.dim() >= 1, op, ": v must have at least one dim, got a scalar");
  const int64_t d = wrap_dim(dim, v.dim(), op);
  SONAR_CHECK(grad_w.shape() == v.shape(), op, ": grad shape ", shape_str(grad_w.shape()), " differs from v's ",
              shape_str(v.shape()));
  Shape kept(v.dim(), 1);
  kept[d] = v.size(d);
  SONAR_CHECK(g.shape() == kept && n.shape() == kept, op, ": g and the norm must be ", shape_str(kept), " for v ",
              shape_str(v.shape()), " and dim ", d, ", got ", shape_str(g.shape()), " and ", shape_str(n.shape()));
  const Tensor gw = grad_w.contiguous(), vc = v.contiguous(), gc = g.contiguous(), nc = n.contiguous();
  WeightNormGrads r{Tensor::empty(v.shape()), Tensor::empty(g.shape())};
  const detail::Split3 sp = detail::split3(v.shape(), d);
  const int64_t O = sp.outer, N = sp.n, I = sp.inner;
  const float* pg = gw.data<float>();
  const float* pv = vc.data<float>();
  // dot[j] = <dL/dw, v> over the slice j of `dim`: summed per chunk of outer rows (a fixed count, so the
  // order of the sums does not depend on the thread count), the chunks then added in order.
  constexpr int64_t kChunks = 16;
  std::vector<double> part(static_cast<size_t>(kChunks * N), 0.0);
#pragma omp parallel for schedule(static) if (v.numel() > kParallelMin)
  for (int64_t ch = 0; ch < kChunks; ++ch) {
    double* acc = part.data() + ch * N;
    for (int64_t o = O * ch / kChunks; o < O * (ch + 1) / kChunks; ++o) {
      const float* a = pg + o * N * I;
      const float* b = pv + o * N * I;
      if (I == 1) {
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) acc[j] += static_cast<double>(a[j]) * b[j];
      } else {
        for (int64_t j = 0; j < N; ++j) {
          double s = 0.0;
#pragma omp simd reduction(+ : s)
          for (int64_t c = 0; c < I; ++c) s += static_cast<double>(a[j * I + c]) * b[j * I + c];
          acc[j] += s;
        }
      }
    }
  }
  const float* gp = gc.data<float>();
  const float* np = nc.data<float>();
  float* dg = r.dg.data<float>();
  std::vector<float> scale(N), coef(N);
  for (int64_t j = 0; j < N; ++j) {
    double dot = 0.0;
    for (int64_t ch = 0; ch < kChunks; ++ch) dot += part[ch * N + j];
    const double nj = np[j];
    scale[j] = gp[j] / np[j];  // s = g / n in float, as the forward computed it
    dg[j] = static_cast<float>(dot / nj);
    coef[j] = nj > 0.0 ? static_cast<float>(-dot * scale[j] / (nj * nj)) : 0.0f;
  }
  float* dv = r.dv.data<float>();
  const float* ps = scale.data();
  const float* pc = coef.data();
#pragma omp parallel for schedule(static) if (v.numel() > kParallelMin)
  for (int64_t o = 0; o < O; ++o) {
    if (I == 1) {  // dim is the last one (BEATs' positional conv): vectorise along it
      const int64_t base = o * N;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) dv[base + j] = pg[base + j] * ps[j] + pv[base + j] * pc[j];
      continue;
    }
    for (int64_t j = 0; j < N; ++j) {
      const int64_t base = (o * N + j) * I;
      const float s = scale[j], c = coef[j];
#pragma omp simd
      for (int64_t k = 0; k < I; ++k) dv[base + k] = pg[base + k] * s + pv[base + k] * c;
    }
  }
  return r;
}

// ---- top-k ----

TopK topk(const Tensor& a, int64_t k, int64_t dim, bool largest) {
  const char* op = "topk";
  a.check_dtype(DType::Float32, op);
  SONAR_CHECK(a.dim() >= 1, op, ": input must have at least one dim, got a scalar");
  const int64_t d = wrap_dim(dim, a.dim(), op);
  const int64_t n = a.size(d);
  SONAR_CHECK(k >= 0 && k <= n, op, ": k = ", k, " out of range for dim ", d, " of size ", n);
  Tensor x = a.contiguous();
  Shape os = a.shape();
  os[d] = k;
  TopK r{Tensor::empty(os), Tensor::empty(os, DType::Int64)};
  if (r.values.numel() == 0) return r;
  const Split3 sp = split3(a.shape(), d);
  const float* xp = x.data<float>();
  float* vp = r.values.data<float>();
  int64_t* ip = r.indices.data<int64_t>();
#pragma omp parallel if (a.numel() > kParallelMin)
  {
    std::vector<float> vals(static_cast<size_t>(n));
    std::vector<int64_t> order(static_cast<size_t>(n));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < sp.outer * sp.inner; ++t) {
      const int64_t o = t / sp.inner, c = t % sp.inner;
      const float* xr = xp + o * n * sp.inner + c;
      for (int64_t j = 0; j < n; ++j) vals[j] = xr[j * sp.inner];
      std::iota(order.begin(), order.end(), int64_t{0});
      // NaN counts as larger than every number (as in torch); ties keep the lower index first.
      auto before = [&](int64_t i, int64_t j) {
        const float vi = vals[i], vj = vals[j];
        const bool ni = std::isnan(vi), nj = std::isnan(vj);
        if (ni || nj) {
          if (ni && nj) return i < j;
          return largest ? ni : nj;
        }
        if (vi != vj) return largest ? vi > vj : vi < vj;
        return i < j;
      };
      std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
      float* vo = vp + o * k * sp.inner + c;
      int64_t* io = ip + o * k * sp.inner + c;
      for (int64_t j = 0; j < k; ++j) {
        vo[j * sp.inner] = vals[order[j]];
        io[j * sp.inner] = order[j];
      }
    }
  }
  return r;
}

}  // namespace sonar
