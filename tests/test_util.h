// Helpers shared by test programs of several layers: error-message checks, seeded uniform tensors, a strict
// float closeness check, max-abs difference, reading a file and counting matching lines, a per-test temporary
// folder, running the built `sonar` program, and the one-process vs `mpirun` comparisons of the data-parallel
// tests. Header-only and test-only (the build turns only tests/*/test_*.cpp into programs); not a test itself.
// Kernel-reference helpers for the tensor tests live in tests/tensor/kernel_ref.h, audio signal makers in
// tests/audio/audio_test_util.h.
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tensor/io.h"
#include "tensor/tensor.h"

namespace sonar::testutil {

// Expects `fn` to throw sonar::Error whose message contains every one of `parts`.
template <class F>
void expect_error(F&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected sonar::Error mentioning '" << (parts.empty() ? "" : parts[0]) << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
  }
}

// The message of the sonar::Error `f` throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Deterministic uniform [-1, 1) float32 values from a 64-bit LCG (no dependency on tensor/random.h); `salt`
// separates the streams of different test files.
inline Tensor lcg_uniform(const Shape& shape, uint64_t seed, uint64_t salt) {
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + salt;
  for (float& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<float>(static_cast<double>(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  }
  return from_vector(v, shape);
}

// Float32 tensors elementwise: |got - want| <= atol + rtol * |want|. Strict: any NaN or inf fails (unlike
// testref::expect_close, which lets NaN match NaN). Prints the first mismatches and the max abs error.
inline void expect_close_finite(const Tensor& got, const Tensor& want, double atol, double rtol,
                                const std::string& what) {
  ASSERT_TRUE(got.defined()) << what;
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const std::vector<float> g = got.to_vector<float>(), w = want.to_vector<float>();
  int bad = 0;
  double max_err = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const double err = std::fabs(static_cast<double>(g[i]) - w[i]);
    max_err = std::max(max_err, err);
    if (!(err <= atol + rtol * std::fabs(w[i]))) {
      if (bad < 5) ADD_FAILURE() << what << ": element " << i << " got " << g[i] << " want " << w[i];
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << g.size() << " mismatches, max abs err " << max_err;
}

// Largest |a - b| over the elements (as float32); the shapes must match (a mismatch is a test failure).
inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  const auto x = a.to_vector<float>(), y = b.to_vector<float>();
  double m = 0;
  for (size_t i = 0; i < std::min(x.size(), y.size()); ++i)
    m = std::max(m, std::abs(static_cast<double>(x[i]) - y[i]));
  return m;
}

// The whole content of the file at `path` ("" when it cannot be read).
inline std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// How many lines of `text` contain `needle`.
inline int count_lines_with(const std::string& text, const std::string& needle) {
  std::istringstream in(text);
  int n = 0;
  for (std::string l; std::getline(in, l);) n += l.find(needle) != std::string::npos;
  return n;
}

// A fresh empty folder named after the running test (and the process), removed at the end.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() / ("sonar_test_" + std::to_string(::getpid()) + "_" +
                                                      info->test_suite_name() + "_" + info->name());
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path_)) out.push_back(e.path().filename().string());
    return out;
  }

 private:
  std::filesystem::path path_;
};

// The built `sonar` program run with `args`: its exit code and its stdout and stderr together.
struct Run {
  int code = -1;
  std::string out;  // stdout and stderr together
};

// A shell command line run as is (add 2>&1 to catch stderr too).
inline Run run_shell(const std::string& cmd) {
  Run r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The built `sonar` program with `prefix` before its path (environment settings, a launcher).
inline Run run_sonar_with_prefix(const std::string& prefix, const std::string& args) {
  return run_shell(prefix + std::string(SONAR_BINARY_DIR) + "/sonar " + args + " 2>&1");
}

inline Run run_sonar(const std::string& args) { return run_sonar_with_prefix("", args); }

// The built `sonar` program run under `mpirun -np n` with `args`, 1 OpenMP thread per process (as root in CI:
// --allow-run-as-root; more processes than cores: --oversubscribe): exit code and output.
inline Run run_sonar_mpi(int n, const std::string& args) {
  return run_sonar_with_prefix("OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe -np " + std::to_string(n) +
                               " -x OMP_NUM_THREADS -x OMP_WAIT_POLICY ", args);
}

// `sonar args` fails (a non-zero exit) with exactly one line of output, which contains `needle`.
inline void expect_sonar_fails_in_one_line(const std::string& args, const std::string& needle) {
  const Run r = run_sonar(args);
  EXPECT_NE(r.code, 0) << args;
  EXPECT_NE(r.out.find(needle), std::string::npos) << args << "\n" << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;  // exactly one line
}

// A path under the temporary folder, `prefix` + pid + `name`, emptied (not created).
inline std::string fresh_tmp_path(const std::string& prefix, const std::string& name) {
  std::filesystem::path p = std::filesystem::temp_directory_path() / (prefix + std::to_string(::getpid()) + "_" + name);
  std::filesystem::remove_all(p);
  return p.string();
}

// ---- data-parallel runs (tests/apps/test_cmd_distributed*.cpp): one process vs `mpirun -np N` ----

// 20 AdamW steps from the same start, one process vs two: every weight within this distance of the
// one-process weight, relative to the largest magnitude of its tensor. Float sums in another order
// (the gradient all-reduce, smaller matrix products) move a weight by ~1e-6 relative per step; AdamW's
// normalised update can turn a near-zero gradient component's sign, which moves it by up to lr per step.
inline constexpr double kDataParallelWeightRelTol = 2e-2;
// ...and the mean absolute difference over all weights stays far smaller.
inline constexpr double kDataParallelMeanAbsTol = 2e-4;
// Absolute floor: the key projections' biases have an exactly zero true gradient (a shift of every key's score
// by the same q.b leaves the softmax unchanged), so they move only by AdamW-normalised float noise, which
// differs between the runs (seen: 2e-5 after 20 steps at lr 2e-3).
inline constexpr double kDataParallelNoiseFloor = 1e-4;

// `mpirun -np N` of the built sonar program, 1 thread each (run_sonar_mpi), and one process with 1 thread.
inline Run run_mpi(int n, const std::string& args) { return run_sonar_mpi(n, args); }
inline Run run_single(const std::string& args) { return run_sonar_with_prefix("OMP_NUM_THREADS=1 ", args); }

// Compares the BEATs weights (not the optimiser moments) of two model files.
inline void expect_close_models(const std::string& a, const std::string& b) {
  SafeTensorsFile fa = load_safetensors(a), fb = load_safetensors(b);
  ASSERT_EQ(fa.tensors.size(), fb.tensors.size());
  double sum_abs = 0.0;
  int64_t count = 0;
  for (const auto& [name, t] : fa.tensors) {
    ASSERT_TRUE(fb.tensors.count(name)) << name;
    const Tensor x = t.to(DType::Float32).contiguous(), y = fb.tensors.at(name).to(DType::Float32).contiguous();
    ASSERT_EQ(x.shape(), y.shape()) << name;
    double mag = 0.0, diff = 0.0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      mag = std::max(mag, std::fabs(double(x.data<float>()[i])));
      const double d = std::fabs(double(x.data<float>()[i]) - y.data<float>()[i]);
      diff = std::max(diff, d);
      sum_abs += d;
    }
    count += x.numel();
    EXPECT_LE(diff, kDataParallelWeightRelTol * mag + kDataParallelNoiseFloor)
        << name << ": max |diff| " << diff << ", max |w| " << mag;
  }
  EXPECT_LE(sum_abs / static_cast<double>(count), kDataParallelMeanAbsTol);
}

// The logged loss terms of both runs (metrics.jsonl) agree: the global loss of two processes is the one-process
// loss, so a wrong share of the global mean (which AdamW's scale invariance would hide in the weights) shows.
inline constexpr double kDataParallelLossRelTol = 1e-3;
inline void expect_same_losses(const std::string& a, const std::string& b) {
  auto lines = [](const std::string& dir) {
    std::vector<nlohmann::json> v;
    std::istringstream in(read_file(dir + "/metrics.jsonl"));
    std::string l;
    while (std::getline(in, l)) v.push_back(nlohmann::json::parse(l));
    return v;
  };
  const auto la = lines(a), lb = lines(b);
  ASSERT_EQ(la.size(), lb.size());
  ASSERT_FALSE(la.empty());
  for (size_t i = 0; i < la.size(); ++i)
    for (const char* k : {"loss", "mlp_loss", "masked_accuracy"}) {
      const double x = la[i].at(k).get<double>(), y = lb[i].at(k).get<double>();
      EXPECT_NEAR(x, y, kDataParallelLossRelTol * std::max(1.0, std::fabs(x)))
          << k << " at step " << la[i].at("step");
    }
}

}  // namespace sonar::testutil
