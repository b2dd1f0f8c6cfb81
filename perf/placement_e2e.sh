#!/usr/bin/env bash
# Step time with a planned expert placement against the contiguous one, on N
# emulated hosts (scripts/emu/emu.sh, links shaped to RATE), in one run:
#  1. train with routing recorded (--trace-routing) and the load-balancing
#     losses off, so routing stays skewed;
#  2. moe plan placement --method ilp on that trace;
#  3. train again from the same start with and without --expert-placement,
#     the same steps, REPS times alternating (the machine is noisy), and
#     compare the median step_ms after warm-up of each run; the summary is
#     the median over the pairs of (contiguous - planned) / contiguous.
#  With REPLICAS > 0 a third arm trains with a replicated plan (REPLICAS extra
#  copies per layer: --method ilp --replicas, or eplb where this build's ILP
#  does not replicate), in the same alternation.
#   perf/placement_e2e.sh [HOSTS] [RATE] [STEPS] [EXPERTS] [REPS] [REPLICAS]   (defaults 4 1gbit 20 16 3 0)
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
need_kjv placement_e2e.sh
HOSTS=${1:-4}
RATE=${2:-1gbit}
STEPS=${3:-20}
E=${4:-16}
REPS=${5:-3}
REPLICAS=${6:-0}
PREFIX=moep$(( $$ % 100000 ))p
OUT=$(mktemp -d)
EMU="$PWD/scripts/emu/emu.sh --prefix $PREFIX"
trap '$EMU down >/dev/null 2>&1 || true; rm -rf "$OUT"' EXIT
$EMU up "$HOSTS" --rate "$RATE" >/dev/null
COMMON=(--config configs/tiny.yaml --data-path data/kjv --eval-interval 0 --save-interval 0 --log-interval 1000
        --nproc "$HOSTS" --expert-model-parallel-size "$HOSTS" --num-experts "$E" --micro-batch-size 4
        --global-batch-size $((4 * HOSTS)) --num-threads 1 --moe-aux-loss-coeff 0 --moe-z-loss-coeff 0)
export MOE_MPIRUN="$EMU mpirun"
build/bin/moe train "${COMMON[@]}" --train-iters "$STEPS" --run-dir "$OUT/trace" \
  --trace-routing "$OUT/trace.pb" --trace-window "$STEPS" >/dev/null 2>&1
build/bin/moe inspect trace "$OUT/trace.pb" | head -5
build/bin/moe plan placement --trace "$OUT/trace.pb" --ep "$HOSTS" --out "$OUT/plan.pb" --time-limit 20 | tail -3
if [ "$REPLICAS" -gt 0 ]; then
  build/bin/moe plan placement --trace "$OUT/trace.pb" --ep "$HOSTS" --replicas "$REPLICAS" --out "$OUT/rplan.pb" \
      --time-limit 20 2>/dev/null | tail -3 ||
    build/bin/moe plan placement --trace "$OUT/trace.pb" --ep "$HOSTS" --replicas "$REPLICAS" --method eplb \
      --out "$OUT/rplan.pb" | tail -3
fi
# both continue from the traced run's end, so both see the same skewed router
gains=()
rgains=()
for r in $(seq 1 "$REPS"); do
  build/bin/moe train "${COMMON[@]}" --train-iters $((2 * STEPS)) --run-dir "$OUT/contig$r" \
    --load "$OUT/trace/checkpoints" >/dev/null 2>&1
  build/bin/moe train "${COMMON[@]}" --train-iters $((2 * STEPS)) --run-dir "$OUT/plan$r" \
    --load "$OUT/trace/checkpoints" --expert-placement "$OUT/plan.pb" >/dev/null 2>&1
  c=$(metric_median "$OUT/contig$r/metrics.jsonl" step_ms 3)
  p=$(metric_median "$OUT/plan$r/metrics.jsonl" step_ms 3)
  g=$(echo "100 * ($c - $p) / $c" | bc -l)
  gains+=("$g")
  printf "run %d: contiguous %.1f ms, planned %.1f ms per step: %.1f%% faster\n" "$r" "$c" "$p" "$g"
  rep=""
  if [ "$REPLICAS" -gt 0 ]; then
    build/bin/moe train "${COMMON[@]}" --train-iters $((2 * STEPS)) --run-dir "$OUT/rplan$r" \
      --load "$OUT/trace/checkpoints" --expert-placement "$OUT/rplan.pb" >/dev/null 2>&1
    q=$(metric_median "$OUT/rplan$r/metrics.jsonl" step_ms 3)
    rg=$(echo "100 * ($c - $q) / $c" | bc -l)
    rgains+=("$rg")
    rep=", \"replicated_ms\": $q"
    printf "run %d: replicated (%s extra copies per layer) %.1f ms per step: %.1f%% faster\n" "$r" "$REPLICAS" "$q" "$rg"
  fi
  printf '{"hosts": %s, "rate": "%s", "experts": %s, "contiguous_ms": %s, "planned_ms": %s%s}\n' \
    "$HOSTS" "$RATE" "$E" "$c" "$p" "$rep" >> "$OUT/results.jsonl"
done
med=$(printf "%s\n" "${gains[@]}" | median)
printf "%s hosts at %s, %s experts, EP %s: planned placement median %.1f%% faster than contiguous (%s runs)\n" \
  "$HOSTS" "$RATE" "$E" "$HOSTS" "$med" "$REPS"
if [ "$REPLICAS" -gt 0 ]; then
  printf "replicated plan (%s extra copies per layer): median %.1f%% faster than contiguous\n" "$REPLICAS" \
    "$(printf "%s\n" "${rgains[@]}" | median)"
fi
cat "$OUT/results.jsonl"
