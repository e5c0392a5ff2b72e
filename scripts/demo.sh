#!/usr/bin/env bash
# The project's main job on a built-in default, end to end, on a fresh Debian 12 machine:
#   1. installs the packages (scripts/install-deps.sh) and builds the `sonar` program (cmake Release);
#   2. writes the synthetic labelled corpus (four domains plus a multi-label "prior" pool of mixtures);
#   3. pre-trains a tiny BEATs on the prior pool's unlabelled audio from the random-projection tokenizer
#      (iteration 0): the stand-in for a model pre-trained on AudioSet;
#   4. continues its pre-training on one new domain's unlabelled audio (DCPT, the SONAR method's baseline),
#      with the same tokenizer and label predictor;
#   5. linear-probes a fresh (untrained) model, the model before and the model after continual pre-training on
#      the new domain (accuracy, macro-F1) and on the prior pool (mAP), and prints a before/after table.
# About 5-10 minutes on 2 cores with the defaults (most of it the build); --long for a longer run.
# Outputs go to ./out/demo (git-ignored). Re-running reuses what is done: the corpus, finished runs (an
# interrupted run resumes from its checkpoint) and the build; the table is recomputed.
# Not a benchmark: the corpus is synthetic and the model tiny; the numbers show that the pipeline works.
set -euo pipefail
cd "$(dirname "$0")/.."

domain=speech
clips=100
seconds=2
prior_steps=300
steps=200
batch=16
crop=2
seed=0
out=out/demo
build=${SONAR_BUILD_DIR:-build}

usage() {
  cat <<EOF
usage: scripts/demo.sh [--domain NAME] [--clips-per-class N] [--prior-steps N] [--steps N] [--batch B]
                       [--seed S] [--out DIR] [--long]

  --domain NAME         the new domain: music, birds, noise or speech (default $domain)
  --clips-per-class N   synthetic clips per class (default $clips; 2-second clips)
  --prior-steps N       pre-training steps of the prior model on the prior pool (default $prior_steps)
  --steps N             continual pre-training steps on the new domain (default $steps)
  --batch B             clips per batch (default $batch)
  --seed S              seed of the corpus, the models and the probes (default $seed)
  --out DIR             output folder (default $out)
  --long                a longer run: 200 clips per class, 2000 prior steps, 1000 continual steps
                        (about 15 minutes on 2 cores after the build)
  Environment: SONAR_BUILD_DIR (default build), OMP_NUM_THREADS.
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --domain) domain=$2; shift 2 ;;
    --clips-per-class) clips=$2; shift 2 ;;
    --prior-steps) prior_steps=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --long) clips=200; prior_steps=2000; steps=1000; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$domain" in music|birds|noise|speech) ;; *) echo "demo.sh: unknown domain '$domain'" >&2; exit 2 ;; esac

t_start=$(date +%s)
stamp() { echo "[demo $(( $(date +%s) - t_start ))s] $*"; }

stamp "installing missing packages"
scripts/install-deps.sh
stamp "building sonar in $build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$build" --target sonar -j"$(nproc)" > "$build/demo-build.log" 2>&1 || {
  tail -30 "$build/demo-build.log"; echo "demo.sh: the build failed (log: $build/demo-build.log)" >&2; exit 1; }
sonar="$build/sonar"
# Idle OpenMP threads sleep instead of spinning: the background loader shares the two cores with them.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

mkdir -p "$out"
corpus="$out/corpus-c$clips-s$seed"
stamp "synthetic corpus in $corpus"
"$sonar" synth-corpus --out "$corpus" --clips-per-class "$clips" --seconds "$seconds" --seed "$seed" | tail -1

# A finished run is skipped; an unfinished one resumes from its checkpoint.
pretrain() {  # pretrain RUN_DIR FLAGS...
  local dir=$1; shift
  if [ -f "$dir/model.safetensors" ]; then
    stamp "$dir: already finished"
  else
    "$sonar" pretrain --out "$dir" "$@"
  fi
}

prior="$out/prior-c$clips-n$prior_steps-b$batch-s$seed"
stamp "pre-training the prior model on the prior pool ($prior_steps steps) -> $prior"
pretrain "$prior" --data "$corpus/prior.csv" --splits train,val --preset tiny --steps "$prior_steps" --batch "$batch" \
  --crop-seconds "$crop" --lr 1e-3 --seed "$seed" --log-every 50 --save-every 100

dcpt="$out/dcpt-$domain-from-$(basename "$prior")-n$steps"
stamp "continual pre-training (DCPT) on the '$domain' domain ($steps steps) -> $dcpt"
pretrain "$dcpt" --data "$corpus/$domain.csv" --splits train,val --init "$prior/checkpoint.safetensors" \
  --tokenizer "$prior/tokenizer.safetensors" --steps "$steps" --batch "$batch" --crop-seconds "$crop" --lr 5e-4 \
  --seed "$seed" --log-every 50 --save-every 100

tag="$domain-c$clips-n$prior_steps-$steps-b$batch-s$seed"
metrics="$out/metrics-$tag"
mkdir -p "$metrics"
probe() {  # probe NAME TASK MODEL_FLAGS...
  local name=$1 task=$2; shift 2
  stamp "probe: $name on $task"
  "$sonar" probe "$@" --data "$corpus/$task.csv" --seed "$seed" --output "$metrics/$name-$task.json" | tail -2
}
probe fresh "$domain" --preset tiny --model-seed "$seed"
probe fresh prior --preset tiny --model-seed "$seed"
probe before "$domain" --checkpoint "$prior/model.safetensors"
probe before prior --checkpoint "$prior/model.safetensors"
probe after "$domain" --checkpoint "$dcpt/model.safetensors"
probe after prior --checkpoint "$dcpt/model.safetensors"

value() {  # value FILE KEY -> the number (or nan)
  local v
  v=$(grep -m1 "\"$2\":" "$1" | sed -e 's/.*: *//' -e 's/,$//')
  [ "$v" = "null" ] || [ -z "$v" ] && v=nan
  echo "$v"
}

table="$out/table-$tag.txt"
{
  echo "SONAR demo: tiny BEATs, synthetic corpus ($clips clips per class, seed $seed)"
  echo "prior model: $prior_steps steps on the prior pool; DCPT: $steps steps on '$domain' (unlabelled train+val clips)"
  echo "linear probes on the test splits ($(value "$metrics/after-$domain.json" test_clips) '$domain' clips," \
       "$(value "$metrics/after-prior.json" test_clips) prior clips)"
  echo
  printf "%-30s %12s %12s %12s\n" "model" "$domain acc" "$domain F1" "prior mAP"
  for row in fresh:"fresh tiny BEATs (untrained)" before:"before (prior model)" after:"after DCPT on $domain"; do
    name=${row%%:*}; label=${row#*:}
    printf "%-30s %12.4f %12.4f %12.4f\n" "$label" "$(value "$metrics/$name-$domain.json" test_accuracy)" \
      "$(value "$metrics/$name-$domain.json" test_macro_f1)" "$(value "$metrics/$name-prior.json" test_mAP)"
  done
  awk -v a1="$(value "$metrics/after-$domain.json" test_accuracy)" -v b1="$(value "$metrics/before-$domain.json" test_accuracy)" \
      -v a2="$(value "$metrics/after-$domain.json" test_macro_f1)" -v b2="$(value "$metrics/before-$domain.json" test_macro_f1)" \
      -v a3="$(value "$metrics/after-prior.json" test_mAP)" -v b3="$(value "$metrics/before-prior.json" test_mAP)" \
      'BEGIN { printf "%-30s %+12.4f %+12.4f %+12.4f\n", "change (after - before)", a1 - b1, a2 - b2, a3 - b3 }'
  echo "(forgetting = the drop of the prior mAP; a gain on '$domain' is what continual pre-training is for)"
} > "$table.tmp"
mv "$table.tmp" "$table"
echo
cat "$table"
echo
stamp "done in $(( $(date +%s) - t_start )) s; table: $table"
