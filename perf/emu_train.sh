#!/usr/bin/env bash
# End-to-end training tokens/s with the expert layer's overlap off and on
# (--moe-overlap none|coarse|fine), on N emulated hosts (scripts/emu/emu.sh:
# network namespaces, links shaped to RATE), one rank per host, EP = N, in one
# run: median tokens_per_s after warm-up. Root only; tears the cluster down.
#   perf/emu_train.sh [HOSTS] [RATE] [STEPS] [extra moe train flags...]
#   (defaults: 4 1gbit 16)
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
need_kjv emu_train.sh
HOSTS=${1:-4}
RATE=${2:-1gbit}
STEPS=${3:-16}
shift $(( $# < 3 ? $# : 3 ))
PREFIX=moet$(( $$ % 100000 ))t
OUT=$(mktemp -d)
EMU="$PWD/scripts/emu/emu.sh --prefix $PREFIX"
trap '$EMU down >/dev/null 2>&1 || true; rm -rf "$OUT"' EXIT
$EMU up "$HOSTS" --rate "$RATE" >/dev/null

COMMON=(--config configs/tiny.yaml --data-path data/kjv --train-iters "$STEPS" --eval-interval 0 --save-interval 0
        --log-interval 1000 --nproc "$HOSTS" --expert-model-parallel-size "$HOSTS" --micro-batch-size 2
        --global-batch-size $((2 * HOSTS)) --num-threads 1 "$@")
printf "%s emulated hosts at %s, EP %s, tiny model, 1 thread per rank, %s cores\n" "$HOSTS" "$RATE" "$HOSTS" "$(nproc)"
printf "%-8s %12s %8s\n" mode tokens/s "vs none"
base=""
for mode in none coarse fine; do
  MOE_MPIRUN="$EMU mpirun" build/bin/moe train "${COMMON[@]}" --run-dir "$OUT/$mode" --moe-overlap "$mode" \
    >/dev/null 2>&1
  tps=$(metric_median "$OUT/$mode/metrics.jsonl" tokens_per_s 3)
  [ -n "$base" ] || base=$tps
  printf "%-8s %12.0f %8.2f\n" "$mode" "$tps" "$(echo "$tps / $base" | bc -l)"
  printf '{"hosts": %s, "rate": "%s", "mode": "%s", "tokens_per_s": %s}\n' "$HOSTS" "$RATE" "$mode" "$tps" \
    >> "$OUT/results.jsonl"
done
cat "$OUT/results.jsonl"
