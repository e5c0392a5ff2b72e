// Fused multi-head scaled dot-product attention with BEATs' extras, as one forward and one backward kernel:
// per-head score stabilisation (scale q by scale/alpha, subtract the row max, multiply by alpha), an additive
// relative position bias shared by the batch, either [H, T, S] or, when it depends only on the offset s - t
// (BEATs' bucketed relative positions), [H, T + S - 1], an optional per-query gate [B, H, T] multiplying that
// bias (BEATs' gated relative position bias), a key padding mask and attention dropout drawn from a
// counter-based generator (so backward regenerates the same mask instead of storing it).
//
// Memory: by default the forward keeps only the row log-sum-exp [B, H, T] and the backward recomputes the
// probabilities one (batch, head) at a time, so no [B, H, T, S] tensor is ever materialised. With
// AttentionParams::keep_probs the forward also stores the probabilities (4 bytes per score) and the backward
// reads them instead: one product of the five and two passes over each row fewer, for the memory.
// (nn/beats/attention_op.h keeps them in training while they are small; see kKeepProbsMaxBytes there.) The plain reference kernels beside
// the fast ones compute the same thing in double precision with the whole score tensor: the test oracle.
//
// Precision: with matmul_precision() == BF16 (tensor/precision.h) the five products take bfloat16 copies of
// their operands (q, k, v, dO per head; the probabilities and dL/dlogits per block) with float32
// accumulation, each as one oneDNN call over a block of query rows holding at most 1 MB of scores (a whole
// head at BEATs' lengths); the softmax, dropout, bias, gate,
// log-sum-exp and the kept probabilities stay float32. The float32 path is unchanged by it.
//
// Not here: the projections, the gate's small linear layer or the bias table lookup (nn/beats composes those
// from differentiable primitives) and autograd (nn/beats/attention_op.h wraps these kernels).
#pragma once
#include <cstdint>

#include "tensor/tensor.h"

namespace sonar {

struct AttentionParams {
  int64_t num_heads = 1;
  // Multiplies q.k (usually head_dim^-0.5).
  float scale = 1.0f;
  // BEATs' stabiliser: queries are multiplied by scale and then by 1/alpha, the row max of q.k is subtracted
  // and the result multiplied by alpha again. Mathematically a no-op (softmax is shift invariant); kept so
  // the rounding matches the official code. alpha = 1 gives plain attention with a max-subtracted softmax.
  float alpha = 1.0f;
  // Attention dropout on the probabilities (inverted scaling by 1/(1-p)). The keep decision of element
  // (b, h, t, s) is a pure function of (dropout_seed, dropout_offset + ((b*H + h)*T + t)*S + s).
  float dropout_p = 0.0f;
  uint64_t dropout_seed = 0;
  uint64_t dropout_offset = 0;
  // Forward only: also return the probabilities (before dropout) in AttentionForward::probs, for a backward
  // that then need not recompute them.
  bool keep_probs = false;
};

// Number of random counters one attention call with these shapes consumes (B*H*T*S), for advancing a
// Generator after a call with dropout.
int64_t attention_dropout_counters(int64_t batch, int64_t heads, int64_t tgt_len, int64_t src_len);

struct AttentionForward {
  Tensor out;  // [B, T, C]: head h in columns [h*D, (h+1)*D)
  Tensor lse;  // [B, H, T]: log-sum-exp of each row's final logits (-inf for a row whose keys are all masked)
  Tensor probs;  // [B, H, T, S] probabilities before dropout (0 in a fully masked row); only with keep_probs
};

// q [B, T, C], k and v [B, S, C] with C = H*D (float32; any strides, copied per head internally).
// bias: [H, T, S], or relative [H, T + S - 1] with bias[h, t, s] = relative[h, s - t + T - 1], or undefined.
// The relative form holds the same values without the T x S repetition: per layer of BEATs-base on a 10 s
// clip 24 KB instead of 11.8 MB to read in the forward, and to read and write in the backward. gate: [B, H, T]
// or undefined (then the bias is added as is; a gate needs a bias). key_padding_mask: [B, S] uint8/bool,
// nonzero = padding (that key gets -inf), or undefined.
// Row logits: alpha * (q*(scale/alpha) . k - rowmax) + gate[b,h,t] * bias[h,t,s], masked keys -inf.
// A query whose keys are all masked gets an all-zero output (the official code would produce NaN there).
AttentionForward attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                                   const Tensor& gate, const Tensor& key_padding_mask, const AttentionParams& p);

struct AttentionGrads {
  Tensor dq, dk, dv;  // shapes of q, k, v (contiguous)
  Tensor dbias;       // the bias's shape ([H, T, S] or relative [H, T + S - 1]), summed over the batch (and,
                      // relative, over each offset's (t, s) pairs); undefined unless requested and a bias given
  Tensor dgate;       // [B, H, T]; undefined unless requested and a gate was given
};
struct AttentionNeeds {
  bool q = true, k = true, v = true, bias = true, gate = true;
};

// Gradients of a scalar loss given dL/d out; `fwd` is what attention_forward returned for the same inputs
// (its lse always; its probs when defined, else the probabilities are recomputed from q, k, bias, gate, mask).
AttentionGrads attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& bias, const Tensor& gate, const Tensor& key_padding_mask,
                                  const AttentionForward& fwd, const AttentionParams& p,
                                  const AttentionNeeds& needs = {});

// Reference kernels: the same contract, computed with plain loops in double precision over the full
// [B, H, T, S] probability tensor. Slow; for tests.
AttentionForward attention_forward_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                                             const Tensor& gate, const Tensor& key_padding_mask,
                                             const AttentionParams& p);
AttentionGrads attention_backward_reference(const Tensor& grad_out, const Tensor& q, const Tensor& k,
                                            const Tensor& v, const Tensor& bias, const Tensor& gate,
                                            const Tensor& key_padding_mask, const AttentionParams& p,
                                            const AttentionNeeds& needs = {});

// The keep decision attention dropout uses for counter `counter` (exposed for tests).
bool attention_dropout_keep(uint64_t seed, uint64_t counter, float p);

}  // namespace sonar
