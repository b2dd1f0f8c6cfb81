#!/usr/bin/env bash
# Planner scaling: a thin wrapper around `moe bench planner` (perf/bench_planner.c),
# which does the sweep itself. Solve time, gap and max-rank load against
# contiguous, the cross-node token fraction and the predicted all-to-all time
# per step, as experts (8..256), ranks (4..64) and layers (4..32) grow around
# 24 layers x 64 experts x 8 ranks, on generated skewed traces (2048 tokens
# per rank, seed 7); one copy per expert (contiguous, round-robin, greedy,
# ilp), then with REPLICAS extra copies per layer (eplb, ilp).
#   perf/planner_sweep.sh [SKEW] [TOPK] [TIME_LIMIT_S] [REPLICAS] [GAP] [-- more moe bench planner flags]
#     defaults 1.2 2 30 ranks 0.01; REPLICAS "ranks": as many as the point
#     has ranks (one more slot per rank), 0: skip the replicated methods.
# Prints the bench's table and summary; every row is measured in this run.
# ilp runs with 2 jobs. MOE: the moe binary (default build/bin/moe).
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
SKEW=${args[0]:-1.2}
TOPK=${args[1]:-2}
LIMIT=${args[2]:-30}
REPLICAS=${args[3]:-ranks}
GAP=${args[4]:-0.01}
MOE=${MOE:-build/bin/moe}
METHODS=contiguous,round-robin,greedy,ilp
[ "$REPLICAS" != 0 ] && METHODS="$METHODS,eplb:$REPLICAS,ilp:$REPLICAS"
exec "$MOE" bench planner --skew "$SKEW" --topk "$TOPK" --time-limit "$LIMIT" --gap "$GAP" --jobs 2 \
  --methods "$METHODS" "$@"
