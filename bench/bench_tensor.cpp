// Foundation benchmarks for the tensor layer (Google Benchmark): the BEATs-base matrix products forward and
// both backward products through our matmul (oneDNN and OpenBLAS backends) next to the raw oneDNN matmul
// primitive, raw dnnl_sgemm and raw cblas_sgemm on the same shapes (so the layer's overhead is visible), layer norm,
// softmax and GELU on [496, 768] and [12, 496, 496], the patch-embedding conv2d and the positional grouped conv1d.
// Counters: GFLOP/s for products and convolutions, GB/s (bytes read + written once) for the memory-bound
// kernels, computed from wall-clock time (the work runs on several threads). Not a correctness check (tests/
// does that). Run e.g.
//   OMP_NUM_THREADS=2 ./bench_tensor --benchmark_filter=Matmul
// or, for per-core figures that hold up on a loaded machine, OMP_NUM_THREADS=1 ./bench_tensor --cpu_time
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <vector>

#include "tensor/conv.h"
#include "tensor/dnnl_context.h"
#include "tensor/elementwise.h"
#include "tensor/index.h"
#include "tensor/layer_norm.h"
#include "tensor/matmul.h"
#include "tensor/random.h"
#include "tensor/reduce.h"

using namespace sonar;

namespace {

Tensor rnd(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return randn(s, g);
}

void set_gflops(benchmark::State& st, double flops_per_iter) {
  st.counters["GFLOP/s"] = benchmark::Counter(flops_per_iter * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
void set_gbytes(benchmark::State& st, double bytes_per_iter) {
  st.counters["GB/s"] = benchmark::Counter(bytes_per_iter * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// ------------------------------------------------------------------ matrix products
// A product C[b] = op(A[b]) @ op(B[b]) with the operands stored as the model stores them.
struct Product {
  const char* name;
  int64_t batch, M, N, K;
  bool ta, tb;
  Shape a_shape() const {
    Shape s = ta ? Shape{K, M} : Shape{M, K};
    if (batch > 1) s.insert(s.begin(), batch);
    return s;
  }
  Shape b_shape() const {
    Shape s = tb ? Shape{N, K} : Shape{K, N};
    if (batch > 1) s.insert(s.begin(), batch);
    return s;
  }
  double flops() const { return 2.0 * batch * M * N * K; }
};

// Linear layers y = x @ W^T (x [T, in], W [out, in]): forward, dx = dy @ W, dW = dy^T @ x.
// Attention scores S = Q @ K^T per head: forward, dQ = dS @ K, dK = dS^T @ Q.
std::vector<Product> products() {
  std::vector<Product> v;
  struct Lin {
    const char* tag;
    int64_t T, in, out;
  } lins[] = {{"496x768x768", 496, 768, 768}, {"496x768x3072", 496, 768, 3072}, {"496x3072x768", 496, 3072, 768}};
  for (const Lin& l : lins) {
    v.push_back({"fwd", 1, l.T, l.out, l.in, false, true});
    v.push_back({"dx", 1, l.T, l.in, l.out, false, false});
    v.push_back({"dW", 1, l.out, l.in, l.T, true, false});
  }
  v.push_back({"fwd", 12, 496, 496, 64, false, true});
  v.push_back({"dQ", 12, 496, 64, 496, false, false});
  v.push_back({"dK", 12, 496, 64, 496, true, false});
  return v;
}

std::string product_label(const Product& p) {
  if (p.batch > 1) return std::string("attn_12x496x64x496/") + p.name;
  // name the layer by its forward shape [T x in] x [in x out]
  const bool fwd = std::string(p.name) == "fwd", dx = std::string(p.name) == "dx";
  const int64_t T = fwd || dx ? p.M : p.K, in = fwd ? p.K : p.N, out = fwd ? p.N : (dx ? p.K : p.M);
  return "linear_" + std::to_string(T) + "x" + std::to_string(in) + "x" + std::to_string(out) + "/" + p.name;
}

void BM_Matmul(benchmark::State& st, Product p, MatmulBackend be) {
  Tensor a = rnd(p.a_shape(), 1), b = rnd(p.b_shape(), 2);
  for (auto _ : st) {
    Tensor c = matmul(a, b, p.ta, p.tb, be);
    benchmark::DoNotOptimize(c.raw_data());
  }
  set_gflops(st, p.flops());
}

// The raw oneDNN matmul primitive, built once, output preallocated: the ceiling for our oneDNN path.
void BM_RawOneDnn(benchmark::State& st, Product p) {
  using dnnl::memory;
  const auto& eng = dnnl_ctx::engine();
  dnnl::stream s(eng);
  auto md = [&](int64_t rows, int64_t cols, bool trans) {
    // logical [rows, cols]; stored transposed when trans
    memory::dims d{rows, cols}, str = trans ? memory::dims{1, rows} : memory::dims{cols, 1};
    if (p.batch > 1) {
      d.insert(d.begin(), p.batch);
      str.insert(str.begin(), rows * cols);
    }
    return memory::desc(d, memory::data_type::f32, str);
  };
  memory::desc a_md = md(p.M, p.K, p.ta), b_md = md(p.K, p.N, p.tb), c_md = md(p.M, p.N, false);
  dnnl::matmul prim(dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, b_md, c_md), eng));
  Tensor a = rnd(p.a_shape(), 1), b = rnd(p.b_shape(), 2);
  Tensor c = Tensor::empty(p.batch > 1 ? Shape{p.batch, p.M, p.N} : Shape{p.M, p.N});
  memory am(a_md, eng, a.raw_data()), bm(b_md, eng, b.raw_data()), cm(c_md, eng, c.raw_data());
  for (auto _ : st) {
    prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    s.wait();
    benchmark::ClobberMemory();
  }
  set_gflops(st, p.flops());
  st.SetLabel(dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, b_md, c_md), eng).impl_info_str());
}

// Raw dnnl_sgemm (oneDNN's jit gemm, a loop over the batch), output preallocated: the ceiling for the 2-D
// products our oneDNN path sends to it.
void BM_RawDnnlSgemm(benchmark::State& st, Product p) {
  Tensor a = rnd(p.a_shape(), 1), b = rnd(p.b_shape(), 2);
  Tensor c = Tensor::empty({p.batch, p.M, p.N});
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* pc = c.data<float>();
  const int64_t lda = p.ta ? p.M : p.K, ldb = p.tb ? p.K : p.N;
  for (auto _ : st) {
    for (int64_t i = 0; i < p.batch; ++i)
      dnnl_sgemm(p.ta ? 'T' : 'N', p.tb ? 'T' : 'N', p.M, p.N, p.K, 1.0f, pa + i * p.M * p.K, lda, pb + i * p.K * p.N,
                 ldb, 0.0f, pc + i * p.M * p.N, p.N);
    benchmark::ClobberMemory();
  }
  set_gflops(st, p.flops());
}

// Raw cblas_sgemm (a loop over the batch), output preallocated.
void BM_RawOpenBlas(benchmark::State& st, Product p) {
  Tensor a = rnd(p.a_shape(), 1), b = rnd(p.b_shape(), 2);
  Tensor c = Tensor::empty({p.batch, p.M, p.N});
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* pc = c.data<float>();
  const blasint lda = p.ta ? p.M : p.K, ldb = p.tb ? p.K : p.N;
  for (auto _ : st) {
    for (int64_t i = 0; i < p.batch; ++i)
      cblas_sgemm(CblasRowMajor, p.ta ? CblasTrans : CblasNoTrans, p.tb ? CblasTrans : CblasNoTrans, p.M, p.N, p.K,
                  1.0f, pa + i * p.M * p.K, lda, pb + i * p.K * p.N, ldb, 0.0f, pc + i * p.M * p.N, p.N);
    benchmark::ClobberMemory();
  }
  set_gflops(st, p.flops());
}

// linear() with the bias fused into the oneDNN primitive.
void BM_LinearBias(benchmark::State& st, int64_t T, int64_t in, int64_t out) {
  Tensor x = rnd({T, in}, 1), w = rnd({out, in}, 2), b = rnd({out}, 3);
  for (auto _ : st) {
    Tensor y = linear(x, w, b);
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_gflops(st, 2.0 * T * in * out);
}

// ------------------------------------------------------------------ memory-bound kernels
// A column reduction: the L2 norm over the two leading dims of BEATs' positional-conv weight (weight_norm).
void BM_ColumnNorm(benchmark::State& st) {
  Tensor v = rnd({768, 48, 128}, 1);
  for (auto _ : st) {
    Tensor n = norm(v, 2.0, {0, 1}, true);
    benchmark::DoNotOptimize(n.raw_data());
  }
  set_gbytes(st, static_cast<double>(v.nbytes()));
}

// weight_norm's backward on the same weight (dim 2): reads dL/dw and v twice (the per-tap dot products, then
// dv), writes dv.
void BM_WeightNormBwd(benchmark::State& st) {
  Tensor v = rnd({768, 48, 128}, 1), gw = rnd({768, 48, 128}, 2), g = rnd({1, 1, 128}, 3);
  const Tensor n = norm(v, 2.0, {0, 1}, true);
  for (auto _ : st) {
    WeightNormGrads r = weight_norm_backward(gw, v, g, n, 2);
    benchmark::DoNotOptimize(r.dv.raw_data());
  }
  set_gbytes(st, 5.0 * static_cast<double>(v.nbytes()));
}

void BM_LayerNormFwd(benchmark::State& st, Shape s) {
  Tensor x = rnd(s, 1), w = rnd({s.back()}, 2), b = rnd({s.back()}, 3);
  for (auto _ : st) {
    LayerNormForward f = layer_norm_forward(x, w, b, 1e-5f);
    benchmark::DoNotOptimize(f.y.raw_data());
  }
  set_gbytes(st, 2.0 * x.nbytes());
}
void BM_LayerNormBwd(benchmark::State& st, Shape s) {
  Tensor x = rnd(s, 1), w = rnd({s.back()}, 2), b = rnd({s.back()}, 3), gy = rnd(s, 4);
  LayerNormForward f = layer_norm_forward(x, w, b, 1e-5f);
  for (auto _ : st) {
    LayerNormBackward g = layer_norm_backward(gy, x, w, f, true);
    benchmark::DoNotOptimize(g.dx.raw_data());
  }
  set_gbytes(st, 3.0 * x.nbytes());  // reads x and dy, writes dx
}
void BM_SoftmaxFwd(benchmark::State& st, Shape s) {
  Tensor x = rnd(s, 1);
  for (auto _ : st) {
    Tensor y = softmax(x, -1);
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_gbytes(st, 2.0 * x.nbytes());
}
void BM_SoftmaxBwd(benchmark::State& st, Shape s) {
  Tensor y = softmax(rnd(s, 1), -1), gy = rnd(s, 2);
  for (auto _ : st) {
    Tensor g = softmax_backward(gy, y, -1);
    benchmark::DoNotOptimize(g.raw_data());
  }
  set_gbytes(st, 3.0 * y.nbytes());
}
void BM_GeluFwd(benchmark::State& st, Shape s) {
  Tensor x = rnd(s, 1);
  for (auto _ : st) {
    Tensor y = gelu(x);
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_gbytes(st, 2.0 * x.nbytes());
}
void BM_GeluBwd(benchmark::State& st, Shape s) {
  Tensor x = rnd(s, 1), gy = rnd(s, 2);
  for (auto _ : st) {
    Tensor g = gelu_backward(gy, x);
    benchmark::DoNotOptimize(g.raw_data());
  }
  set_gbytes(st, 3.0 * x.nbytes());
}
// The training path (autograd's gelu when a gradient is needed): gelu and gelu' in one pass, then the
// backward is grad * gelu'. Compare fwd_with_grad + bwd_multiply against fwd + bwd.
void BM_GeluFwdWithGrad(benchmark::State& st, Shape s) {
  Tensor x = rnd(s, 1);
  for (auto _ : st) {
    Tensor d;
    Tensor y = gelu_with_grad(x, d);
    benchmark::DoNotOptimize(y.raw_data());
    benchmark::DoNotOptimize(d.raw_data());
  }
  set_gbytes(st, 3.0 * x.nbytes());
}
void BM_GeluBwdMultiply(benchmark::State& st, Shape s) {
  Tensor x = rnd(s, 1), gy = rnd(s, 2);
  Tensor d;
  gelu_with_grad(x, d);
  for (auto _ : st) {
    Tensor g = mul(gy, d);
    benchmark::DoNotOptimize(g.raw_data());
  }
  set_gbytes(st, 3.0 * x.nbytes());
}

// ------------------------------------------------------------------ convolutions
// BEATs patch embedding: fbank [B, 1, T=992, F=128] -> [B, 512, 62, 8], 16x16 kernels, stride 16.
void BM_PatchEmbed(benchmark::State& st, bool backward, ConvLayout layout) {
  set_conv_layout(layout);
  Tensor x = rnd({1, 1, 992, 128}, 1), w = rnd({512, 1, 16, 16}, 2), b = rnd({512}, 3);
  Conv2dParams p;
  p.stride = {16, 16};
  Tensor gy = rnd({1, 512, 62, 8}, 4);
  for (auto _ : st) {
    if (backward) {
      ConvGrads g = conv2d_backward(gy, x, w, true, p, /*need_dx=*/false);  // the fbank needs no gradient
      benchmark::DoNotOptimize(g.dweight.raw_data());
    } else {
      Tensor y = conv2d(x, w, b, p);
      benchmark::DoNotOptimize(y.raw_data());
    }
  }
  const double f = 2.0 * 62 * 8 * 512 * 256;
  set_gflops(st, f);  // backward = the weights product only
  st.SetLabel(conv2d_impl(x, w, true, p));
  set_conv_layout(ConvLayout::Blocked);
}

// BEATs positional conv: [B, 768, T=496], kernel 128, 16 groups, padding 64 -> [B, 768, 497].
void BM_PosConv(benchmark::State& st, bool backward, ConvLayout layout, Conv1dPath path) {
  set_conv_layout(layout);
  set_conv1d_path(path);
  Tensor x = rnd({1, 768, 496}, 1), w = rnd({768, 48, 128}, 2), b = rnd({768}, 3);
  Conv1dParams p;
  p.padding = 64;
  p.groups = 16;
  Tensor gy = rnd({1, 768, 497}, 4);
  for (auto _ : st) {
    if (backward) {
      ConvGrads g = conv1d_backward(gy, x, w, true, p);
      benchmark::DoNotOptimize(g.dweight.raw_data());
    } else {
      Tensor y = conv1d(x, w, b, p);
      benchmark::DoNotOptimize(y.raw_data());
    }
  }
  const double f = 2.0 * 497 * 768 * 48 * 128;  // the direct convolution's count (an equivalent rate for FFTs)
  set_gflops(st, backward ? 2 * f : f);
  st.SetLabel(conv1d_impl(x, w, true, p));
  set_conv_layout(ConvLayout::Blocked);
  set_conv1d_path(Conv1dPath::Auto);
}

// Rates from wall-clock time by default; with --cpu_time from the main thread's CPU time, which is only
// meaningful with OMP_NUM_THREADS=1 but is robust when other processes load the machine.
bool g_cpu_time = false;
void timing(benchmark::internal::Benchmark* b) {
  if (!g_cpu_time) b->UseRealTime();
}

void register_all() {
  for (const Product& p : products()) {
    const std::string l = product_label(p);
    benchmark::RegisterBenchmark(("Matmul/ours_onednn/" + l).c_str(), BM_Matmul, p, MatmulBackend::OneDNN)
        ->Apply(timing)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("Matmul/raw_onednn/" + l).c_str(), BM_RawOneDnn, p)
        ->Apply(timing)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("Matmul/raw_dnnl_sgemm/" + l).c_str(), BM_RawDnnlSgemm, p)
        ->Apply(timing)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("Matmul/ours_openblas/" + l).c_str(), BM_Matmul, p, MatmulBackend::OpenBLAS)
        ->Apply(timing)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("Matmul/raw_openblas/" + l).c_str(), BM_RawOpenBlas, p)
        ->Apply(timing)
        ->Unit(benchmark::kMicrosecond);
  }
  benchmark::RegisterBenchmark("Linear/bias_fused/496x768x768", BM_LinearBias, 496, 768, 768)
      ->Apply(timing)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("Linear/bias_fused/496x768x3072", BM_LinearBias, 496, 768, 3072)
      ->Apply(timing)
      ->Unit(benchmark::kMicrosecond);
  const std::pair<const char*, Shape> shapes[] = {{"496x768", {496, 768}}, {"12x496x496", {12, 496, 496}}};
  // The memory-bound kernels, each at both shapes, in this order (names as before: Family/pass/shape).
  using ShapeBench = void (*)(benchmark::State&, Shape);
  const std::pair<const char*, ShapeBench> kernels[] = {
      {"LayerNorm/fwd/", BM_LayerNormFwd},
      {"LayerNorm/bwd/", BM_LayerNormBwd},
      {"Softmax/fwd/", BM_SoftmaxFwd},
      {"Softmax/bwd/", BM_SoftmaxBwd},
      {"Gelu/fwd/", BM_GeluFwd},
      {"Gelu/bwd/", BM_GeluBwd},
      {"Gelu/fwd_with_grad/", BM_GeluFwdWithGrad},
      {"Gelu/bwd_multiply/", BM_GeluBwdMultiply},
  };
  benchmark::RegisterBenchmark("Reduce/norm_over_leading_dims/768x48x128", BM_ColumnNorm)
      ->Apply(timing)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("WeightNorm/bwd/768x48x128", BM_WeightNormBwd)
      ->Apply(timing)
      ->Unit(benchmark::kMicrosecond);
  for (const auto& [n, s] : shapes)
    for (const auto& [family, fn] : kernels)
      benchmark::RegisterBenchmark((std::string(family) + n).c_str(), fn, s)
          ->Apply(timing)
          ->Unit(benchmark::kMicrosecond);
  for (ConvLayout layout : {ConvLayout::Blocked, ConvLayout::Plain}) {
    const std::string ln = layout == ConvLayout::Plain ? "plain" : "blocked";
    benchmark::RegisterBenchmark(("Conv/patch_embed_1x1x992x128_512x16x16/fwd/" + ln).c_str(), BM_PatchEmbed, false,
                                 layout)
        ->Apply(timing)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("Conv/patch_embed_1x1x992x128_512x16x16/bwd_weights/" + ln).c_str(), BM_PatchEmbed,
                                 true, layout)
        ->Apply(timing)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("Conv/pos_conv1d_768x496_k128_g16/fwd/primitive_" + ln).c_str(), BM_PosConv, false,
                                 layout, Conv1dPath::Primitive)
        ->Apply(timing)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("Conv/pos_conv1d_768x496_k128_g16/bwd/primitive_" + ln).c_str(), BM_PosConv, true,
                                 layout, Conv1dPath::Primitive)
        ->Apply(timing)
        ->Unit(benchmark::kMillisecond);
  }
  // Unfolded channel blocks + oneDNN sgemm, and the FFT segments (the default for this shape).
  for (const auto& [name, path] : {std::pair<const char*, Conv1dPath>{"im2col", Conv1dPath::Im2col},
                                   {"fft", Conv1dPath::Fft}})
    for (const bool backward : {false, true})
      benchmark::RegisterBenchmark(("Conv/pos_conv1d_768x496_k128_g16/" + std::string(backward ? "bwd/" : "fwd/") + name)
                                       .c_str(),
                                   BM_PosConv, backward, ConvLayout::Blocked, path)
          ->Apply(timing)
          ->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::string(argv[i]) == "--cpu_time") {
      g_cpu_time = true;
    } else {
      args.push_back(argv[i]);
    }
  }
  argc = static_cast<int>(args.size());
  argv = args.data();
  // Raw cblas_sgemm runs on as many threads as oneDNN (our OpenBLAS path does the same itself).
  openblas_set_num_threads(omp_get_max_threads());
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
