#!/usr/bin/env bash
# The project's main job on a built-in default, end to end, on a fresh Debian 12 machine: does SONAR adapt to a
# new domain as well as DCPT (direct continual pre-training) while forgetting less?
#   1. installs the packages (scripts/install-deps.sh) and builds the `sonar` program (cmake Release);
#   2. runs `sonar experiment --preset demo`, which
#      - writes the synthetic labelled corpus (four domains plus a multi-label "prior" pool of mixtures);
#      - pre-trains the start model, a tiny BEATs, on the prior pool's unlabelled audio as BEATs does
#        (random-projection targets -> model -> `sonar train-tokenizer` -> model): the stand-in for a model
#        pre-trained on AudioSet;
#      - continues its pre-training on one new domain with DCPT and with SONAR, two seeds each;
#      - linear-probes the start model and every adapted model on the new domain's task, the prior pool's task
#        and the other domains' tasks;
#   3. prints the table (new-domain F1, prior mAP, forgetting, mean ± std over seeds) and the figure paths.
# Outputs go to ./out/demo (git-ignored). Re-running reuses what is done: the corpus, the start model, finished
# runs (an interrupted one resumes from its checkpoint), the probes and the build. docs/results.md has the
# numbers it gave, the wall time, and why the setting is a fair stand-in.
# Not a benchmark: the corpus is synthetic and the model tiny.
set -euo pipefail
cd "$(dirname "$0")/.."

domain=music
seeds=0,1
out=out/demo
build=${SONAR_BUILD_DIR:-build}

usage() {
  cat <<EOF2
usage: scripts/demo.sh [--domain NAME] [--seeds LIST] [--out DIR]

  --domain NAME   the new domain: music, birds, noise or speech (default $domain)
  --seeds LIST    seeds of the continual runs and probes (default $seeds)
  --out DIR       output folder (default $out)
  Environment: SONAR_BUILD_DIR (default build), OMP_NUM_THREADS.
EOF2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --domain) domain=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

t_start=$(date +%s)
stamp() { echo "[demo $(( $(date +%s) - t_start ))s] $*"; }

stamp "installing missing packages"
scripts/install-deps.sh
stamp "building sonar in $build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$build" --target sonar -j"$(nproc)" > "$build/demo-build.log" 2>&1 || {
  tail -30 "$build/demo-build.log"; echo "demo.sh: the build failed (log: $build/demo-build.log)" >&2; exit 1; }
# Idle OpenMP threads sleep instead of spinning: the background loader shares the two cores with them.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

stamp "sonar experiment --preset demo --domain $domain --seeds $seeds --out $out"
"$build/sonar" experiment --preset demo --domain "$domain" --seeds "$seeds" --out "$out"
echo
stamp "done in $(( $(date +%s) - t_start )) s; table: $out/results.md; figures: $out/figures/*.svg (open in a browser)"
