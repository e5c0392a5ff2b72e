// Tests of audio/augment: SpecAugment masks (shape of the masked region, padding untouched, seeded), time
// roll (an exact rotation of the real frames), Beta sampling moments, mixup arithmetic on inputs, targets
// and masks, and augment_batch_ on a loader-shaped batch.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "audio/augment.h"

using namespace sonar;
using namespace sonar::audio;

namespace {

constexpr double kBetaMeanTol = 0.01;  // 20000 draws: standard error ~0.002
constexpr double kBetaVarTol = 0.005;
constexpr double kMixTol = 1e-6;

// [B, T, F] with distinct nonzero values; frame mask with `real[b]` real frames per clip.
Tensor ramp(int64_t B, int64_t T, int64_t F) {
  std::vector<float> v(B * T * F);
  for (size_t i = 0; i < v.size(); ++i) v[i] = 1.0f + static_cast<float>(i);
  return from_vector(v, {B, T, F});
}

Tensor frame_mask(int64_t T, const std::vector<int64_t>& real) {
  std::vector<uint8_t> m;
  for (int64_t n : real)
    for (int64_t t = 0; t < T; ++t) m.push_back(t >= n ? 1 : 0);
  return from_bytes(m, {static_cast<int64_t>(real.size()), T}, DType::Bool);
}

}  // namespace

TEST(SpecAugment, FrequencyMaskIsOneBandOverTheRealFrames) {
  const int64_t B = 3, T = 50, F = 64;
  const std::vector<int64_t> real = {50, 30, 1};
  Tensor mask = frame_mask(T, real);
  std::set<int64_t> widths;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    Tensor x = ramp(B, T, F), orig = x.clone();
    Generator g(seed);
    SpecAugmentOptions o;
    o.freq_masks = 1;
    o.time_masks = 0;
    o.max_freq_width = 10;
    spec_augment_(x, mask, o, g);
    for (int64_t b = 0; b < B; ++b) {
      std::vector<int64_t> cols;  // masked bins in the first frame
      for (int64_t f = 0; f < F; ++f)
        if (x.at({b, 0, f}) == 0.0) cols.push_back(f);
      ASSERT_LE(cols.size(), 10u);
      if (!cols.empty()) {
        EXPECT_EQ(cols.back() - cols.front() + 1, static_cast<int64_t>(cols.size()));  // one band
      }
      widths.insert(static_cast<int64_t>(cols.size()));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t f = 0; f < F; ++f) {
          const bool in_band = !cols.empty() && f >= cols.front() && f <= cols.back();
          const double want = t < real[b] && in_band ? 0.0 : orig.at({b, t, f});
          ASSERT_EQ(x.at({b, t, f}), want) << "clip " << b << " frame " << t << " bin " << f;
        }
    }
  }
  EXPECT_EQ(widths.size(), 11u);  // every width 0..10 occurs
}

TEST(SpecAugment, TimeMaskStaysInsideTheClipAndSeedsRepeat) {
  const int64_t B = 2, T = 40, F = 8;
  const std::vector<int64_t> real = {40, 12};
  Tensor mask = frame_mask(T, real);
  SpecAugmentOptions o;
  o.freq_masks = 0;
  o.time_masks = 1;
  o.max_time_width = 20;
  o.mask_value = -5.0f;
  for (uint64_t seed = 0; seed < 100; ++seed) {
    Tensor x = ramp(B, T, F), orig = x.clone();
    Generator g(seed);
    spec_augment_(x, mask, o, g);
    for (int64_t b = 0; b < B; ++b) {
      std::vector<int64_t> rows;
      for (int64_t t = 0; t < T; ++t)
        if (x.at({b, t, 0}) == -5.0) rows.push_back(t);
      ASSERT_LE(static_cast<int64_t>(rows.size()), std::min<int64_t>(20, real[b]));
      for (int64_t t : rows) ASSERT_LT(t, real[b]) << "masked a padding frame";
      if (!rows.empty()) {
        EXPECT_EQ(rows.back() - rows.front() + 1, static_cast<int64_t>(rows.size()));
      }
      for (int64_t t = 0; t < T; ++t)
        for (int64_t f = 0; f < F; ++f)
          if (std::find(rows.begin(), rows.end(), t) == rows.end()) {
            ASSERT_EQ(x.at({b, t, f}), orig.at({b, t, f}));
          }
    }
  }
  Tensor a = ramp(B, T, F), b = ramp(B, T, F);
  Generator g1(9), g2(9);
  spec_augment_(a, mask, SpecAugmentOptions{}, g1);
  spec_augment_(b, mask, SpecAugmentOptions{}, g2);
  EXPECT_EQ(a.to_vector<float>(), b.to_vector<float>());
  Tensor wrong = ramp(2, 5, 3);
  EXPECT_THROW(spec_augment_(wrong, mask, o, g1), Error);
}

TEST(TimeRoll, RotatesTheRealFramesExactly) {
  const int64_t B = 3, T = 20, F = 4;
  const std::vector<int64_t> real = {20, 7, 0};
  Tensor mask = frame_mask(T, real);
  for (uint64_t seed = 0; seed < 30; ++seed) {
    Tensor x = ramp(B, T, F), orig = x.clone();
    Generator g(seed);
    const auto shifts = time_roll_(x, mask, 5, g);
    ASSERT_EQ(shifts.size(), 3u);
    for (int64_t b = 0; b < B; ++b) {
      EXPECT_LE(std::abs(shifts[b]), 5);
      const int64_t n = real[b];
      for (int64_t t = 0; t < T; ++t)
        for (int64_t f = 0; f < F; ++f) {
          const int64_t src = t < n ? (((t - shifts[b]) % n) + n) % n : t;
          ASSERT_EQ(x.at({b, t, f}), orig.at({b, src, f})) << b << " " << t;
        }
    }
  }
}

TEST(Mixup, BetaMoments) {
  Generator g(1);
  for (auto [a, b] : std::vector<std::pair<double, double>>{{0.8, 0.8}, {2.0, 5.0}, {0.3, 0.3}}) {
    double s = 0, s2 = 0;
    const int n = 20000;
    for (int i = 0; i < n; ++i) {
      const double x = sample_beta(a, b, g);
      ASSERT_GE(x, 0.0);
      ASSERT_LE(x, 1.0);
      s += x, s2 += x * x;
    }
    const double mean = s / n, var = s2 / n - mean * mean;
    EXPECT_NEAR(mean, a / (a + b), kBetaMeanTol) << a << "," << b;
    EXPECT_NEAR(var, a * b / ((a + b) * (a + b) * (a + b + 1)), kBetaVarTol) << a << "," << b;
  }
  EXPECT_THROW(sample_beta(0, 1, g), Error);
}

TEST(Mixup, MixesInputsTargetsAndMasksWithOneDraw) {
  const int64_t B = 6, T = 5, F = 3;
  Tensor x = ramp(B, T, F);
  std::vector<float> tg(B * 4, 0.0f);
  for (int64_t b = 0; b < B; ++b) tg[b * 4 + b % 4] = 1.0f;
  Tensor targets = from_vector(tg, {B, 4});
  Tensor mask = frame_mask(T, {5, 4, 3, 5, 2, 1});
  for (bool per_example : {false, true}) {
    Generator g(3);
    MixupResult r = mixup(x, targets, mask, 0.8, g, per_example);
    std::vector<int64_t> sorted = r.partner;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t b = 0; b < B; ++b) ASSERT_EQ(sorted[b], b);
    if (!per_example) {
      for (float l : r.lambda) EXPECT_EQ(l, r.lambda[0]);
    }
    for (int64_t b = 0; b < B; ++b) {
      const double l = r.lambda[b];
      const int64_t p = r.partner[b];
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t f = 0; f < F; ++f)
          ASSERT_NEAR(r.inputs.at({b, t, f}), l * x.at({b, t, f}) + (1 - l) * x.at({p, t, f}), kMixTol * 100);
        ASSERT_EQ(r.mask.at({b, t}), mask.at({b, t}) && mask.at({p, t}) ? 1.0 : 0.0);
      }
      double sum = 0;
      for (int64_t c = 0; c < 4; ++c) {
        ASSERT_NEAR(r.targets.at({b, c}), l * targets.at({b, c}) + (1 - l) * targets.at({p, c}), kMixTol);
        sum += r.targets.at({b, c});
      }
      EXPECT_NEAR(sum, 1.0, kMixTol);  // mixed one-hot targets still sum to one
    }
  }
  Generator g(4);
  MixupResult off = mixup(x, targets, Tensor(), 0.0, g);
  EXPECT_EQ(off.inputs.to_vector<float>(), x.to_vector<float>());
  EXPECT_FALSE(off.mask.defined());
}

TEST(Augment, BatchLevelIsSeededAndUpdatesLabels) {
  auto make = [] {
    Batch b;
    b.fbank = ramp(4, 10, 6);
    b.frame_mask = frame_mask(10, {10, 8, 6, 10});
    b.waves = ramp(4, 1, 1600).view({4, 1600});
    b.padding_mask = from_bytes(std::vector<uint8_t>(4 * 1600, 0), {4, 1600}, DType::Bool);
    b.targets = from_vector(std::vector<float>{1, 0, 0, 1, 1, 0, 0, 1}, {4, 2});
    b.labels = from_vector(std::vector<int64_t>{0, 1, 0, 1}, {4});
    b.indices = {0, 1, 2, 3};
    return b;
  };
  AugmentOptions o;
  o.time_roll = true;
  o.mixup_alpha = 0.8;
  Batch a = make(), c = make();
  Generator g1(21), g2(21);
  augment_batch_(a, o, g1);
  augment_batch_(c, o, g2);
  EXPECT_EQ(a.fbank.to_vector<float>(), c.fbank.to_vector<float>());
  EXPECT_EQ(a.waves.to_vector<float>(), c.waves.to_vector<float>());
  EXPECT_EQ(a.targets.to_vector<float>(), c.targets.to_vector<float>());
  EXPECT_NE(a.fbank.to_vector<float>(), make().fbank.to_vector<float>());
  for (int64_t b = 0; b < 4; ++b) {
    double s = 0;
    for (int64_t k = 0; k < 2; ++k) s += a.targets.at({b, k});
    EXPECT_NEAR(s, 1.0, kMixTol);
  }
  const auto labels = a.labels.to_vector<int64_t>();
  for (int64_t b = 0; b < 4; ++b) {
    const double t0 = a.targets.at({b, 0});
    if (t0 != 0.0 && t0 != 1.0) {
      EXPECT_EQ(labels[b], -1) << "a mixed clip kept a single label";
    }
  }
}
