// The precision of matrix products, process-wide: float32 (the default, bit-for-bit the results of the float32
// kernels) or bf16 (opt-in: matrix products on the default oneDNN backend take bfloat16 operands, rounded to
// nearest even, and accumulate and write float32; so do the products inside the fused attention kernel,
// tensor/attention.h). Everything else stays float32 in both modes: parameters, gradients, optimiser state,
// softmax, layer norm, reductions, losses, convolutions, the rest of the attention kernel.
//
// bf16 needs a CPU whose bfloat16 dot products oneDNN uses: AVX512-BF16 (or AMX-BF16). Where they are missing
// (or disabled for oneDNN by DNNL_MAX_CPU_ISA), selecting bf16 throws one line naming the missing
// instruction set; nothing silently falls back to float32 or to emulation.
//
// Weights: a Bf16WeightCache names the tensors that stay constant while it lives (a model's parameters during
// one forward, or during one training step's forward and backward); each is converted to bf16 once, on first
// use, and reused by every product that reads it (W in the forward and W in dx = dy W share one conversion).
// Other operands (activations, gradients) are converted per product.
//
// Not here: the products themselves (tensor/matmul.cpp runs them through oneDNN).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace sonar {

enum class Precision { F32, BF16 };

// "f32" / "float32" or "bf16" / "bfloat16"; throws naming the value otherwise.
Precision parse_precision(const std::string& name);
const char* precision_name(Precision p);  // "f32" or "bf16"

// Empty when bf16 products can run here; otherwise one sentence naming the missing instruction set.
std::string bf16_unsupported_reason();
// Throws (one line, the reason above) when `p` cannot run on this machine; F32 always can.
void require_precision_supported(Precision p);
// True when the CPU has AMX-BF16 tiles (informational: oneDNN picks them by itself when present).
bool cpu_has_amx_bf16();

// The current precision of matrix products (process-wide; default F32).
Precision matmul_precision();
// Sets it (checks support first).
void set_matmul_precision(Precision p);

// Sets the precision for its lifetime and restores the previous one.
class PrecisionGuard {
 public:
  explicit PrecisionGuard(Precision p);
  ~PrecisionGuard();
  PrecisionGuard(const PrecisionGuard&) = delete;
  PrecisionGuard& operator=(const PrecisionGuard&) = delete;

 private:
  Precision previous_;
};

// While alive, bf16 products convert each of `weights` (any view of their storage) once and reuse the copy.
// The caller promises that their values do not change while it lives (build one per forward, or per
// training step around forward and backward, never across an optimiser update). Nested caches add to the
// outer ones. Does nothing, and costs nothing, in F32 mode.
class Bf16WeightCache {
 public:
  explicit Bf16WeightCache(const std::vector<Tensor>& weights);
  ~Bf16WeightCache();
  Bf16WeightCache(const Bf16WeightCache&) = delete;
  Bf16WeightCache& operator=(const Bf16WeightCache&) = delete;

 private:
  bool active_ = false;
  std::vector<const void*> storages_;
};

// Number of float32 -> bf16 conversions of cached weights since the process started (tests use it to check
// that a weight is converted once per cache, not once per product).
int64_t bf16_weight_conversions();

// Round-to-nearest-even float32 -> bfloat16 (NaN stays NaN), and back (exact). n elements; parallel for large n.
void convert_to_bf16(const float* src, uint16_t* dst, int64_t n);
// One element of that conversion (inline, so that kernels' own loops vectorise): round to nearest even on
// the bit pattern; a NaN keeps its sign and becomes a quiet NaN.
inline uint16_t float_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded);
}
float bf16_to_float(uint16_t v);

namespace bf16_detail {
// For tensor/matmul.cpp: the bf16 copy of the `span` elements starting at `first` (inside `owner`'s storage),
// from the active caches when owner's storage is registered there (converted on first use), else a fresh
// conversion. The returned tensor (UInt8, 2 bytes per element) keeps the copy alive.
Tensor bf16_span(const Tensor& owner, const float* first, int64_t span);
}  // namespace bf16_detail

}  // namespace sonar
