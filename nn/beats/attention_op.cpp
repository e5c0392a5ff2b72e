// Autograd wrapper of the fused attention kernel (see nn/beats/attention_op.h). The closure saves the input
// values, the mask and the forward's row log-sum-exp only; probabilities are recomputed in the backward.
#include "nn/beats/attention_op.h"

namespace sonar::beats {

ag::Var attention(const ag::Var& q, const ag::Var& k, const ag::Var& v, const ag::Var& bias, const ag::Var& gate,
                  const Tensor& key_padding_mask, const AttentionParams& p) {
  const Tensor qv = q.value(), kv = k.value(), vv = v.value();
  const Tensor bv = bias.defined() ? bias.value() : Tensor();
  const Tensor gv = gate.defined() ? gate.value() : Tensor();
  AttentionForward fwd = attention_forward(qv, kv, vv, bv, gv, key_padding_mask, p);
  AttentionNeeds needs;
  needs.q = ag::needs_grad(q);
  needs.k = ag::needs_grad(k);
  needs.v = ag::needs_grad(v);
  needs.bias = ag::needs_grad(bias);
  needs.gate = ag::needs_grad(gate);
  const bool any = needs.q || needs.k || needs.v || needs.bias || needs.gate;
  if (!any) return ag::make_result(fwd.out, {}, nullptr, "attention");
  Tensor lse = fwd.lse;
  Tensor out = fwd.out;
  return ag::make_result(
      out, {q, k, v, bias, gate},
      [qv, kv, vv, bv, gv, key_padding_mask, lse, p, needs](const Tensor& grad_out) {
        AttentionForward saved;
        saved.lse = lse;
        AttentionGrads g = attention_backward(grad_out, qv, kv, vv, bv, gv, key_padding_mask, saved, p, needs);
        return std::vector<Tensor>{g.dq, g.dk, g.dv, g.dbias, g.dgate};
      },
      "attention");
}

}  // namespace sonar::beats
