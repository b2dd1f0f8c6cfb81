#!/usr/bin/env bash
# Context-parallel attention throughput against CP 1 at the same total
# sequence, measured in one run: `moe train` on the KJV shards with long
# sequences (attention dominates), median tokens_per_s over the steps after
# warm-up, on 2 ranks with one thread each:
#   cp1-dp2  2 ranks, each a whole sequence of T tokens (no CP)
#   cp2      2 ranks share each sequence (chunks r and 3-r, ring attention)
# and, as a floor, 1 rank on whole sequences.
#   perf/cp_bench.sh [DATA_DIR] [SEQ] [STEPS]    (defaults: data/kjv 1024 12)
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
DATA=${1:-data/kjv}
SEQ=${2:-1024}
STEPS=${3:-12}
MOE=build/bin/moe
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
COMMON=(--config configs/tiny.yaml --data-path "$DATA" --seq-length "$SEQ" --train-iters "$STEPS"
        --eval-interval 0 --save-interval 0 --log-interval 1000 --micro-batch-size 1 --num-threads 1)

run() { # name, extra flags...
  local name=$1; shift
  "$MOE" train "${COMMON[@]}" --run-dir "$OUT/$name" "$@" >/dev/null 2>&1
  metric_median "$OUT/$name/metrics.jsonl" tokens_per_s 3
}

one=$(run np1 --nproc 1 --global-batch-size 1)
dp2=$(run cp1 --nproc 2 --global-batch-size 2)
cp2=$(run cp2 --nproc 2 --global-batch-size 1 --context-parallel-size 2)
printf "seq %s, tiny model, 1 thread per rank, %s cores\n" "$SEQ" "$(nproc)"
printf "%-22s %12s %8s\n" layout tokens/s "vs CP1"
printf "%-22s %12.0f %8s\n" "1 rank" "$one" "-"
printf "%-22s %12.0f %8s\n" "2 ranks, CP1 (DP2)" "$dp2" "1.00"
printf "%-22s %12.0f %8.2f\n" "2 ranks, CP2" "$cp2" "$(echo "$cp2 / $dp2" | bc -l)"
printf '{"seq": %s, "one_rank_tps": %s, "cp1_dp2_tps": %s, "cp2_tps": %s, "cp2_vs_cp1": %.3f}\n' \
  "$SEQ" "$one" "$dp2" "$cp2" "$(echo "$cp2 / $dp2" | bc -l)"
