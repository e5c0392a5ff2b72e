// Tests of the codebook quantizers (nn/beats/quantizer.h): nearest-code search, cosine k-means, the EMA
// codebook and usage updates against a hand computation of the official formulas, the straight-through
// output and commitment loss, resizing and code replacement (for the online codebook), and the
// random-projection tokenizer.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/ops.h"
#include "nn/beats/quantizer.h"
#include "tensor/ops.h"

namespace sonar::beats {
namespace {

constexpr double kTol = 1e-5;

double max_diff(const Tensor& a, const Tensor& b) { return max_all(abs(sub(a, b))).item<double>(); }

TEST(Quantizer, NearestCodeIsTheLargestCosine) {
  Generator gen(1);
  Tensor codes = l2_normalize(randn({37, 8}, gen), 1);
  Tensor z = l2_normalize(randn({200, 8}, gen), 1);
  Tensor idx = nearest_codes(z, codes);
  Tensor want = argmax(matmul(z, codes, false, true), 1);
  EXPECT_EQ(idx.to_vector<int64_t>(), want.to_vector<int64_t>());
  EXPECT_THROW(nearest_codes(z, l2_normalize(randn({37, 7}, gen), 1)), Error);
}

TEST(Quantizer, CosineKMeansReachesAFixedPoint) {
  Generator gen(2);
  // Four directions with 50 noisy samples each: ten rounds converge, so the result is a fixed point of the
  // official iteration (assign by dot product, normalised mean per cluster) whatever the random seeds were.
  Tensor centres = l2_normalize(randn({4, 6}, gen), 1);
  Tensor labels = randint(0, 4, {200}, gen);
  Tensor samples = l2_normalize(add(index_select(centres, 0, labels), mul(randn({200, 6}, gen), 0.05f)), 1);
  KMeansResult r = kmeans_cosine(samples, 4, 10, gen);
  EXPECT_EQ(sum(r.bins).item<int64_t>(), 200);
  Tensor assign = argmax(matmul(samples, r.means, false, true), 1);
  for (int64_t c = 0; c < 4; ++c) {
    Tensor members = eq(assign, full({200}, static_cast<double>(c), DType::Int64));
    const int64_t n = sum(members.to(DType::Int64)).item<int64_t>();
    EXPECT_EQ(n, r.bins.at({c})) << "cluster " << c;
    if (n == 0) continue;
    Tensor m = l2_normalize(sum(mul(samples, members.to(DType::Float32).unsqueeze(1)), {0}), 0);
    EXPECT_LT(max_diff(m, r.means.select(0, c)), kTol) << "cluster " << c;
  }
  // Fewer samples than clusters: sampling with replacement, still k means.
  KMeansResult small = kmeans_cosine(samples.narrow(0, 0, 3), 5, 2, gen);
  EXPECT_EQ(small.means.shape(), (Shape{5, 6}));
}

TEST(Quantizer, TrainingInitialisesByKMeansThenFollowsTheEmaFormulas) {
  Generator gen(3);
  nn::RngScope scope(gen);
  NormEMAVectorQuantizer q(6, 4);
  EXPECT_FALSE(q.initialised());
  q.train();
  q.forward(ag::Var(randn({2, 10, 4}, gen)));
  EXPECT_TRUE(q.initialised());
  EXPECT_LT(max_diff(norm(q.codebook(), 2.0, {1}), ones({6})), kTol);

  // One more step, checked against the official update computed here by hand.
  const Tensor w0 = q.codebook().clone(), usage0 = q.usage().clone();
  Tensor z_in = randn({1, 12, 4}, gen);
  QuantizerOutput out = q.forward(ag::Var(z_in));
  Tensor z = l2_normalize(z_in.reshape({12, 4}), 1);
  Tensor idx = nearest_codes(z, w0);
  EXPECT_EQ(out.indices.to_vector<int64_t>(), idx.to_vector<int64_t>());
  std::vector<float> counts(6, 0.0f), sums(24, 0.0f);
  for (int64_t n = 0; n < 12; ++n) {
    const int64_t k = static_cast<int64_t>(idx.at({n}));
    counts[k] += 1.0f;
    for (int64_t j = 0; j < 4; ++j) sums[k * 4 + j] += static_cast<float>(z.at({n, j}));
  }
  Tensor want_w = Tensor::empty({6, 4});
  for (int64_t k = 0; k < 6; ++k) {
    Tensor target = counts[k] > 0 ? l2_normalize(div(from_vector(std::vector<float>(sums.begin() + k * 4, sums.begin() + k * 4 + 4), {4}), counts[k]), 0)
                                  : w0.select(0, k);
    want_w.select(0, k).copy_(l2_normalize(add(mul(w0.select(0, k), 0.99f), mul(target, 0.01f)), 0));
  }
  EXPECT_LT(max_diff(q.codebook(), want_w), kTol);
  Tensor want_usage = add(mul(usage0, 0.99f), mul(from_vector(counts, {6}), 0.01f));
  EXPECT_LT(max_diff(q.usage(), want_usage), kTol);

  // Loss and straight-through output.
  Tensor codes = index_select(w0, 0, idx).reshape({1, 12, 4});
  EXPECT_LT(max_diff(out.z_q.value(), codes), kTol);
  EXPECT_NEAR(out.loss.item(), mean(pow(sub(codes, z.reshape({1, 12, 4})), 2.0f)).item<double>(), kTol);
}

TEST(Quantizer, StraightThroughGradientAndEvalUsage) {
  Generator gen(4);
  NormEMAVectorQuantizer q(5, 3, 1.0f, 0.99f, 1e-5f, false, &gen);
  EXPECT_TRUE(q.initialised());
  q.eval();
  Tensor x = randn({7, 3}, gen), r = randn({7, 3}, gen);
  ag::Var a(x.clone(), true), b(x.clone(), true);
  const Tensor usage0 = q.usage().clone();
  QuantizerOutput out = q.forward(a);
  ag::sum(ag::mul(out.z_q, ag::Var(r))).backward();
  ag::sum(ag::mul(ag::l2_normalize(b, -1), ag::Var(r))).backward();
  EXPECT_LT(max_diff(a.grad(), b.grad()), kTol);
  // Official quirk: in eval mode the usage still follows an EMA of the assignments; codes stay.
  std::vector<float> counts(5, 0.0f);
  for (int64_t v : out.indices.to_vector<int64_t>()) counts[v] += 1.0f;
  EXPECT_LT(max_diff(q.usage(), add(mul(usage0, 0.99f), mul(from_vector(counts, {5}), 0.01f))), kTol);
  q.track_usage_in_eval = false;
  const Tensor usage1 = q.usage().clone();
  q.forward(ag::Var(x));
  EXPECT_EQ(max_diff(q.usage(), usage1), 0.0);
}

TEST(Quantizer, ResizeReplaceAndLoadingALargerCodebook) {
  Generator gen(5);
  NormEMAVectorQuantizer q(4, 3, 1.0f, 0.99f, 1e-5f, false, &gen);
  const Tensor w = q.codebook().clone();
  q.resize(6);
  EXPECT_EQ(q.num_codes(), 6);
  EXPECT_EQ(q.embedding->embed_avg.shape(), (Shape{6, 3}));
  EXPECT_EQ(max_diff(q.codebook().narrow(0, 0, 4), w), 0.0);
  EXPECT_EQ(max_all(abs(q.codebook().narrow(0, 4, 2))).item<double>(), 0.0);
  EXPECT_EQ(max_all(q.usage().narrow(0, 4, 2)).item<double>(), 0.0);
  q.replace_codes(from_vector(std::vector<int64_t>{5}, {1}), from_vector(std::vector<float>{0, 3, 4}, {1, 3}), 2.5f);
  EXPECT_NEAR(q.codebook().at({5, 1}), 0.6, kTol);
  EXPECT_NEAR(q.codebook().at({5, 2}), 0.8, kTol);
  EXPECT_EQ(q.usage().at({5}), 2.5);
  EXPECT_THROW(q.replace_codes(from_vector(std::vector<int64_t>{6}, {1}), ones({1, 3}), 1.0f), Error);
  q.resize(2);
  EXPECT_EQ(q.num_codes(), 2);

  // A state dict with 6 codes resizes a 2-code quantizer on load.
  NormEMAVectorQuantizer big(6, 3, 1.0f, 0.99f, 1e-5f, false, &gen);
  std::map<std::string, Tensor> sd;
  for (auto& [k, t] : big.state_dict()) sd[k] = t;
  q.load_state_dict(sd);
  EXPECT_EQ(q.num_codes(), 6);
  EXPECT_EQ(max_diff(q.codebook(), big.codebook()), 0.0);
}

TEST(Quantizer, RandomProjectionTokenizer) {
  Generator g1(6), g2(6), g3(7);
  RandomProjectionTokenizer a(4, 16, 8, &g1), b(4, 16, 8, &g2), c(4, 16, 8, &g3);
  Generator data(8);
  Tensor fb = randn({2, 13, 8}, data);  // 3 time patches x 2 frequency patches (one frame left over)
  Tensor p = a.patches(fb);
  ASSERT_EQ(p.shape(), (Shape{2, 6, 16}));
  // Patch 3 = time patch 1, frequency patch 1; flattened frame-major.
  EXPECT_EQ(p.at({1, 3, 0}), fb.at({1, 4, 4}));
  EXPECT_EQ(p.at({1, 3, 5}), fb.at({1, 5, 5}));
  Tensor la = a.labels(fb);
  ASSERT_EQ(la.shape(), (Shape{2, 6}));
  EXPECT_EQ(la.to_vector<int64_t>(), b.labels(fb).to_vector<int64_t>());
  EXPECT_NE(la.to_vector<int64_t>(), c.labels(fb).to_vector<int64_t>());
  Tensor z = a.project(fb).reshape({12, 8});
  EXPECT_EQ(la.reshape({12}).to_vector<int64_t>(),
            argmax(matmul(z, a.codebook.value(), false, true), 1).to_vector<int64_t>());
  EXPECT_THROW(a.labels(randn({1, 3, 8}, data)), Error);
}

}  // namespace
}  // namespace sonar::beats
