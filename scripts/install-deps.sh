#!/usr/bin/env bash
# Installs the Debian 12 packages the build, the tests and the benchmarks need, and nothing else.
# Safe to run repeatedly: it only calls apt-get when something is missing.
# usage: scripts/install-deps.sh [--fuzz]
#   --fuzz  also the fuzzing toolchain (scripts/fuzz.sh calls it so; the normal build does not need it).
set -euo pipefail
# ocl-icd-opencl-dev: Debian's libdnnl-dev only *recommends* it, but oneDNN's CMake package
# (dnnl-config.cmake) calls find_package(OpenCL) and stops configure without it; we install with
# --no-install-recommends, so it is named here.
pkgs=(build-essential cmake pkg-config libopenblas-dev libdnnl-dev ocl-icd-opencl-dev libfftw3-dev
      libsndfile1-dev libsoxr-dev libzip-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev
      libopenmpi-dev openmpi-bin python3)
# libopenmpi-dev / openmpi-bin: data-parallel training (mpirun -np N sonar pretrain ...) and its tests.
# python3: the benchmark builder (scripts/build-benchmark.sh) and its test, BenchmarkBuilder.Excerpts (standard
# library only; never used by the build, the `sonar` program or its tests).
# clang-14 and libclang-rt-14-dev: libFuzzer and clang's ASan/UBSan runtimes for the harnesses in fuzz/
# (scripts/fuzz.sh, also the short fuzz step of scripts/test.sh); libomp-14-dev: clang's OpenMP runtime, which
# CMake's find_package(OpenMP) needs under clang (clang-14 only suggests it). GCC's sanitizers
# (scripts/test.sh --sanitize) come with build-essential.
if [ "${1:-}" = "--fuzz" ]; then
  pkgs+=(clang-14 libclang-rt-14-dev libomp-14-dev)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
