#!/usr/bin/env bash
# Training tokens/s of N ranks against 1 rank on the same model and global
# batch, measured in one run (same machine state): `moe train` on the KJV
# shards, median tokens_per_s over the steps after warm-up.
#   perf/scaling.sh [DATA_DIR] [CONFIG] [STEPS]    (defaults: data/kjv configs/tiny.yaml 40)
# Prints a table and one JSON line per layout.
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
DATA=${1:-data/kjv}
CONFIG=${2:-configs/tiny.yaml}
STEPS=${3:-40}
MOE=build/bin/moe
OUT=$(mktemp -d)
COMMON=(--config "$CONFIG" --data-path "$DATA" --train-iters "$STEPS" --eval-interval 0 --save-interval 0
        --log-interval 1000 --global-batch-size 32 --micro-batch-size 8)

run() { # name, extra flags...
  local name=$1; shift
  "$MOE" train "${COMMON[@]}" --run-dir "$OUT/$name" "$@" >/dev/null 2>&1
  metric_median "$OUT/$name/metrics.jsonl" tokens_per_s 5
}

one=$(run np1 --nproc 1)
four=$(run np4 --nproc 4 --expert-model-parallel-size 2)
cores=$(nproc)
printf '%-28s %12s %8s\n' layout tokens/s ratio
printf '%-28s %12.0f %8.3f\n' "1 rank" "$one" 1
printf '%-28s %12.0f %8.3f\n' "4 ranks (EP 2 x DP 4)" "$four" "$(awk -v a="$four" -v b="$one" 'BEGIN{print a/b}')"
echo "{\"bench\": \"scaling\", \"config\": \"$CONFIG\", \"cores\": $cores, \"steps\": $STEPS, \"np1_tokens_per_s\": $one, \"np4_tokens_per_s\": $four}"
rm -rf "$OUT"
