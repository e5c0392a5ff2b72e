#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/fuzz_*.cpp) with clang in build-fuzz/ (-fsanitize=fuzzer,address,
# undefined; only the parser sources, see fuzz/CMakeLists.txt) and runs each for SECONDS_PER_TARGET (default
# 60) with one job, seeded from tests/fixtures. Findings (crash-*, leak-*, timeout-*, oom-*) land in
# build-fuzz/findings/<target>/ and make the script fail; each one becomes a regression test with its input
# under tests/fixtures/ (docs/reliability.md). Installs clang-14, libclang-rt-14-dev and libomp-14-dev when
# missing (scripts/install-deps.sh --fuzz; the normal build does not need them).
#
# usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   environment: SONAR_FUZZ_BUILD (default build-fuzz), SONAR_FUZZ_JOBS (build jobs, default nproc),
#                SONAR_FUZZ_RSS_MB (libFuzzer -rss_limit_mb, default 2048), SONAR_FUZZ_MAX_LEN (default 262144)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-60}
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: SECONDS_PER_TARGET must be a whole number, not '$seconds'" >&2; exit 2; }
shift || true
build=$(realpath -m "${SONAR_FUZZ_BUILD:-build-fuzz}")  # absolute: the targets run from their findings folder
jobs=${SONAR_FUZZ_JOBS:-$(nproc)}

# clang and its runtime libraries (libFuzzer, ASan, UBSan, OpenMP): clang-14, libclang-rt-14-dev, libomp-14-dev.
scripts/install-deps.sh --fuzz
cxx=$(command -v clang++-14 || command -v clang++)
# Changing the compiler of an existing build folder makes CMake drop its cache (and with it
# SONAR_BUILD_FUZZ): start such a folder afresh instead.
if [ -f "$build/CMakeCache.txt" ] && ! grep -qx "CMAKE_CXX_COMPILER:[A-Z]*=$cxx" "$build/CMakeCache.txt"; then
  rm -rf "$build/CMakeCache.txt" "$build/CMakeFiles"
fi

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$cxx" -DSONAR_BUILD_FUZZ=ON \
  -DSONAR_BUILD_TESTS=OFF -DSONAR_BUILD_BENCH=OFF -DSONAR_NATIVE=OFF >/dev/null
cmake --build "$build" -j"$jobs"

# Seeds: every fixture of the right kind, plus the small hand-made ones under tests/fixtures/fuzz/<target>/.
seed() {  # target files...
  local dir="$build/corpus/$1"; shift
  mkdir -p "$dir"
  for f in "$@"; do [ -f "$f" ] && cp -f "$f" "$dir/seed-$(basename "$f")"; done
  return 0
}
fx=tests/fixtures
seed fuzz_torch_checkpoint $fx/beats_tiny/*.pt $fx/torch_io/*.pt $fx/fuzz/torch_checkpoint/*
seed fuzz_pickle $fx/fuzz/pickle/*
seed fuzz_safetensors $fx/fuzz/safetensors/*
seed fuzz_manifest $fx/fuzz/manifest/*
seed fuzz_audio $fx/fuzz/audio/*
# The plan findings are seeds too, except the 200 kB deep-nesting ones (plan_deep_*): each mutation of those
# costs about 0.3 s, which made the target 20 times slower; tests/sonar/test_experiment.cpp runs them.
plan_findings=()
for f in $fx/fuzz/regressions/plan_*; do [[ "$(basename "$f")" == plan_deep_* ]] || plan_findings+=("$f"); done
seed fuzz_experiment_plan $fx/fuzz/experiment_plan/* "${plan_findings[@]}"
# fuzz_npy: the first byte picks .npy (even) or .npz (odd).
mkdir -p "$build/corpus/fuzz_npy"
for f in $fx/beats_tiny/*.npy $fx/fuzz/npy/*.npy; do
  [ -f "$f" ] && { printf '\0'; cat "$f"; } > "$build/corpus/fuzz_npy/seed-$(basename "$f")"
done
for f in $fx/beats_tiny/*.npz $fx/fuzz/npy/*.npz; do
  [ -f "$f" ] && { printf '\1'; cat "$f"; } > "$build/corpus/fuzz_npy/seed-$(basename "$f")"
done

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for src in fuzz/fuzz_*.cpp; do targets+=("$(basename "$src" .cpp)"); done
fi
failed=()
for t in "${targets[@]}"; do
  out="$build/findings/$t"  # this run's findings only (an earlier run's are kept in $out.previous)
  rm -rf "$out.previous"
  [ -d "$out" ] && mv "$out" "$out.previous"
  mkdir -p "$out" "$build/corpus/$t"
  # The new corpus entries go to corpus/<target> (kept between runs); the seeds are read-only inputs.
  dict=()  # a dictionary of the format's words, when the target has one
  [ -f "fuzz/$t.dict" ] && dict=(-dict="$root/fuzz/$t.dict")
  start=$(date +%s)
  set +e
  # From inside $out: with -jobs, libFuzzer writes the job's output to fuzz-0.log in the current folder.
  (cd "$out" && UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=detect_leaks=1 \
    LSAN_OPTIONS="suppressions=$root/fuzz/lsan.supp:print_suppressions=0" \
    "$build/fuzz/$t" "$build/corpus/$t" -max_total_time="$seconds" -jobs=1 -workers=1 -timeout=20 \
      -rss_limit_mb="${SONAR_FUZZ_RSS_MB:-2048}" -max_len="${SONAR_FUZZ_MAX_LEN:-262144}" \
      -artifact_prefix="$out/" -print_final_stats=1 "${dict[@]}" >log.txt 2>&1)
  rc=$?
  set -e
  stats=$(cat "$out"/*.log "$out/log.txt" 2>/dev/null | grep -E "stat::number_of_executed_units|stat::peak_rss_mb" |
          head -2 | awk '{printf "%s ", $2}')
  echo "fuzz.sh: $t ran $(( $(date +%s) - start ))s, executions and peak RSS MB: ${stats:-?}, exit $rc"
  found=$(find "$out" -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' | wc -l)
  if [ $rc -ne 0 ] || [ "$found" -gt 0 ]; then
    failed+=("$t")
    cat "$out"/*.log "$out/log.txt" 2>/dev/null | grep -E "ERROR|SUMMARY|==[0-9]+==|runtime error" | head -5 >&2 || true
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: findings in ${failed[*]} (inputs and logs under $build/findings/)" >&2
  exit 1
fi
echo "fuzz.sh: no findings in ${#targets[@]} targets x ${seconds}s"
