// Convolutions (see conv.h): 1-D and 2-D, stride, padding and groups, through cached oneDNN forward,
// backward-data and backward-weights primitives, with plain loops beside them as the test oracle.
// The user-facing layouts are NCHW / NCL activations and [O, I/groups, K...] weights; oneDNN may pick blocked
// layouts internally (ConvLayout::Blocked), in which case inputs are reordered in and results reordered out
// with cached reorder primitives. Not here: weight normalisation, the Conv module (nn/), autograd nodes.
#include "tensor/conv.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "tensor/conv1d_fft.h"
#include "tensor/dnnl_context.h"
#include "tensor/profile.h"

namespace sonar {

namespace {

using dnnl::memory;
using Dims = std::vector<int64_t>;

std::atomic<ConvLayout> g_layout{ConvLayout::Blocked};
std::atomic<Conv1dPath> g_conv1d_path{Conv1dPath::Auto};

// Geometry of one convolution with sd spatial dims (1 or 2).
struct Geom {
  const char* op = "conv";
  int sd = 2;
  int64_t N = 0, C = 0, O = 0, G = 1;
  Dims in, k, stride, pad, out;
  Dims pad_r;  // oneDNN's right padding: makes (in + pad + pad_r - k) / stride + 1 == out exactly
};

Geom make_geom(const char* op, int sd, const Tensor& x, const Tensor& w, const Tensor& bias, const Dims& stride,
               const Dims& pad, int64_t groups) {
  Geom g;
  g.op = op;
  g.sd = sd;
  const char* layout = sd == 2 ? "[N, C, H, W]" : "[N, C, L]";
  SONAR_CHECK(x.defined() && w.defined(), op, ": input and weight must be defined");
  SONAR_CHECK(x.dtype() == DType::Float32 && w.dtype() == DType::Float32, op, ": input ", x.str(), " and weight ",
              w.str(), " must be float32");
  SONAR_CHECK(x.dim() == sd + 2, op, ": input must be ", layout, ", got ", shape_str(x.shape()));
  SONAR_CHECK(w.dim() == sd + 2, op, ": weight must be [O, C/groups, ", (sd == 2 ? "KH, KW]" : "K]"), ", got ",
              shape_str(w.shape()));
  SONAR_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  g.N = x.size(0);
  g.C = x.size(1);
  g.O = w.size(0);
  g.G = groups;
  SONAR_CHECK(g.C % groups == 0 && g.O % groups == 0, op, ": groups ", groups, " must divide input channels ", g.C,
              " and output channels ", g.O, " (input ", shape_str(x.shape()), ", weight ", shape_str(w.shape()), ")");
  SONAR_CHECK(w.size(1) * groups == g.C, op, ": weight ", shape_str(w.shape()), " expects ", w.size(1) * groups,
              " input channels with groups=", groups, " but input ", shape_str(x.shape()), " has ", g.C);
  if (bias.defined()) {
    SONAR_CHECK(bias.dtype() == DType::Float32 && bias.dim() == 1 && bias.size(0) == g.O, op, ": bias ", bias.str(),
                " must be float32 [", g.O, "]");
  }
  for (int i = 0; i < sd; ++i) {
    const int64_t in = x.size(2 + i), k = w.size(2 + i), s = stride[i], p = pad[i];
    SONAR_CHECK(s >= 1, op, ": stride must be >= 1, got ", s);
    SONAR_CHECK(p >= 0, op, ": padding must be >= 0, got ", p);
    SONAR_CHECK(k >= 1, op, ": kernel size must be >= 1, weight ", shape_str(w.shape()));
    SONAR_CHECK(in + 2 * p >= k, op, ": kernel ", shape_str(w.shape()), " is larger than the padded input ",
                shape_str(x.shape()), " (padding ", p, ")");
    const int64_t o = (in + 2 * p - k) / s + 1;
    g.in.push_back(in);
    g.k.push_back(k);
    g.stride.push_back(s);
    g.pad.push_back(p);
    g.out.push_back(o);
    g.pad_r.push_back((o - 1) * s + k - in - p);
  }
  return g;
}

Shape x_shape(const Geom& g) {
  Shape s{g.N, g.C};
  s.insert(s.end(), g.in.begin(), g.in.end());
  return s;
}
Shape y_shape(const Geom& g) {
  Shape s{g.N, g.O};
  s.insert(s.end(), g.out.begin(), g.out.end());
  return s;
}
Shape w_shape(const Geom& g) {
  Shape s{g.O, g.C / g.G};
  s.insert(s.end(), g.k.begin(), g.k.end());
  return s;
}

// ---------------------------------------------------------------- reference kernels
// Spatial dims are handled as 2-D with H = 1 for 1-D convolutions.
struct Geom2 {
  int64_t N, C, O, G, H, W, KH, KW, SH, SW, PH, PW, OH, OW;
};
Geom2 as2d(const Geom& g) {
  Geom2 r{g.N, g.C, g.O, g.G, 1, 0, 1, 0, 1, 0, 0, 0, 1, 0};
  if (g.sd == 2) {
    r.H = g.in[0];
    r.KH = g.k[0];
    r.SH = g.stride[0];
    r.PH = g.pad[0];
    r.OH = g.out[0];
  }
  r.W = g.in[g.sd - 1];
  r.KW = g.k[g.sd - 1];
  r.SW = g.stride[g.sd - 1];
  r.PW = g.pad[g.sd - 1];
  r.OW = g.out[g.sd - 1];
  return r;
}

// Loops with less work than this (multiply-adds or elements) stay on one thread: a parallel region costs
// more than it saves, and much more when other processes compete for the cores.
constexpr int64_t kParallelWork = int64_t{1} << 15;

Tensor reference_forward(const Geom& g, const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in) {
  const Geom2 d = as2d(g);
  const int64_t work = d.N * d.O * d.OH * d.OW * (d.C / d.G) * d.KH * d.KW;
  Tensor x = x_in.contiguous(), w = w_in.contiguous();
  Tensor b = bias_in.defined() ? bias_in.contiguous() : Tensor();
  Tensor y = Tensor::empty(y_shape(g));
  const float* px = x.data<float>();
  const float* pw = w.data<float>();
  const float* pb = b.defined() ? b.data<float>() : nullptr;
  float* py = y.data<float>();
  const int64_t cg = d.C / d.G, og = d.O / d.G;
#pragma omp parallel for collapse(2) schedule(static) if (work > kParallelWork)
  for (int64_t n = 0; n < d.N; ++n)
    for (int64_t o = 0; o < d.O; ++o) {
      const int64_t grp = o / og;
      for (int64_t oh = 0; oh < d.OH; ++oh)
        for (int64_t ow = 0; ow < d.OW; ++ow) {
          double acc = pb ? pb[o] : 0.0;
          for (int64_t c = 0; c < cg; ++c)
            for (int64_t kh = 0; kh < d.KH; ++kh) {
              const int64_t ih = oh * d.SH - d.PH + kh;
              if (ih < 0 || ih >= d.H) continue;
              for (int64_t kw = 0; kw < d.KW; ++kw) {
                const int64_t iw = ow * d.SW - d.PW + kw;
                if (iw < 0 || iw >= d.W) continue;
                acc += static_cast<double>(px[((n * d.C + grp * cg + c) * d.H + ih) * d.W + iw]) *
                       pw[((o * cg + c) * d.KH + kh) * d.KW + kw];
              }
            }
          py[((n * d.O + o) * d.OH + oh) * d.OW + ow] = static_cast<float>(acc);
        }
    }
  return y;
}

ConvGrads reference_backward(const Geom& g, const Tensor& gy_in, const Tensor& x_in, const Tensor& w_in,
                             bool has_bias) {
  const Geom2 d = as2d(g);
  const int64_t work = d.N * d.O * d.OH * d.OW * (d.C / d.G) * d.KH * d.KW;
  Tensor gy = gy_in.contiguous(), x = x_in.contiguous(), w = w_in.contiguous();
  const float* pg = gy.data<float>();
  const float* px = x.data<float>();
  const float* pw = w.data<float>();
  const int64_t cg = d.C / d.G, og = d.O / d.G;
  ConvGrads r;
  r.dx = Tensor::empty(x_shape(g));
  r.dweight = Tensor::empty(w_shape(g));
  float* pdx = r.dx.data<float>();
  float* pdw = r.dweight.data<float>();
  // dx[n, c, ih, iw] = sum over (o in group, kh, kw) with ih = oh*SH - PH + kh of gy[n, o, oh, ow] * w[o, c, kh, kw]
#pragma omp parallel for collapse(2) schedule(static) if (work > kParallelWork)
  for (int64_t n = 0; n < d.N; ++n)
    for (int64_t c = 0; c < d.C; ++c) {
      const int64_t grp = c / cg, cl = c % cg;
      for (int64_t ih = 0; ih < d.H; ++ih)
        for (int64_t iw = 0; iw < d.W; ++iw) {
          double acc = 0.0;
          for (int64_t o = grp * og; o < (grp + 1) * og; ++o)
            for (int64_t kh = 0; kh < d.KH; ++kh) {
              const int64_t th = ih + d.PH - kh;
              if (th < 0 || th % d.SH != 0 || th / d.SH >= d.OH) continue;
              for (int64_t kw = 0; kw < d.KW; ++kw) {
                const int64_t tw = iw + d.PW - kw;
                if (tw < 0 || tw % d.SW != 0 || tw / d.SW >= d.OW) continue;
                acc += static_cast<double>(pg[((n * d.O + o) * d.OH + th / d.SH) * d.OW + tw / d.SW]) *
                       pw[((o * cg + cl) * d.KH + kh) * d.KW + kw];
              }
            }
          pdx[((n * d.C + c) * d.H + ih) * d.W + iw] = static_cast<float>(acc);
        }
    }
    // dw[o, c, kh, kw] = sum over (n, oh, ow) of gy[n, o, oh, ow] * x[n, group c, oh*SH - PH + kh, ow*SW - PW + kw]
#pragma omp parallel for collapse(2) schedule(static) if (work > kParallelWork)
  for (int64_t o = 0; o < d.O; ++o)
    for (int64_t c = 0; c < cg; ++c) {
      const int64_t ci = (o / og) * cg + c;
      for (int64_t kh = 0; kh < d.KH; ++kh)
        for (int64_t kw = 0; kw < d.KW; ++kw) {
          double acc = 0.0;
          for (int64_t n = 0; n < d.N; ++n)
            for (int64_t oh = 0; oh < d.OH; ++oh) {
              const int64_t ih = oh * d.SH - d.PH + kh;
              if (ih < 0 || ih >= d.H) continue;
              for (int64_t ow = 0; ow < d.OW; ++ow) {
                const int64_t iw = ow * d.SW - d.PW + kw;
                if (iw < 0 || iw >= d.W) continue;
                acc += static_cast<double>(pg[((n * d.O + o) * d.OH + oh) * d.OW + ow]) *
                       px[((n * d.C + ci) * d.H + ih) * d.W + iw];
              }
            }
          pdw[((o * cg + c) * d.KH + kh) * d.KW + kw] = static_cast<float>(acc);
        }
    }
  if (has_bias) r.dbias = bias_grad_reference(gy);
  return r;
}

// ---------------------------------------------------------------- oneDNN
memory::desc plain_md(const Dims& dims) { return memory::desc(dims, memory::data_type::f32, contiguous_strides(dims)); }
memory::desc any_md(const Dims& dims) { return memory::desc(dims, memory::data_type::f32, memory::format_tag::any); }

// oneDNN's view of the weights: [O, C/G, K...] or, grouped, [G, O/G, C/G, K...] (the same memory).
Dims onednn_w_dims(const Geom& g) {
  Dims d = g.G == 1 ? Dims{g.O, g.C / g.G} : Dims{g.G, g.O / g.G, g.C / g.G};
  d.insert(d.end(), g.k.begin(), g.k.end());
  return d;
}

dnnl_ctx::Key geom_key(const char* what, const Geom& g, ConvLayout layout, bool bias) {
  dnnl_ctx::Key key(what);
  key << "f32" << dnnl_ctx::max_threads() << static_cast<int64_t>(g.sd) << g.N << g.C << g.O << g.G << g.in << g.k
      << g.stride << g.pad << (layout == ConvLayout::Plain ? "plain" : "blocked") << (bias ? "bias" : "nobias");
  return key;
}

// A reorder between the user's layout and a primitive's, or none when they already agree. For an input,
// init(user_md, prim_md) and in() gives the data in the primitive's layout; for an output,
// init(prim_md, user_md), buffer() gives memory for the primitive to write and copy_out() moves it to the user.
struct Reorder {
  bool needed = false;
  dnnl::reorder prim;
  memory::desc src, dst;
  void init(const memory::desc& from, const memory::desc& to) {
    src = from;
    dst = to;
    needed = from != to;
    if (needed)
      prim = dnnl::reorder(dnnl::reorder::primitive_desc(dnnl_ctx::engine(), from, dnnl_ctx::engine(), to));
  }
  memory in(const memory& user, dnnl::stream& s) const {
    if (!needed) return user;
    memory m(dst, dnnl_ctx::engine());
    prim.execute(s, const_cast<memory&>(user), m);
    return m;
  }
  memory buffer(const memory& user) const { return needed ? memory(src, dnnl_ctx::engine()) : user; }
  void copy_out(memory& buf, memory& user, dnnl::stream& s) const {
    if (needed) prim.execute(s, buf, user);
  }
};

struct ConvFwd {
  memory::desc x_md, w_md, y_md, b_md;
  dnnl::convolution_forward::primitive_desc pd;
  dnnl::convolution_forward prim;
  Reorder x_in, w_in;
  Reorder y_out;
};

struct ConvBwd {
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_data data_prim;
  Reorder data_gy_in, data_w_in;
  Reorder data_dx_out;
  dnnl::convolution_backward_weights::primitive_desc wpd;
  dnnl::convolution_backward_weights w_prim;
  Reorder w_x_in, w_gy_in;
  Reorder w_dw_out;
  memory::desc db_md;
};

std::shared_ptr<ConvFwd> conv_fwd(const Geom& g, bool bias, ConvLayout layout) {
  return dnnl_ctx::cached<ConvFwd>(geom_key("conv_fwd", g, layout, bias), [&] {
    auto r = std::make_shared<ConvFwd>();
    r->x_md = plain_md(x_shape(g));
    r->w_md = plain_md(onednn_w_dims(g));
    r->y_md = plain_md(y_shape(g));
    if (bias) r->b_md = plain_md({g.O});
    const bool plain = layout == ConvLayout::Plain;
    dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                      plain ? r->x_md : any_md(x_shape(g)), plain ? r->w_md : any_md(onednn_w_dims(g)),
                                      r->b_md, plain ? r->y_md : any_md(y_shape(g)), g.stride, g.pad, g.pad_r);
    r->pd = dnnl::convolution_forward::primitive_desc(d, dnnl_ctx::engine());
    r->prim = dnnl::convolution_forward(r->pd);
    r->x_in.init(r->x_md, r->pd.src_desc());
    r->w_in.init(r->w_md, r->pd.weights_desc());
    r->y_out.init(r->pd.dst_desc(), r->y_md);
    return r;
  });
}

std::shared_ptr<ConvBwd> conv_bwd(const Geom& g, bool bias, ConvLayout layout) {
  return dnnl_ctx::cached<ConvBwd>(geom_key("conv_bwd", g, layout, bias), [&] {
    auto fwd = conv_fwd(g, bias, layout);
    auto r = std::make_shared<ConvBwd>();
    const bool plain = layout == ConvLayout::Plain;
    const auto& eng = dnnl_ctx::engine();
    dnnl::convolution_backward_data::desc dd(
        dnnl::algorithm::convolution_direct, plain ? fwd->x_md : any_md(x_shape(g)),
        plain ? fwd->w_md : any_md(onednn_w_dims(g)), plain ? fwd->y_md : any_md(y_shape(g)), g.stride, g.pad, g.pad_r);
    r->data_pd = dnnl::convolution_backward_data::primitive_desc(dd, eng, fwd->pd);
    r->data_prim = dnnl::convolution_backward_data(r->data_pd);
    r->data_gy_in.init(fwd->y_md, r->data_pd.diff_dst_desc());
    r->data_w_in.init(fwd->w_md, r->data_pd.weights_desc());
    r->data_dx_out.init(r->data_pd.diff_src_desc(), fwd->x_md);
    r->db_md = fwd->b_md;
    dnnl::convolution_backward_weights::desc wd(dnnl::algorithm::convolution_direct,
                                                plain ? fwd->x_md : any_md(x_shape(g)),
                                                plain ? fwd->w_md : any_md(onednn_w_dims(g)), r->db_md,
                                                plain ? fwd->y_md : any_md(y_shape(g)), g.stride, g.pad, g.pad_r);
    r->wpd = dnnl::convolution_backward_weights::primitive_desc(wd, eng, fwd->pd);
    r->w_prim = dnnl::convolution_backward_weights(r->wpd);
    r->w_x_in.init(fwd->x_md, r->wpd.src_desc());
    r->w_gy_in.init(fwd->y_md, r->wpd.diff_dst_desc());
    r->w_dw_out.init(r->wpd.diff_weights_desc(), fwd->w_md);
    return r;
  });
}

memory user_mem(const memory::desc& md, const Tensor& t) { return memory(md, dnnl_ctx::engine(), t.raw_data()); }

Tensor onednn_forward(const Geom& g, const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in) {
  auto f = conv_fwd(g, bias_in.defined(), g_layout.load());
  Tensor x = x_in.contiguous(), w = w_in.contiguous();
  Tensor y = Tensor::empty(y_shape(g));
  dnnl::stream& s = dnnl_ctx::stream();
  memory xm = f->x_in.in(user_mem(f->x_md, x), s);
  memory wm = f->w_in.in(user_mem(f->w_md, w), s);
  memory yu = user_mem(f->y_md, y);
  memory ym = f->y_out.buffer(yu);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}};
  Tensor b;
  if (bias_in.defined()) {
    b = bias_in.contiguous();
    args.emplace(DNNL_ARG_BIAS, user_mem(f->b_md, b));
  }
  f->prim.execute(s, args);
  f->y_out.copy_out(ym, yu, s);
  s.wait();
  return y;
}

ConvGrads onednn_backward(const Geom& g, const Tensor& gy_in, const Tensor& x_in, const Tensor& w_in, bool has_bias,
                          bool need_dx) {
  const ConvLayout layout = g_layout.load();
  auto f = conv_fwd(g, has_bias, layout);
  auto b = conv_bwd(g, has_bias, layout);
  Tensor gy = gy_in.contiguous(), x = x_in.contiguous(), w = w_in.contiguous();
  ConvGrads r;
  r.dweight = Tensor::empty(w_shape(g));
  if (has_bias) r.dbias = Tensor::empty({g.O});
  dnnl::stream& s = dnnl_ctx::stream();
  const memory gyu = user_mem(f->y_md, gy);
  if (need_dx) {
    r.dx = Tensor::empty(x_shape(g));
    memory gym = b->data_gy_in.in(gyu, s);
    memory wm = b->data_w_in.in(user_mem(f->w_md, w), s);
    memory dxu = user_mem(f->x_md, r.dx);
    memory dxm = b->data_dx_out.buffer(dxu);
    b->data_prim.execute(s, {{DNNL_ARG_DIFF_DST, gym}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DIFF_SRC, dxm}});
    b->data_dx_out.copy_out(dxm, dxu, s);
  }
  {  // dweight, dbias
    memory xm = b->w_x_in.in(user_mem(f->x_md, x), s);
    memory gym = b->w_gy_in.in(gyu, s);
    memory dwu = user_mem(f->w_md, r.dweight);
    memory dwm = b->w_dw_out.buffer(dwu);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, gym}, {DNNL_ARG_DIFF_WEIGHTS, dwm}};
    if (has_bias) args.emplace(DNNL_ARG_DIFF_BIAS, user_mem(b->db_md, r.dbias));
    b->w_prim.execute(s, args);
    b->w_dw_out.copy_out(dwm, dwu, s);
  }
  s.wait();
  return r;
}

void check_grad_y(const Geom& g, const Tensor& gy) {
  SONAR_CHECK(gy.defined() && gy.dtype() == DType::Float32, g.op, "_backward: grad_y must be float32");
  SONAR_CHECK(gy.shape() == y_shape(g), g.op, "_backward: grad_y ", shape_str(gy.shape()), " should be ",
              shape_str(y_shape(g)), " (the output shape)");
}

// ---------------------------------------------------------------- conv1d by unfolded blocks and sgemm
// oneDNN 2.6 has no direct kernel for long 1-D kernels (BEATs' positional conv: 128 taps, 16 groups of 48
// channels); its generic gemm convolution unfolds the whole input and ran at half the matmul rate. Here the
// input of one group is unfolded a few channels at a time, U [Lo, cb*K] (1 MB, stays in the L2 cache), and
// multiplied with oneDNN's sgemm: y_g^T += U @ W_g[:, block]^T, dW_g[:, block] += dy_g @ U, and
// dU = dy_g^T @ W_g[:, block], folded back into dx. Threads take whole groups (one parallel region per call,
// each sgemm single-threaded inside it) when there are enough groups; otherwise the groups run in turn and
// each sgemm uses every thread.

constexpr int64_t kUnfoldFloats = int64_t{1} << 18;  // 1 MB per unfolded block

bool use_fft(const Geom& g) {
  const Conv1dPath path = g_conv1d_path.load();
  if (g.sd != 1 || g.stride[0] != 1) return false;
  return path == Conv1dPath::Fft || (path == Conv1dPath::Auto && g.k[0] >= kFftMinKernel);
}

bool use_im2col(const Geom& g) {
  const Conv1dPath path = g_conv1d_path.load();
  if (g.sd != 1 || path == Conv1dPath::Primitive) return false;
  return path == Conv1dPath::Im2col || path == Conv1dPath::Fft || g.k[0] >= kIm2colMinKernel;
}

conv1d_fft::Geometry fft_geometry(const Geom& g) {
  return conv1d_fft::Geometry{g.N, g.C, g.O, g.G, g.in[0], g.k[0], g.pad[0], g.out[0]};
}

Tensor fft_forward(const Geom& g, const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in) {
  const Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const Tensor b = bias_in.defined() ? bias_in.contiguous() : Tensor();
  Tensor y = Tensor::empty(y_shape(g));
  conv1d_fft::forward(fft_geometry(g), x.data<float>(), w.data<float>(), b.defined() ? b.data<float>() : nullptr,
                      y.data<float>());
  return y;
}

ConvGrads fft_backward(const Geom& g, const Tensor& gy_in, const Tensor& x_in, const Tensor& w_in, bool has_bias,
                       bool need_dx) {
  const Tensor x = x_in.contiguous(), gy = gy_in.contiguous(), w = w_in.contiguous();
  ConvGrads r;
  if (need_dx) r.dx = Tensor::empty(x_shape(g));
  r.dweight = Tensor::empty(w_shape(g));
  conv1d_fft::backward(fft_geometry(g), gy.data<float>(), x.data<float>(), w.data<float>(),
                       need_dx ? r.dx.data<float>() : nullptr, r.dweight.data<float>());
  if (has_bias) r.dbias = bias_grad_reference(gy);
  return r;
}

int64_t channel_block(const Geom& g) {
  const int64_t per_channel = std::max<int64_t>(g.out[0] * g.k[0], 1);
  return std::clamp<int64_t>(kUnfoldFloats / per_channel, 1, g.C / g.G);
}

// Taps k in [lo, hi) of output t read input positions start + k inside [0, L).
struct Taps {
  int64_t start, lo, hi;
};
Taps taps(int64_t t, int64_t S, int64_t P, int64_t K, int64_t L) {
  const int64_t start = t * S - P;
  const int64_t lo = std::clamp<int64_t>(-start, 0, K), hi = std::clamp<int64_t>(L - start, lo, K);
  return {start, lo, hi};
}

// U[t, c*K + k] = x[c, t*S + k - P] (0 outside the input) for the cb channel rows of x (row length L).
void unfold(const float* x, int64_t L, int64_t cb, int64_t K, int64_t S, int64_t P, int64_t Lo, float* U) {
  const int64_t J = cb * K;
  for (int64_t t = 0; t < Lo; ++t) {
    const Taps tp = taps(t, S, P, K, L);
    for (int64_t c = 0; c < cb; ++c) {
      float* r = U + t * J + c * K;
      std::fill(r, r + tp.lo, 0.0f);
      std::memcpy(r + tp.lo, x + c * L + tp.start + tp.lo, sizeof(float) * (tp.hi - tp.lo));
      std::fill(r + tp.hi, r + K, 0.0f);
    }
  }
}

// The adjoint of unfold: dx[c, t*S + k - P] += dU[t, c*K + k].
void fold_add(const float* dU, int64_t L, int64_t cb, int64_t K, int64_t S, int64_t P, int64_t Lo, float* dx) {
  const int64_t J = cb * K;
  for (int64_t c = 0; c < cb; ++c) {
    float* row = dx + c * L;
    for (int64_t t = 0; t < Lo; ++t) {
      const Taps tp = taps(t, S, P, K, L);
      const float* __restrict src = dU + t * J + c * K;
      float* __restrict dst = row + tp.start;
#pragma omp simd
      for (int64_t k = tp.lo; k < tp.hi; ++k) dst[k] += src[k];
    }
  }
}

// Row-major C (+)= op(A) @ op(B) through oneDNN's sgemm (single-threaded inside a parallel region).
void sgemm(char ta, char tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
           float beta, float* C, int64_t ldc) {
  const dnnl_status_t st = dnnl_sgemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
  SONAR_CHECK(st == dnnl_success, "conv1d: dnnl_sgemm failed (status ", static_cast<int>(st), ") for M=", M, " N=", N,
              " K=", K);
}

// Runs body(i) for i in [0, n): one parallel region over the items when there are at least as many items as
// threads (the body then runs single-threaded sgemm calls), otherwise in turn (each sgemm uses all threads).
template <class F>
void for_items(int64_t n, F&& body) {
  if (n >= dnnl_ctx::max_threads() && n > 1) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

Tensor im2col_forward(const Geom& g, const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in) {
  const int64_t L = g.in[0], Lo = g.out[0], K = g.k[0], S = g.stride[0], P = g.pad[0];
  const int64_t Cg = g.C / g.G, Og = g.O / g.G, cb_max = channel_block(g), ldw = Cg * K;
  Tensor x = x_in.contiguous(), w = w_in.contiguous();
  Tensor b = bias_in.defined() ? bias_in.contiguous() : Tensor();
  Tensor y = Tensor::empty(y_shape(g));
  const float* px = x.data<float>();
  const float* pw = w.data<float>();
  const float* pb = b.defined() ? b.data<float>() : nullptr;
  float* py = y.data<float>();
  // Item i = (sample n, group grp): y[n, group rows] from x[n, group channels]; items write disjoint rows.
  for_items(g.N * g.G, [&](int64_t i) {
    const int64_t n = i / g.G, grp = i % g.G;
    std::vector<float> U(static_cast<size_t>(Lo * cb_max * K)), yt(static_cast<size_t>(Lo * Og));
    const float* wg = pw + grp * Og * ldw;
    for (int64_t c0 = 0; c0 < Cg; c0 += cb_max) {
      const int64_t cb = std::min(cb_max, Cg - c0);
      unfold(px + (n * g.C + grp * Cg + c0) * L, L, cb, K, S, P, Lo, U.data());
      // yt [Lo, Og] (+)= U [Lo, cb*K] @ W_g[:, block]^T (time-major: the sgemm runs faster with M = Lo)
      sgemm('N', 'T', Lo, Og, cb * K, U.data(), cb * K, wg + c0 * K, ldw, c0 > 0 ? 1.0f : 0.0f, yt.data(), Og);
    }
    for (int64_t o = 0; o < Og; ++o) {
      float* row = py + (n * g.O + grp * Og + o) * Lo;
      const float bo = pb ? pb[grp * Og + o] : 0.0f;
      for (int64_t t = 0; t < Lo; ++t) row[t] = yt[t * Og + o] + bo;
    }
  });
  return y;
}

ConvGrads im2col_backward(const Geom& g, const Tensor& gy_in, const Tensor& x_in, const Tensor& w_in, bool has_bias,
                          bool need_dx) {
  const int64_t L = g.in[0], Lo = g.out[0], K = g.k[0], S = g.stride[0], P = g.pad[0];
  const int64_t Cg = g.C / g.G, Og = g.O / g.G, cb_max = channel_block(g), ldw = Cg * K;
  Tensor x = x_in.contiguous(), gy = gy_in.contiguous(), w = w_in.contiguous();
  ConvGrads r;
  if (need_dx) {
    r.dx = Tensor::empty(x_shape(g));
    r.dx.fill_(0.0);
  }
  r.dweight = Tensor::empty(w_shape(g));
  const float* px = x.data<float>();
  const float* pgy = gy.data<float>();
  const float* pw = w.data<float>();
  float* pdw = r.dweight.data<float>();
  float* pdx = need_dx ? r.dx.data<float>() : nullptr;
  // Item = group: it owns dW's group rows (summed over the batch) and dx's group channels.
  for_items(g.G, [&](int64_t grp) {
    std::vector<float> U(static_cast<size_t>(Lo * cb_max * K)), dU(need_dx ? U.size() : 0);
    const float* wg = pw + grp * Og * ldw;
    float* dwg = pdw + grp * Og * ldw;
    for (int64_t n = 0; n < g.N; ++n) {
      const float* gyg = pgy + (n * g.O + grp * Og) * Lo;  // [Og, Lo]
      for (int64_t c0 = 0; c0 < Cg; c0 += cb_max) {
        const int64_t cb = std::min(cb_max, Cg - c0), J = cb * K;
        const int64_t xoff = (n * g.C + grp * Cg + c0) * L;
        unfold(px + xoff, L, cb, K, S, P, Lo, U.data());
        // dW_g[:, block] (+)= dy_g [Og, Lo] @ U [Lo, J]
        sgemm('N', 'N', Og, J, Lo, gyg, Lo, U.data(), J, n > 0 ? 1.0f : 0.0f, dwg + c0 * K, ldw);
        if (!need_dx) continue;
        // dU [Lo, J] = dy_g^T @ W_g[:, block], then scattered back onto the input positions
        sgemm('T', 'N', Lo, J, Og, gyg, Lo, wg + c0 * K, ldw, 0.0f, dU.data(), J);
        fold_add(dU.data(), L, cb, K, S, P, Lo, pdx + xoff);
      }
    }
  });
  if (has_bias) r.dbias = bias_grad_reference(gy);
  return r;
}

bool empty_problem(const Geom& g) { return g.N == 0 || g.C == 0 || g.O == 0; }

std::string impl_info(const Geom& g, bool bias) {
  if (use_fft(g)) {
    const int64_t nf = conv1d_fft::fft_length(fft_geometry(g));
    return "FFT of " + std::to_string(nf) + "-sample segments (" + std::to_string(nf - g.k[0] + 1) +
           " outputs each, FFTW float), threads over outputs and groups";
  }
  if (use_im2col(g)) {
    return "unfolded blocks of " + std::to_string(channel_block(g)) + " channels + oneDNN sgemm, " +
           (g.N * g.G >= dnnl_ctx::max_threads() ? "threads over groups" : "threads inside sgemm");
  }
  const ConvLayout layout = g_layout.load();
  auto f = conv_fwd(g, bias, layout);
  auto b = conv_bwd(g, bias, layout);
  return std::string("fwd ") + f->pd.impl_info_str() + ", bwd_data " + b->data_pd.impl_info_str() + ", bwd_weights " +
         b->wpd.impl_info_str();
}

Tensor zeros_of(const Shape& s) {
  Tensor t = Tensor::empty(s);
  t.fill_(0.0);
  return t;
}

// Multiply-adds x 2 of one pass (forward, dx or dW) of the convolution, for the profiler.
double conv_flops(const Geom& g) {
  double f = 2.0 * static_cast<double>(g.N * g.O) * static_cast<double>(g.C / g.G);
  for (int i = 0; i < g.sd; ++i) f *= static_cast<double>(g.out[i] * g.k[i]);
  return f;
}

Tensor forward_any(const Geom& g, const Tensor& x, const Tensor& w, const Tensor& bias) {
  const bool fft = !empty_problem(g) && use_fft(g);
  profile::count_flops(fft ? conv1d_fft::flops(fft_geometry(g), false, false) : conv_flops(g));
  if (fft) return fft_forward(g, x, w, bias);
  if (empty_problem(g)) {
    Tensor y = zeros_of(y_shape(g));
    if (bias.defined() && g.N > 0) y.copy_(bias.reshape(g.sd == 2 ? Shape{1, g.O, 1, 1} : Shape{1, g.O, 1}));
    return y;
  }
  return use_im2col(g) ? im2col_forward(g, x, w, bias) : onednn_forward(g, x, w, bias);
}

ConvGrads backward_any(const Geom& g, const Tensor& gy, const Tensor& x, const Tensor& w, bool has_bias, bool need_dx) {
  const bool fft = !empty_problem(g) && use_fft(g);
  profile::count_flops(fft ? conv1d_fft::flops(fft_geometry(g), true, need_dx) : conv_flops(g) * (need_dx ? 2.0 : 1.0));
  check_grad_y(g, gy);
  if (fft) return fft_backward(g, gy, x, w, has_bias, need_dx);
  if (empty_problem(g)) {
    ConvGrads r{need_dx ? zeros_of(x_shape(g)) : Tensor(), zeros_of(w_shape(g)), has_bias ? zeros_of({g.O}) : Tensor()};
    return r;
  }
  return use_im2col(g) ? im2col_backward(g, gy, x, w, has_bias, need_dx)
                       : onednn_backward(g, gy, x, w, has_bias, need_dx);
}

}  // namespace

void set_conv_layout(ConvLayout layout) { g_layout.store(layout); }
void set_conv1d_path(Conv1dPath path) { g_conv1d_path.store(path); }
Conv1dPath conv1d_path() { return g_conv1d_path.load(); }
ConvLayout conv_layout() { return g_layout.load(); }

Tensor bias_grad_reference(const Tensor& grad_y) {
  SONAR_CHECK(grad_y.defined() && grad_y.dtype() == DType::Float32 && grad_y.dim() >= 2,
              "conv bias grad: grad_y must be float32 [N, O, ...], got ",
              grad_y.defined() ? grad_y.str() : "undefined");
  Tensor gy = grad_y.contiguous();
  const int64_t N = gy.size(0), O = gy.size(1), S = gy.numel() / std::max<int64_t>(N * O, 1);
  Tensor db = Tensor::empty({O});
  const float* pg = gy.data<float>();
  float* pd = db.data<float>();
  for (int64_t o = 0; o < O; ++o) {
    double acc = 0.0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < S; ++i) acc += pg[(n * O + o) * S + i];
    pd[o] = static_cast<float>(acc);
  }
  return db;
}

// The geometry of a call, from each public signature's parameter struct (bias undefined for backward calls).
static Geom geom_of(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p) {
  return make_geom("conv2d", 2, x, weight, bias, {p.stride[0], p.stride[1]}, {p.padding[0], p.padding[1]}, p.groups);
}
static Geom geom_of(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv1dParams& p) {
  return make_geom("conv1d", 1, x, weight, bias, {p.stride}, {p.padding}, p.groups);
}

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p) {
  const Geom g = geom_of(x, weight, bias, p);
  return forward_any(g, x, weight, bias);
}

ConvGrads conv2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                          const Conv2dParams& p) {
  return conv2d_backward(grad_y, x, weight, has_bias, p, true);
}

ConvGrads conv2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                          const Conv2dParams& p, bool need_dx) {
  const Geom g = geom_of(x, weight, Tensor(), p);
  return backward_any(g, grad_y, x, weight, has_bias, need_dx);
}

Tensor conv2d_reference(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p) {
  const Geom g = geom_of(x, weight, bias, p);
  return reference_forward(g, x, weight, bias);
}

ConvGrads conv2d_backward_reference(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                                    const Conv2dParams& p) {
  const Geom g = geom_of(x, weight, Tensor(), p);
  check_grad_y(g, grad_y);
  return reference_backward(g, grad_y, x, weight, has_bias);
}

std::string conv2d_impl(const Tensor& x, const Tensor& weight, bool has_bias, const Conv2dParams& p) {
  const Geom g = geom_of(x, weight, Tensor(), p);
  return empty_problem(g) ? "none (empty)" : impl_info(g, has_bias);
}

Tensor conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv1dParams& p) {
  const Geom g = geom_of(x, weight, bias, p);
  return forward_any(g, x, weight, bias);
}

ConvGrads conv1d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                          const Conv1dParams& p) {
  return conv1d_backward(grad_y, x, weight, has_bias, p, true);
}

ConvGrads conv1d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                          const Conv1dParams& p, bool need_dx) {
  const Geom g = geom_of(x, weight, Tensor(), p);
  return backward_any(g, grad_y, x, weight, has_bias, need_dx);
}

Tensor conv1d_reference(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv1dParams& p) {
  const Geom g = geom_of(x, weight, bias, p);
  return reference_forward(g, x, weight, bias);
}

ConvGrads conv1d_backward_reference(const Tensor& grad_y, const Tensor& x, const Tensor& weight, bool has_bias,
                                    const Conv1dParams& p) {
  const Geom g = geom_of(x, weight, Tensor(), p);
  check_grad_y(g, grad_y);
  return reference_backward(g, grad_y, x, weight, has_bias);
}

std::string conv1d_impl(const Tensor& x, const Tensor& weight, bool has_bias, const Conv1dParams& p) {
  const Geom g = geom_of(x, weight, Tensor(), p);
  return empty_problem(g) ? "none (empty)" : impl_info(g, has_bias);
}

}  // namespace sonar
