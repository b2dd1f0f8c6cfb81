#!/usr/bin/env bash
# Gradient sums blocking or non-blocking (--overlap-grad-reduce), end to end on
# N emulated hosts (scripts/emu/emu.sh, one rank per host, links shaped to
# RATE): the tiny model under DP N and under EP N, each with the default
# (non-blocking where tp, cp, ep or etp > 1, else blocking) and with
# --no-overlap-grad-reduce (always blocking), REPS alternating pairs; median
# step_ms after 3 warm-up steps per run. Root only; tears the cluster down.
#   perf/grad_reduce.sh [HOSTS] [RATE] [STEPS] [REPS]   (defaults: 4 1gbit 13 3)
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
need_kjv grad_reduce.sh
HOSTS=${1:-4}
RATE=${2:-1gbit}
STEPS=${3:-13}
REPS=${4:-3}
MOE=${MOE:-build/bin/moe}
PREFIX=moeg$(( $$ % 100000 ))g
OUT=$(mktemp -d)
EMU="$PWD/scripts/emu/emu.sh --prefix $PREFIX"
trap '$EMU down >/dev/null 2>&1 || true; rm -rf "$OUT"' EXIT
$EMU up "$HOSTS" --rate "$RATE" >/dev/null

run() { # layout-flags grad-flag -> median step ms
  rm -rf "$OUT/run"
  MOE_MPIRUN="$EMU mpirun" "$MOE" train --config configs/tiny.yaml --data-path data/kjv --train-iters "$STEPS" \
    --eval-interval 0 --save-interval 0 --log-interval 1000 --nproc "$HOSTS" --micro-batch-size 2 \
    --global-batch-size $((2 * HOSTS)) --num-threads 1 --run-dir "$OUT/run" $1 $2 >/dev/null 2>&1
  metric_median "$OUT/run/metrics.jsonl" step_ms 3
}
printf "%s emulated hosts at %s, tiny model, 1 thread per rank, %s alternating pairs, median step ms\n" \
  "$HOSTS" "$RATE" "$REPS"
printf "%-6s %4s %14s %22s\n" layout rep default --no-overlap-grad-reduce
for layout in "DP|" "EP|--expert-model-parallel-size $HOSTS"; do
  IFS='|' read -r name flags <<<"$layout"
  for ((r = 1; r <= REPS; r++)); do
    a=$(run "$flags" "")
    b=$(run "$flags" --no-overlap-grad-reduce)
    printf "%-6s %4d %14s %22s\n" "$name$HOSTS" "$r" "$a" "$b"
    printf '{"layout": "%s%s", "rate": "%s", "default_ms": %s, "blocking_ms": %s}\n' "$name" "$HOSTS" "$RATE" "$a" "$b" \
      >>"$OUT/results.jsonl"
  done
done
cat "$OUT/results.jsonl"
