#!/usr/bin/env bash
# The project's test command: installs missing packages, configures and builds (Release) in build/,
# then runs every GoogleTest case through ctest. Usage: scripts/test.sh [extra ctest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
cd build
ctest --output-on-failure -j"$jobs" "$@"
