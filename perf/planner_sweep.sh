#!/usr/bin/env bash
# Planner scaling: solve time, gap and max-rank load against contiguous as
# experts, ranks and layers grow, on generated skewed traces.
#   perf/planner_sweep.sh [SKEW] [TOPK] [TIME_LIMIT_S]   (defaults 1.2 2 30)
# Prints a table; every row is measured in this run.
set -euo pipefail
cd "$(dirname "$0")/.."
SKEW=${1:-1.2}
TOPK=${2:-2}
LIMIT=${3:-30}
MOE=build/bin/moe
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" <<<"$2"; }
printf '%7s %7s %5s | %12s %12s %12s | %8s %8s %9s\n' layers experts ranks contiguous greedy ilp \
  "ilp/cont" gap solve_s
for shape in "8 16 4" "8 64 8" "24 64 8" "16 128 16" "32 256 32" "8 256 64"; do
  read -r L E R <<<"$shape"
  "$MOE" bench planner --gen-trace "$T/t.pb" --layers "$L" --experts "$E" --topk "$TOPK" --skew "$SKEW" \
    --sources "$R" --tokens 2048 --seed 7 >/dev/null
  c=$("$MOE" plan placement --trace "$T/t.pb" --ep "$R" --method contiguous --out "$T/c.plan" --json)
  g=$("$MOE" plan placement --trace "$T/t.pb" --ep "$R" --method greedy --out "$T/g.plan" --json)
  i=$("$MOE" plan placement --trace "$T/t.pb" --ep "$R" --method ilp --time-limit "$LIMIT" --gap 0.01 \
        --out "$T/i.plan" --json)
  co=$(field objective "$c"); go=$(field objective "$g"); io=$(field objective "$i")
  printf '%7s %7s %5s | %12.0f %12.0f %12.0f | %8.3f %8.4f %9.2f\n' "$L" "$E" "$R" "$co" "$go" "$io" \
    "$(awk -v a="$io" -v b="$co" 'BEGIN{print a/b}')" "$(field gap "$i")" "$(field solve_s "$i")"
done
