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
ag::Var attention(const ag::Var& q, const ag::Var& k, const ag::Var& v, const ag::Var& bias, const ag::Var& gate,
                  const Tensor& key_padding_mask, const AttentionParams& p);

}  // namespace sonar::beats
