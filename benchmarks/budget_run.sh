#!/usr/bin/env bash
# One training run of a recipe under a fixed CPU budget, for comparisons at equal CPU time.
#   benchmarks/budget_run.sh DATA OUT NAME MINUTES [--set section.key=value ...]
# Trains OUT/NAME on fold 0 of `gliomaseg split DATA --folds 5 --seed 0` (OUT/splits.json)
# on one thread until MINUTES of this process's CPU time are used (train.budget_clock=cpu,
# so a run sharing the machine with other jobs still gets its full budget). Early stopping
# is off so every run spends its budget; the learning rate anneals over it. Then compare:
#   python benchmarks/bench_train.py budget OUT/NAME1 OUT/NAME2 ...
# README runs:  budget_run.sh DATA OUT default-15 15; ... default-30 30; ... default-60 60
#               budget_run.sh DATA OUT whole-15 15 --set train.crop=0 --set train.batch_size=8
#               budget_run.sh DATA OUT 2d-15 15 --set data.context=0
set -euo pipefail
data=$1; out=$2; name=$3; minutes=$4; shift 4
bin=$(dirname "$0")/../.venv/bin
mkdir -p "$out"
[ -f "$out/splits.json" ] || "$bin/gliomaseg" split "$data" --folds 5 --seed 0 -o "$out/splits.json"
OMP_NUM_THREADS=1 "$bin/gliomaseg" train "$data" -o "$out/$name" --overwrite \
  --splits "$out/splits.json" --val-fold 0 \
  --set train.num_threads=1 --set train.budget_clock=cpu --set train.max_minutes="$minutes" \
  --set train.max_epochs=1000 --set train.patience=1000 "$@"
