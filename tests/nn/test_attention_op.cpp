// Tests of the differentiable fused attention op (nn/beats/attention_op.h): finite-difference gradients of
// every input through the autograd engine, including strided q/k/v views, and that only the inputs that
// require a gradient get one. The kernels themselves are tested in tests/tensor/test_attention.cpp.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "nn/beats/attention_op.h"
#include "tensor/ops.h"

namespace sonar::beats {
namespace {

AttentionParams beats_params(int64_t heads, int64_t head_dim) {
  AttentionParams p;
  p.num_heads = heads;
  p.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  p.alpha = 32.0f;
  return p;
}

TEST(AttentionOp, GradcheckAllInputsWithMask) {
  const int64_t B = 2, T = 5, H = 2, D = 3, C = H * D;
  Generator gen(9);
  std::vector<uint8_t> m(B * T, 0);
  m[B * T - 1] = m[B * T - 2] = 1;
  const Tensor mask = from_bytes(m, {B, T});
  const AttentionParams p = beats_params(H, D);
  ag::GradcheckResult r = ag::gradcheck(
      [&](const std::vector<ag::Var>& in) {
        return attention(in[0], in[1], in[2], in[3], in[4], mask, p);
      },
      {randn({B, T, C}, gen), randn({B, T, C}, gen), randn({B, T, C}, gen), randn({H, T, T}, gen),
       add(rand({B, H, T}, gen), 0.5f)});
  EXPECT_TRUE(r.ok) << r.report;
  EXPECT_GT(r.checked, 0);
}

TEST(AttentionOp, GradcheckThroughStridedProjections) {
  // q, k, v as narrowed views of one fused projection, as a fused qkv layer would produce.
  const int64_t B = 1, T = 6, H = 2, D = 2, C = H * D;
  Generator gen(10);
  const AttentionParams p = beats_params(H, D);
  ag::GradcheckResult r = ag::gradcheck(
      [&](const std::vector<ag::Var>& in) {
        ag::Var qkv = ag::matmul(in[0], in[1]);  // [B, T, 3C]
        return attention(ag::narrow(qkv, 2, 0, C), ag::narrow(qkv, 2, C, C), ag::narrow(qkv, 2, 2 * C, C),
                         in[2], ag::Var(), Tensor(), p);
      },
      {randn({B, T, C}, gen), randn({C, 3 * C}, gen), randn({H, T, T}, gen)});
  EXPECT_TRUE(r.ok) << r.report;
}

TEST(AttentionOp, OnlyInputsThatRequireGradGetOne) {
  const int64_t B = 1, T = 4, H = 1, D = 4;
  Generator gen(11);
  ag::Var q(randn({B, T, D}, gen), true), k(randn({B, T, D}, gen)), v(randn({B, T, D}, gen), true);
  ag::Var bias(randn({H, T, T}, gen));
  ag::Var out = attention(q, k, v, bias, ag::Var(), Tensor(), beats_params(H, D));
  ag::sum(out).backward();
  EXPECT_TRUE(q.grad().defined());
  EXPECT_TRUE(v.grad().defined());
  EXPECT_FALSE(k.grad().defined());
  EXPECT_FALSE(bias.grad().defined());
  {
    ag::NoGradGuard ng;
    ag::Var o2 = attention(q, k, v, bias, ag::Var(), Tensor(), beats_params(H, D));
    EXPECT_EQ(o2.grad_fn(), nullptr);
  }
}

}  // namespace
}  // namespace sonar::beats
