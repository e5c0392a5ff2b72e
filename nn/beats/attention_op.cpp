// Autograd wrapper of the fused attention kernel (see nn/beats/attention_op.h). The closure saves the input
// values, the mask, the forward's row log-sum-exp and, while they are small (kKeepProbsMaxBytes), the
// probabilities; larger ones are recomputed in the backward.
#include "nn/beats/attention_op.h"

namespace sonar::beats {

ag::Var attention(const ag::Var& q, const ag::Var& k, const ag::Var& v, const ag::Var& bias, const ag::Var& gate,
                  const Tensor& key_padding_mask, const AttentionParams& p) {
  const Tensor qv = q.value(), kv = k.value(), vv = v.value();
  const Tensor bv = bias.defined() ? bias.value() : Tensor();
  const Tensor gv = gate.defined() ? gate.value() : Tensor();
  AttentionNeeds needs;
  needs.q = ag::needs_grad(q);
  needs.k = ag::needs_grad(k);
  needs.v = ag::needs_grad(v);
  needs.bias = ag::needs_grad(bias);
  needs.gate = ag::needs_grad(gate);
  const bool any = needs.q || needs.k || needs.v || needs.bias || needs.gate;
  AttentionParams pf = p;
  const int64_t scores =
      qv.dim() == 3 && kv.dim() == 3 ? attention_dropout_counters(qv.size(0), p.num_heads, qv.size(1), kv.size(1)) : 0;
  pf.keep_probs = any && scores * static_cast<int64_t>(sizeof(float)) <= kKeepProbsMaxBytes;
  AttentionForward fwd = attention_forward(qv, kv, vv, bv, gv, key_padding_mask, pf);
  if (!any) return ag::make_result(fwd.out, {}, nullptr, "attention");
  AttentionForward saved;
  saved.lse = fwd.lse;
  saved.probs = fwd.probs;
  return ag::make_result(
      fwd.out, {q, k, v, bias, gate},
      [qv, kv, vv, bv, gv, key_padding_mask, saved, p, needs](const Tensor& grad_out) {
        AttentionGrads g = attention_backward(grad_out, qv, kv, vv, bv, gv, key_padding_mask, saved, p, needs);
        return std::vector<Tensor>{g.dq, g.dk, g.dv, g.dbias, g.dgate};
      },
      "attention");
}

}  // namespace sonar::beats
