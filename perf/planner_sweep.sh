#!/usr/bin/env bash
# Planner scaling: solve time, gap and max-rank load against contiguous as
# experts, ranks and layers grow, on generated skewed traces; one copy per
# expert (greedy, ilp), then with REPLICAS extra copies per layer (eplb,
# ilp --replicas).
#   perf/planner_sweep.sh [SKEW] [TOPK] [TIME_LIMIT_S] [REPLICAS] [GAP]
#     defaults 1.2 2 30 ranks 0.01; REPLICAS "ranks": as many as the shape
#     has ranks (one more slot per rank), 0: skip the replicated columns.
# Prints a table; every row is measured in this run. ilp runs with 2 jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
SKEW=${1:-1.2}
TOPK=${2:-2}
LIMIT=${3:-30}
REPLICAS=${4:-ranks}
GAP=${5:-0.01}
MOE=${MOE:-build/bin/moe}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" <<<"$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a/b}'; }
plan() { "$MOE" plan placement --trace "$T/t.pb" --ep "$R" --out "$T/p.plan" --json --jobs 2 --time-limit "$LIMIT" \
           --gap "$GAP" "$@"; }
printf '%6s %7s %5s | %9s %9s %9s %8s %7s %7s' layers experts ranks contig greedy ilp ilp/cont gap solve_s
[ "$REPLICAS" != 0 ] && printf ' | %4s %9s %9s %8s %7s %7s' R eplb ilp_R ilpR/cont gap_R solve_s
echo
for shape in "8 16 4" "8 64 8" "24 64 8" "16 128 16" "32 256 32" "8 256 64"; do
  read -r L E R <<<"$shape"
  "$MOE" bench planner --gen-trace "$T/t.pb" --layers "$L" --experts "$E" --topk "$TOPK" --skew "$SKEW" \
    --sources "$R" --tokens 2048 --seed 7 >/dev/null
  c=$(plan --method contiguous); g=$(plan --method greedy); i=$(plan --method ilp)
  co=$(field objective "$c")
  printf '%6s %7s %5s | %9.0f %9.0f %9.0f %8s %6.2f%% %7.2f' "$L" "$E" "$R" "$co" "$(field objective "$g")" \
    "$(field objective "$i")" "$(ratio "$(field objective "$i")" "$co")" \
    "$(awk -v g="$(field gap "$i")" 'BEGIN{print 100*g}')" "$(field solve_s "$i")"
  if [ "$REPLICAS" != 0 ]; then
    X=$REPLICAS; [ "$X" = ranks ] && X=$R
    e=$(plan --method eplb --replicas "$X"); j=$(plan --method ilp --replicas "$X")
    printf ' | %4s %9.0f %9.0f %8s %6.2f%% %7.2f' "$X" "$(field objective "$e")" "$(field objective "$j")" \
      "$(ratio "$(field objective "$j")" "$co")" "$(awk -v g="$(field gap "$j")" 'BEGIN{print 100*g}')" \
      "$(field solve_s "$j")"
  fi
  echo
done
