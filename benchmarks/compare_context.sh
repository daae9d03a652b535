#!/usr/bin/env bash
# 2D against 2.5D input at equal CPU time: two runs of the default recipe on the same
# validation fold, each bounded by the same wall-clock budget on one thread, then the
# best validation PV-DSC of each (benchmarks/bench_train.py budget).
#   benchmarks/compare_context.sh DATA OUT [MINUTES]
set -euo pipefail
data=$1; out=$2; minutes=${3:-15}
bin=$(dirname "$0")/../.venv/bin
mkdir -p "$out"
"$bin/gliomaseg" split "$data" --folds 5 --seed 0 -o "$out/splits.json" --overwrite
for k in 0 1; do
  OMP_NUM_THREADS=1 "$bin/gliomaseg" train "$data" -o "$out/context$k" --overwrite \
    --splits "$out/splits.json" --val-fold 0 --set data.context=$k \
    --set train.num_threads=1 --set train.steps_per_epoch=100 \
    --set train.max_minutes="$minutes" --set train.max_epochs=100
done
"$bin/python" "$(dirname "$0")/bench_train.py" budget "$out/context0" "$out/context1"
