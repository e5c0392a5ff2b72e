// The fused attention kernel (tensor/attention.h) as one differentiable autograd op: one node whose backward
// calls attention_backward for exactly the inputs that need a gradient. Not here: projections, gates or the
// bias lookup (nn/beats/encoder.h composes those).
#pragma once
#include "autograd/var.h"
#include "tensor/attention.h"

namespace sonar::beats {

// q [B, T, C], k and v [B, S, C]; bias [H, T, S] and gate [B, H, T] may be undefined Vars (a gate needs a
// bias); key_padding_mask [B, S] (nonzero = padding) or undefined. Returns [B, T, C]. With dropout in `p`,
// the caller picks the seed and offset (the backward regenerates the same mask).
// The forward keeps the probabilities for the backward (which then skips one product of five and the row
// max and exp) when a gradient is needed and they take at most this many bytes: BEATs-base on one 10 s clip
// keeps 11.8 MB a layer (12 heads x 496 x 496), 142 MB over 12 layers; a batch of four such clips or a 40 s
// clip (188 MB a layer) recomputes them instead.
constexpr int64_t kKeepProbsMaxBytes = int64_t{32} << 20;

ag::Var attention(const ag::Var& q, const ag::Var& k, const ag::Var& v, const ag::Var& bias, const ag::Var& gate,
                  const Tensor& key_padding_mask, const AttentionParams& p);

}  // namespace sonar::beats
