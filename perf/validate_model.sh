#!/usr/bin/env bash
# The cost model against this machine: trains each layout below for a few
# steps (median step_ms of metrics.jsonl after the warm-up steps; with
# REPEAT > 1 the median of the runs' medians, the runs made in REPEAT rounds
# over all layouts, so a drift in the machine's state falls on every layout
# alike instead of on whichever ran then) and asks `moe plan parallel
# --json` for exactly that layout (every size, the batch, sequence
# parallelism and, for the emulated hosts, --ranks-per-node 1), then prints
# layout, measured ms, predicted ms, error % and whether it is within 20%,
# and at the end the same as the markdown table of docs/perf-model.md.
# Nothing is tuned per row: every prediction uses the one profile of its
# column. The rows with EP > 1 record their routing (--trace-routing,
# --trace-window 1, the first run's) and the prediction reads it
# (--routing-trace, windows after the warm-up): the busiest expert rank's
# load is an input of the model, like the layout, not a timing.
#   perf/validate_model.sh [STEPS] [WARMUP]          (defaults 20 5)
#   The model predicts a steady step; a run's first steps grow buffers and
#   warm caches (tiny's steps 3-11 ran 5-10% slower than steps 5-30), so the
#   median is of the STEPS steps after WARMUP.
#   env: HW     the columns, space separated; each a profile, or A+B: of the
#               profiles A and B the one whose `threads` equals the threads
#               each rank of the row runs (max(1, cores / ranks), as the
#               launcher gives them; the emulated rows run 1), else A. Default:
#               configs/hw/this-machine.yaml and, when present,
#               configs/hw/this-machine-calibrated.yaml+configs/hw/this-machine-calibrated-1t.yaml
#        CALIBRATE  1 (default): a column "calibrated" from profiles measured
#               in the run: each round starts with `moe bench calibrate` (all
#               cores, and --threads 1), each run is predicted with its round's
#               pair (A+B as above), and the column shows the median of a
#               layout's predictions; this machine's speed drifts by 20-30%
#               between quarter hours, which a profile measured hours before
#               would carry into every row. 0: only the HW columns
#        MOE    the moe binary (default build/bin/moe)
#        REPEAT runs per layout, one per round (default 1); the median of their medians
#        RATE   emulated link rate (default 1gbit); the last two rows run on 4
#               emulated hosts (scripts/emu/emu.sh, root only), skipped with EMU=0
#        ONLY   a regular expression: only the layouts whose name matches
#        MEASURED  a results file of an earlier run (layout<TAB>ms lines): reuse
#               its measurements (and the routing traces next to it) and only predict
# Writes the measurements to $OUT/measured.tsv (OUT default: a temp dir,
# printed) with the mean 1-minute load average before the layout's runs
# (and, with CALIBRATE=1, the median of its runs' predictions; then the
# fastest and slowest run, "lo-hi", shown as the table's "runs ms"), and every run
# to $OUT/runs.tsv (layout, round, ms, load, predicted ms or -).
# Timings depend on an otherwise idle machine: the load is printed with each
# row; rerun the rows measured under load.
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
STEPS=${1:-20}
WARMUP=${2:-5}
MOE=${MOE:-build/bin/moe}
RATE=${RATE:-1gbit}
EMU_ON=${EMU:-1}
REPEAT=${REPEAT:-1}
ONLY=${ONLY:-}
CALIBRATE=${CALIBRATE:-1}
if [ -z "${HW:-}" ]; then
  HW=configs/hw/this-machine.yaml
  if [ -f configs/hw/this-machine-calibrated.yaml ]; then
    c=configs/hw/this-machine-calibrated.yaml
    [ -f configs/hw/this-machine-calibrated-1t.yaml ] && c="$c+configs/hw/this-machine-calibrated-1t.yaml"
    HW="$HW $c"
  fi
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
TRACES=$OUT
[ -n "${MEASURED:-}" ] && TRACES=$(dirname "$MEASURED")
PREFIX=mval$(( $$ % 100000 ))v
EMU_SH="$PWD/scripts/emu/emu.sh --prefix $PREFIX"
emu_up=0
cleanup() { [ "$emu_up" = 1 ] && $EMU_SH down >/dev/null 2>&1 || true; }
trap cleanup EXIT

# name | config | world | tp cp pp ep etp | micro global | emulated (1: one rank per emulated host)
LAYOUTS=(
  "tiny 1 rank|configs/tiny.yaml|1|1 1 1 1 1|2 8|0"
  "small 1 rank|configs/small.yaml|1|1 1 1 1 1|4 4|0"
  "tiny DP2|configs/tiny.yaml|2|1 1 1 1 1|2 8|0"
  "tiny EP2|configs/tiny.yaml|2|1 1 1 2 1|2 8|0"
  "tiny EP4|configs/tiny.yaml|4|1 1 1 4 1|2 8|0"
  "tiny TP2|configs/tiny.yaml|2|2 1 1 1 1|2 8|0"
  "tiny CP2|configs/tiny.yaml|2|1 2 1 1 1|2 8|0"
  "tiny PP2|configs/tiny.yaml|2|1 1 2 1 1|2 8|0"
  "tiny TP2xEP2|configs/tiny.yaml|4|2 1 1 2 1|2 8|0"
  "tiny PP2xEP2|configs/tiny.yaml|4|1 1 2 2 1|2 8|0"
  "small EP2|configs/small.yaml|2|1 1 1 2 1|4 8|0"
  "tiny EP4 emu-4host|configs/tiny.yaml|4|1 1 1 4 1|2 8|1"
  "tiny DP4 emu-4host|configs/tiny.yaml|4|1 1 1 1 1|2 8|1"
)

median_step_ms() { metric_median "$1" step_ms "$WARMUP"; }

load1() { cut -d' ' -f1 /proc/loadavg; }

measure_once() { # name cfg world "tp cp pp ep etp" "micro global" emu run -> ms
  local name=$1 cfg=$2 world=$3 emu=$6 run=$7 tp cp pp ep etp mb gb
  read -r tp cp pp ep etp <<<"$4"
  read -r mb gb <<<"$5"
  local sp=(); [ "$tp" -gt 1 ] && sp=(--sequence-parallel)
  local dir="$OUT/run-$(echo "$name" | tr ' ' '_')-$run"
  [ "$ep" -gt 1 ] && [ "$run" = 1 ] && sp+=(--trace-routing "$(trace_of "$OUT" "$name")" --trace-window 1)
  local args=(--config "$cfg" --data-path data/kjv --train-iters "$((WARMUP + STEPS))" --eval-interval 0
              --save-interval 0 --log-interval 1000 --nproc "$world" --tensor-model-parallel-size "$tp"
              --context-parallel-size "$cp" --pipeline-model-parallel-size "$pp" --expert-model-parallel-size "$ep"
              --expert-tensor-parallel-size "$etp" "${sp[@]}" --micro-batch-size "$mb"
              --global-batch-size "$gb" --run-dir "$dir")
  if [ "$emu" = 1 ]; then # the hosts share this machine's cores: one thread each, as the local runs get
    MOE_MPIRUN="$EMU_SH mpirun" "$MOE" train "${args[@]}" --num-threads 1 >"$dir.log" 2>&1 || { rm -rf "$dir/checkpoints"; echo nan; return; }
  else
    "$MOE" train "${args[@]}" >"$dir.log" 2>&1 || { rm -rf "$dir/checkpoints"; echo nan; return; }
  fi
  median_step_ms "$dir/metrics.jsonl"
  rm -rf "$dir/checkpoints" # the final save: GBs per run for small, not needed here
}

selected() { # row -> whether this run covers it
  local name emu
  IFS='|' read -r name _ _ _ _ emu <<<"$1"
  ! { [ "$emu" = 1 ] && [ "$EMU_ON" = 0 ]; } && ! { [ -n "$ONLY" ] && ! [[ $name =~ $ONLY ]]; }
}

calibrate_once() { # profile log [--threads 1] -> calibrate, a second time if the first refused its
  # measurements (a kernel timed under a passing load can come out with no time
  # outside its GEMMs, which calibrate refuses rather than write)
  local out=$1 log=$2; shift 2
  "$MOE" bench calibrate --out "$out" "$@" >>"$log" 2>&1 || "$MOE" bench calibrate --out "$out" "$@" >>"$log" 2>&1
}

calibrate_round() { # round -> the "A+B" profile pair measured now, in $OUT
  local a="$OUT/calibrated-r$1.yaml" b="$OUT/calibrated-r$1-1t.yaml" log="$OUT/calibrate-r$1.log"
  : >"$log"
  calibrate_once "$a" "$log" && calibrate_once "$b" "$log" --threads 1 ||
    { echo "validate_model: moe bench calibrate failed twice (see $log)" >&2; exit 1; }
  echo "$a+$b"
}

measure_rounds() { # REPEAT rounds over the selected rows -> $OUT/runs.tsv, then medians -> $OUT/measured.tsv
  local r row name cfg world sizes batch emu pair=""
  : >"$OUT/runs.tsv"
  for ((r = 1; r <= REPEAT; r++)); do
    [ "$CALIBRATE" = 1 ] && pair=$(calibrate_round "$r")
    for row in "${LAYOUTS[@]}"; do
      selected "$row" || continue
      IFS='|' read -r name cfg world sizes batch emu <<<"$row"
      if [ "$emu" = 1 ] && [ "$emu_up" = 0 ]; then
        $EMU_SH up 4 --rate "$RATE" >/dev/null # not in a subshell, so the EXIT trap sees it
        emu_up=1
      fi
      local ld ms pred=-; ld=$(load1)
      ms=$(measure_once "$name" "$cfg" "$world" "$sizes" "$batch" "$emu" "$r")
      [ -n "$pair" ] && pred=$(predict "$pair" "$name" "$cfg" "$world" "$sizes" "$batch" "$emu")
      printf "%s\t%s\t%s\t%s\t%s\n" "$name" "$r" "$ms" "$ld" "$pred" >>"$OUT/runs.tsv"
    done
    echo "# round $r of $REPEAT done, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  done
  : >"$OUT/measured.tsv"
  for row in "${LAYOUTS[@]}"; do
    selected "$row" || continue
    name=${row%%|*}
    printf "%s\t%s\t%s\t%s\t%s\n" "$name" \
      "$(awk -F'\t' -v n="$name" '$1 == n && $3 != "nan" { print $3 }' "$OUT/runs.tsv" | median)" \
      "$(awk -F'\t' -v n="$name" '$1 == n { s += $4; k++ } END { printf "%.2f", k ? s / k : 0 }' "$OUT/runs.tsv")" \
      "$(awk -F'\t' -v n="$name" '$1 == n && $5 != "-" && $5 != "nan" { print $5 }' "$OUT/runs.tsv" | median)" \
      "$(awk -F'\t' -v n="$name" '$1 == n && $3 != "nan" { v = $3 + 0; lo = (k && lo < v) ? lo : v; hi = (k && hi > v) ? hi : v; k++ }
        END { if (k) printf "%.4g-%.4g", lo, hi }' "$OUT/runs.tsv")" \
      >>"$OUT/measured.tsv"
  done
}

trace_of() { # dir name -> the routing trace of the layout's first run
  echo "$1/trace-$(echo "$2" | tr ' ' '_').pb"
}

profile_value() { # file key -> value
  awk -v k="$2:" '$1 == k { getline; print $2; exit }' "$1"
}

pick_profile() { # "A+B" world emu -> the profile whose threads match the row's threads per rank
  local spec=$1 world=$2 emu=$3 p
  IFS='+' read -r -a cand <<<"$spec"
  for p in "${cand[@]}"; do
    local cores threads per
    cores=$(profile_value "$p" cores)
    threads=$(profile_value "$p" threads)
    per=$(( cores / world > 1 ? cores / world : 1 ))
    [ "$emu" = 1 ] && per=1
    [ "$threads" = "$per" ] && { echo "$p"; return; }
  done
  echo "${cand[0]}"
}

predict() { # hw name cfg world "tp cp pp ep etp" "micro global" emu -> ms
  local hw=$1 name=$2 cfg=$3 world=$4 emu=$7 tp cp pp ep etp mb gb
  shift
  read -r tp cp pp ep etp <<<"$4"
  read -r mb gb <<<"$5"
  hw=$(pick_profile "$hw" "$world" "$emu")
  local sp=off; [ "$tp" -gt 1 ] && sp=on
  local extra=() trace
  [ "$emu" = 1 ] && extra=(--ranks-per-node 1)
  trace=$(trace_of "$TRACES" "$name")
  [ -f "$trace" ] && extra+=(--routing-trace "$trace" --trace-from-step "$WARMUP")
  "$MOE" plan parallel --config "$cfg" --world "$world" --hw "$hw" --tp "$tp" --cp "$cp" --pp "$pp" --ep "$ep" \
    --etp "$etp" --sp "$sp" --micro-batch "$mb" --global-batch "$gb" "${extra[@]}" --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); l=d["layouts"]+d.get("refused",[]); print("%.3f" % l[0]["step_ms"] if l else "nan")' ||
    echo nan
}

label() { if [ "$1" = @run ]; then echo "calibrated in the run"; else basename "${1%%+*}" .yaml; fi; }

column_pred() { # column name cfg world sizes batch emu -> ms: a profile's prediction, or @run: the runs' median
  if [ "$1" = @run ]; then
    awk -F'\t' -v n="$2" '$1 == n { print ($4 == "" ? "nan" : $4) }' "$MEASURED"
  else
    predict "$@"
  fi
}

echo "# $(date -u +%FT%TZ), $(nproc) cores, $STEPS steps after $WARMUP warm-up, $REPEAT run(s) per layout," \
  "load $(cut -d' ' -f1-3 /proc/loadavg), results in $OUT" >&2
if [ -z "${MEASURED:-}" ]; then
  measure_rounds
  MEASURED=$OUT/measured.tsv
fi
COLS=$HW # and the in-run calibration's column when the measurements carry its predictions
awk -F'\t' '$4 != "" && $4 != "nan" { f = 1 } END { exit !f }' "$MEASURED" && COLS="$HW @run"
hdr=$(printf "%-20s %11s %15s %5s" layout measured_ms runs_ms load)
for hw in $COLS; do hdr+=$(printf " | %-28s" "$(label "$hw"): pred_ms err% <=20%"); done
echo "$hdr"
md="| layout | measured ms | runs ms | load |"
mdsep="|---|---|---|---|"
for hw in $COLS; do md+=" $(label "$hw") | err |"; mdsep+="---|---|"; done
md+=$'\n'"$mdsep"
nin=(); ntot=0
for row in "${LAYOUTS[@]}"; do
  selected "$row" || continue
  IFS='|' read -r name cfg world sizes batch emu <<<"$row"
  ms=$(awk -F'\t' -v n="$name" '$1 == n { print $2 }' "$MEASURED")
  ld=$(awk -F'\t' -v n="$name" '$1 == n { print ($3 == "" ? "-" : $3) }' "$MEASURED")
  span=$(awk -F'\t' -v n="$name" '$1 == n { print ($5 == "" ? "-" : $5) }' "$MEASURED")
  line=$(printf "%-20s %11s %15s %5s" "$name" "$ms" "$span" "$ld")
  mdl="| $name | $ms | ${span/-/–} | $ld |"
  i=0
  for hw in $COLS; do
    p=$(column_pred "$hw" "$name" "$cfg" "$world" "$sizes" "$batch" "$emu")
    read -r err ok <<<"$(awk -v m="$ms" -v p="$p" 'BEGIN { if (m == "nan" || p == "nan" || m == "" || m == 0) print "nan no";
      else { e = 100 * (p - m) / m; print sprintf("%+.0f%%", e), (e <= 20 && e >= -20) ? "yes" : "no" } }')"
    line+=$(printf " | %9s %8s %4s      " "$p" "$err" "$ok")
    mdl+=" $p | ${err/-/−} |"
    [ "$ok" = yes ] && nin[$i]=$(( ${nin[$i]:-0} + 1 ))
    i=$((i + 1))
  done
  ntot=$((ntot + 1))
  echo "$line"
  md+=$'\n'"$mdl"
done
i=0
for hw in $COLS; do
  echo "$(label "$hw"): ${nin[$i]:-0} of $ntot layouts within 20%"
  i=$((i + 1))
done
echo
echo "$md"
