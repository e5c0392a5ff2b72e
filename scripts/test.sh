#!/usr/bin/env bash
# The project's test command: installs missing packages, configures and builds (Release) in build/,
# then runs every GoogleTest case through ctest, then a short fuzz step (each libFuzzer target for
# SONAR_CI_FUZZ_SECONDS, default 10, through scripts/fuzz.sh in build-fuzz/; SONAR_SKIP_FUZZ=1 skips it).
# Usage: scripts/test.sh [--sanitize] [extra ctest args]
#   --sanitize  builds the whole suite in build-asan/ with -fsanitize=address,undefined (GCC) and runs ctest
#               there instead (no fuzz step); see docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
sanitize=0
if [ "${1:-}" = "--sanitize" ]; then
  sanitize=1
  shift
fi
scripts/install-deps.sh
jobs=$(nproc)
if [ "$sanitize" = 1 ]; then
  # Benchmarks are not tests. Leak checking is off: OpenMP, OpenBLAS and oneDNN keep per-thread caches for
  # the life of the process by design.
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Release -DSONAR_SANITIZE=address,undefined -DSONAR_BUILD_BENCH=OFF
  export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  cmake --build build-asan -j"$jobs"
  cd build-asan
  exec ctest --output-on-failure -j"$jobs" "$@"
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs" "$@")
if [ "${SONAR_SKIP_FUZZ:-0}" != 1 ]; then
  scripts/fuzz.sh "${SONAR_CI_FUZZ_SECONDS:-10}"
fi
