#!/usr/bin/env bash
# Pipeline bubble of the 1F1B schedule, measured against (p-1)/(m+p-1):
# the same model and global batch of m micro-batches trained on 1 rank and on
# p pipeline stages (p ranks, one thread each), in one run. With perfect
# pipelining each stage would take T1/p; the measured bubble is
#   1 - T1 / (p * Tpp)
# (median step_ms after warm-up). It includes the stage-to-stage transfers
# and any imbalance between stages, which the formula leaves out.
#   perf/pp_bubble.sh [DATA_DIR] [P] [STEPS]   (defaults: data/kjv 2 12)
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
DATA=${1:-data/kjv}
P=${2:-2}
STEPS=${3:-12}
MOE=build/bin/moe
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
COMMON=(--config configs/tiny.yaml --data-path "$DATA" --num-layers 4 --seq-length 256 --train-iters "$STEPS"
        --eval-interval 0 --save-interval 0 --log-interval 1000 --micro-batch-size 2 --num-threads 1)

printf "tiny model, 4 layers, seq 256, micro-batch 2, %s stages, 1 thread per rank, %s cores\n" "$P" "$(nproc)"
printf "%4s %12s %12s %10s %10s\n" m "1 rank ms" "PP ms" bubble "(p-1)/(m+p-1)"
for m in 1 2 4 8 16; do
  G=$((2 * m))
  "$MOE" train "${COMMON[@]}" --global-batch-size "$G" --run-dir "$OUT/one$m" --nproc 1 >/dev/null 2>&1
  "$MOE" train "${COMMON[@]}" --global-batch-size "$G" --run-dir "$OUT/pp$m" --nproc "$P" \
    --pipeline-model-parallel-size "$P" >/dev/null 2>&1
  t1=$(metric_median "$OUT/one$m/metrics.jsonl" step_ms 3)
  tp=$(metric_median "$OUT/pp$m/metrics.jsonl" step_ms 3)
  bubble=$(echo "1 - $t1 / ($P * $tp)" | bc -l)
  formula=$(echo "($P - 1) / ($m + $P - 1)" | bc -l)
  printf "%4d %12.1f %12.1f %10.3f %10.3f\n" "$m" "$t1" "$tp" "$bubble" "$formula"
  printf '{"p": %d, "m": %d, "one_rank_ms": %s, "pp_ms": %s, "bubble": %.4f, "formula": %.4f}\n' \
    "$P" "$m" "$t1" "$tp" "$bubble" "$formula" >> "$OUT/results.jsonl"
done
cat "$OUT/results.jsonl"
