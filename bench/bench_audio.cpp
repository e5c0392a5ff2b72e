// Audio front-end throughput, in seconds of audio processed per second of wall time ("audio_s/s"):
// Kaldi fbank of a 10 s clip (one clip with all threads, one clip on one thread, a batch of clips spread
// over the OpenMP threads), 44.1 kHz -> 16 kHz resampling, and decoding a 10 s FLAC file end to end.
// Compare with bench/torchaudio_fbank.py, which times torchaudio's Kaldi fbank on the same machine.
// Not a correctness test (tests/audio/test_fbank.cpp is).
#include <benchmark/benchmark.h>
#include <omp.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "audio/decode.h"
#include "audio/fbank.h"
#include "audio/resample.h"

using namespace sonar;
using namespace sonar::audio;

namespace {

constexpr double kClipSeconds = 10.0;

// A 10 s test signal: a chirp plus a little noise (deterministic), like speech/music in level.
std::vector<float> test_clip(int rate = 16000, uint32_t seed = 1) {
  const int64_t n = static_cast<int64_t>(kClipSeconds * rate);
  std::vector<float> w(n);
  uint32_t s = seed;
  for (int64_t i = 0; i < n; ++i) {
    const double t = static_cast<double>(i) / rate;
    s = s * 1664525u + 1013904223u;
    w[i] = static_cast<float>(0.3 * std::sin(2 * M_PI * (100 * t + 300 * t * t)) + 0.02 * (s / 4294967296.0 - 0.5));
  }
  return w;
}

void set_rate(benchmark::State& state, double clips) {
  state.counters["audio_s/s"] = benchmark::Counter(clips * kClipSeconds * static_cast<double>(state.iterations()),
                                                   benchmark::Counter::kIsRate);
  // Seconds per 10 s clip (printed with an SI prefix: "1.7m" is 1.7 ms).
  state.counters["s/clip"] = benchmark::Counter(clips * static_cast<double>(state.iterations()),
                                                benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// One 10 s clip; range(0) = threads (0: OpenMP default, frames split across threads).
void BM_FbankClip(benchmark::State& state) {
  const auto w = test_clip();
  Tensor wave = from_vector(w, {static_cast<int64_t>(w.size())});
  FbankOptions o;
  o.num_threads = static_cast<int>(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(fbank(wave, o));
  state.SetLabel(o.num_threads == 1 ? "1 thread" : std::to_string(omp_get_max_threads()) + " threads");
  set_rate(state, 1);
}
BENCHMARK(BM_FbankClip)->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond)->UseRealTime();

// A batch of range(0) 10 s clips, frames of all clips spread over the OpenMP threads.
void BM_FbankBatch(benchmark::State& state) {
  const int64_t B = state.range(0);
  std::vector<float> all;
  for (int64_t b = 0; b < B; ++b) {
    const auto w = test_clip(16000, 1 + static_cast<uint32_t>(b));
    all.insert(all.end(), w.begin(), w.end());
  }
  Tensor waves = from_vector(all, {B, static_cast<int64_t>(all.size() / B)});
  for (auto _ : state) benchmark::DoNotOptimize(fbank_batch(waves));
  state.SetLabel(std::to_string(omp_get_max_threads()) + " threads");
  set_rate(state, static_cast<double>(B));
}
BENCHMARK(BM_FbankBatch)->Arg(8)->Arg(32)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Resample44kTo16k(benchmark::State& state) {
  const auto w = test_clip(44100);
  for (auto _ : state) benchmark::DoNotOptimize(resample(w.data(), static_cast<int64_t>(w.size()), 44100, 16000));
  set_rate(state, 1);
}
BENCHMARK(BM_Resample44kTo16k)->Unit(benchmark::kMillisecond)->UseRealTime();

// Decode a 10 s stereo 44.1 kHz FLAC, mix down, resample, fbank: what one loader worker does per clip.
void BM_FlacToFbank(benchmark::State& state) {
  const std::string path = "/tmp/sonar_bench_audio_" + std::to_string(::getpid()) + ".flac";
  const auto mono = test_clip(44100);
  std::vector<float> stereo;
  for (float v : mono) stereo.insert(stereo.end(), {v, 0.8f * v});
  write_audio(path, stereo, 2, 44100, SampleFormat::PCM16);
  FbankOptions o;
  o.num_threads = 1;
  for (auto _ : state) benchmark::DoNotOptimize(fbank(load_audio(path), o));
  std::filesystem::remove(path);
  state.SetLabel("1 thread");
  set_rate(state, 1);
}
BENCHMARK(BM_FlacToFbank)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
