// Process-wide matrix-product precision, bf16 support detection (cpuid for the instruction sets, oneDNN's
// effective ISA for what its kernels will use), the float32 -> bf16 conversion and the weight cache (see
// tensor/precision.h).
#include "tensor/precision.h"

#include <cpuid.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.h>
#include <tuple>

namespace sonar {

namespace {

std::atomic<Precision> g_precision{Precision::F32};
std::atomic<int64_t> g_conversions{0};

struct CpuBits {
  bool avx512f = false, avx512_bf16 = false, amx_tile = false, amx_bf16 = false;
};

CpuBits cpu_bits() {
  CpuBits c;
  unsigned a = 0, b = 0, cc = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &cc, &d)) {
    c.avx512f = (b >> 16) & 1u;
    c.amx_bf16 = (d >> 22) & 1u;
    c.amx_tile = (d >> 24) & 1u;
    if (__get_cpuid_count(7, 1, &a, &b, &cc, &d)) c.avx512_bf16 = (a >> 5) & 1u;
  }
  return c;
}

const char* isa_name(dnnl_cpu_isa_t isa) {
  switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "unknown";
  }
}

// ---- weight cache ----

struct WeightCacheState {
  std::mutex mu;
  std::map<const void*, int> registered;                                  // storage -> number of caches naming it
  // (storage, first element, span) -> the bf16 copy (UInt8, 2 bytes per element)
  std::map<std::tuple<const void*, const float*, int64_t>, Tensor> entries;
};

WeightCacheState& cache_state() {
  static WeightCacheState* s = new WeightCacheState();
  return *s;
}

Tensor convert_span(const float* first, int64_t span) {
  Tensor t = Tensor::empty({2 * span}, DType::UInt8);
  convert_to_bf16(first, reinterpret_cast<uint16_t*>(t.bytes()), span);
  return t;
}

}  // namespace

Precision parse_precision(const std::string& name) {
  if (name == "f32" || name == "float32") return Precision::F32;
  if (name == "bf16" || name == "bfloat16") return Precision::BF16;
  SONAR_FAIL("precision must be f32 or bf16, got '", name, "'");
}

const char* precision_name(Precision p) { return p == Precision::BF16 ? "bf16" : "f32"; }

bool cpu_has_amx_bf16() {
  const CpuBits c = cpu_bits();
  return c.amx_tile && c.amx_bf16;
}

std::string bf16_unsupported_reason() {
  const CpuBits c = cpu_bits();
  if (!c.avx512_bf16 && !(c.amx_tile && c.amx_bf16))
    return std::string("bf16 matrix products need the AVX512-BF16 (or AMX-BF16) instruction set, which this CPU "
                       "does not have") + (c.avx512f ? " (it has AVX-512F)" : "");
  // The CPU has it; check that oneDNN will use it (DNNL_MAX_CPU_ISA can cap its kernels), so that products
  // never run through its slow bf16 emulation.
  const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
  const unsigned need = static_cast<unsigned>(dnnl_cpu_isa_avx512_core_bf16);
  if ((static_cast<unsigned>(isa) & need) != need)
    return std::string("bf16 matrix products need the AVX512-BF16 instruction set, but oneDNN is limited to ") +
           isa_name(isa) + " (DNNL_MAX_CPU_ISA?)";
  return "";
}

void require_precision_supported(Precision p) {
  if (p == Precision::F32) return;
  const std::string why = bf16_unsupported_reason();
  SONAR_CHECK(why.empty(), why);
}

Precision matmul_precision() { return g_precision.load(std::memory_order_relaxed); }

void set_matmul_precision(Precision p) {
  require_precision_supported(p);
  g_precision.store(p, std::memory_order_relaxed);
}

PrecisionGuard::PrecisionGuard(Precision p) : previous_(matmul_precision()) { set_matmul_precision(p); }
PrecisionGuard::~PrecisionGuard() { g_precision.store(previous_, std::memory_order_relaxed); }

void convert_to_bf16(const float* src, uint16_t* dst, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > (int64_t{1} << 16))
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
}

float bf16_to_float(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- weight cache ----

Bf16WeightCache::Bf16WeightCache(const std::vector<Tensor>& weights) {
  if (matmul_precision() != Precision::BF16) return;
  WeightCacheState& s = cache_state();
  std::lock_guard<std::mutex> lock(s.mu);
  for (const Tensor& w : weights) {
    if (!w.defined() || w.dtype() != DType::Float32) continue;
    const void* st = w.storage().get();
    storages_.push_back(st);
    ++s.registered[st];
  }
  active_ = true;
}

Bf16WeightCache::~Bf16WeightCache() {
  if (!active_) return;
  WeightCacheState& s = cache_state();
  std::lock_guard<std::mutex> lock(s.mu);
  for (const void* st : storages_) {
    auto it = s.registered.find(st);
    if (it != s.registered.end() && --it->second == 0) s.registered.erase(it);
  }
  // Drop the copies of storages that no live cache names any more.
  for (auto it = s.entries.begin(); it != s.entries.end();)
    it = s.registered.count(std::get<0>(it->first)) ? std::next(it) : s.entries.erase(it);
}

int64_t bf16_weight_conversions() { return g_conversions.load(std::memory_order_relaxed); }

namespace bf16_detail {

Tensor bf16_span(const Tensor& owner, const float* first, int64_t span) {
  WeightCacheState& s = cache_state();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.registered.count(owner.storage().get()) == 0) return convert_span(first, span);
    auto it = s.entries.find({owner.storage().get(), first, span});
    if (it != s.entries.end()) return it->second;
  }
  Tensor copy = convert_span(first, span);
  g_conversions.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(s.mu);
  return s.entries.emplace(std::make_tuple(owner.storage().get(), first, span), copy).first->second;
}

}  // namespace bf16_detail

}  // namespace sonar
