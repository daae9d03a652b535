#!/usr/bin/env bash
# One training run of a recipe under a fixed CPU budget, for comparisons at equal CPU time.
#   benchmarks/budget_run.sh DATA OUT NAME MINUTES [--config FILE] [--set section.key=value ...]
# Trains OUT/NAME on fold 0 of `gliomaseg split DATA --folds 5 --seed 0` (OUT/splits.json)
# on one thread until MINUTES of this process's CPU time are used (train.budget_clock=cpu,
# so a run sharing the machine with other jobs still gets its full budget). Early stopping
# is off so every run spends its budget; the learning rate anneals over it. Then compare:
#   python benchmarks/bench_train.py budget OUT/NAME1 OUT/NAME2 ...
# README runs (V1=--config configs/defaults-before-tuning.json, the defaults before tuning):
#   budget_run.sh DATA OUT default-15 15 $V1; ... default-30 30 $V1; ... default-60 60 $V1
#   budget_run.sh DATA OUT whole-15 15 $V1 --set train.crop=0 --set train.batch_size=8
#   budget_run.sh DATA OUT 2d-30 30 $V1 --set data.context=0
#   budget_run.sh DATA OUT flair-30 30 $V1 --set data.channels=flair
#   budget_run.sh DATA OUT tuned-30 30 --config configs/tuning-trial3.json
set -euo pipefail
data=$1; out=$2; name=$3; minutes=$4; shift 4
bin=$(dirname "$0")/../.venv/bin
mkdir -p "$out"
[ -f "$out/splits.json" ] || "$bin/gliomaseg" split "$data" --folds 5 --seed 0 -o "$out/splits.json"
OMP_NUM_THREADS=1 "$bin/gliomaseg" train "$data" -o "$out/$name" --overwrite \
  --splits "$out/splits.json" --val-fold 0 \
  --set train.num_threads=1 --set train.budget_clock=cpu --set train.max_minutes="$minutes" \
  --set train.max_epochs=1000 --set train.patience=1000 "$@"
