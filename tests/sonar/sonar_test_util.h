// Fixtures shared by the SONAR method's test programs (tests/sonar/test_*.cpp) and the data-parallel ones
// (tests/apps/test_cmd_distributed*.cpp): the small synthetic corpus, a clean-up of a program's scratch paths
// after its last test, the tiny run options, a dropout-free tiny start model, a NaN-aware max abs difference and
// the comparison of two checkpoint files. Every seed, path and tolerance is a parameter, so each test program
// keeps its own and computes what it did. Header-only and test-only (the build turns only tests/*/test_*.cpp
// into programs); not a test itself. General helpers live in tests/test_util.h.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "audio/synth_corpus.h"
#include "nn/beats/checkpoint.h"
#include "sonar/method.h"
#include "tensor/io.h"
#include "tensor/random.h"
#include "tests/test_util.h"

namespace sonar::testutil {

// The tests' synthetic corpus at `dir`: 4 clips per class (16 per domain) of 1.5 s, `prior_clips` in the prior
// pool, drawn from `seed`. Returns `dir`.
inline std::string build_tiny_corpus(const std::filesystem::path& dir, int64_t prior_clips, uint64_t seed) {
  audio::SynthCorpusOptions o;
  o.clips_per_class = 4;
  o.prior_clips = prior_clips;
  o.seconds = 1.5;
  o.seed = seed;
  audio::build_synth_corpus(dir.string(), o);
  return dir.string();
}

// Removes its paths after the last test of the program.
class RemoveAfterAllTests : public ::testing::Environment {
 public:
  explicit RemoveAfterAllTests(std::vector<std::filesystem::path> paths) : paths_(std::move(paths)) {}
  void TearDown() override {
    for (const auto& p : paths_) std::filesystem::remove_all(p);
  }

 private:
  std::vector<std::filesystem::path> paths_;
};

// Registers the removal of `paths` after the last test; call once at namespace scope:
//   const ::testing::Environment* const kCleanup = remove_after_all_tests({scratch});
inline const ::testing::Environment* remove_after_all_tests(std::vector<std::filesystem::path> paths) {
  return ::testing::AddGlobalTestEnvironment(new RemoveAfterAllTests(std::move(paths)));
}

// The tiny run of the tests, for PretrainOptions and TokenizerTrainOptions alike: the tiny preset with 32 codes
// on 1-second crops (clips up to 2 s) of the manifest `data`, batches of 4, lr 2e-3 with 2 warm-up steps, a log
// line every 2 steps and a checkpoint every 3, one loader thread, no log output.
template <class RunOptions>
RunOptions tiny_run_options(const std::string& data, const std::string& out, int64_t steps, uint64_t seed) {
  RunOptions o;
  o.data = data;
  o.out_dir = out;
  o.preset = "tiny";
  o.codes = 32;
  o.crop_seconds = 1.0;
  o.max_clip_seconds = 2.0;
  o.batch_size = 4;
  o.steps = steps;
  o.adamw.lr = 2e-3f;
  o.warmup_steps = 2;
  o.seed = seed;
  o.log_every = 2;
  o.save_every = 3;
  o.loader_workers = 1;
  o.log = [](const std::string&) {};
  return o;
}

// A fresh tiny BEATs drawn from `seed` with dropout, attention, activation dropout and layer drop off (the input
// dropout kept), saved with save_beats at `path` (its folder created).
inline void save_dropout_free_tiny_model(const std::filesystem::path& path, uint64_t seed) {
  beats::BeatsConfig c = method::preset_config("tiny");
  c.dropout = c.attention_dropout = c.activation_dropout = c.encoder_layerdrop = 0.0;
  Generator g(seed);
  beats::BeatsModel m(c, &g);
  std::filesystem::create_directories(path.parent_path());
  beats::save_beats(path.string(), m);
}

// Largest |a - b| over the elements, compared as float32; infinity when the shapes or dtypes differ (a test
// failure too) or a NaN stands where the other tensor has a number.
inline float max_abs_diff_nan_aware(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  EXPECT_EQ(a.dtype(), b.dtype());
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return INFINITY;
  const Tensor ac = a.to(DType::Float32).contiguous(), bc = b.to(DType::Float32).contiguous();
  const float* x = ac.data<float>();
  const float* y = bc.data<float>();
  float m = 0.0f;
  for (int64_t i = 0; i < ac.numel(); ++i) {
    if (std::isnan(x[i]) != std::isnan(y[i])) return INFINITY;
    m = std::max(m, std::fabs(x[i] - y[i]));
  }
  return m;
}

// Every tensor of two checkpoint files within `tolerance` of its namesake (max_abs_diff_nan_aware), and the same
// metadata except the wall-clock time ("trainer.elapsed-seconds").
inline void expect_same_checkpoint(const std::string& a, const std::string& b, float tolerance) {
  SafeTensorsFile fa = load_safetensors(a), fb = load_safetensors(b);
  ASSERT_EQ(fa.tensors.size(), fb.tensors.size());
  for (const auto& [name, t] : fa.tensors) {
    auto it = fb.tensors.find(name);
    ASSERT_NE(it, fb.tensors.end()) << name;
    EXPECT_LE(max_abs_diff_nan_aware(t, it->second), tolerance) << name;
  }
  for (const auto& [k, v] : fa.metadata) {
    if (k == "trainer.elapsed-seconds") continue;
    EXPECT_EQ(v, fb.metadata[k]) << k;
  }
}

}  // namespace sonar::testutil
