# Ctrl-C on `moe train` (one rank and two): the workers finish their step,
# save a checkpoint and stop; moe exits 130; the run resumes from there.
source "$(dirname "$0")/lib.sh"
D=$(mktemp -d "$SCRATCH/sigint.XXXXXX")
for np in 1 2; do
  R="$D/np$np"
  "$MOE" train "${TINY[@]}" --run-dir "$R" --nproc $np --expert-model-parallel-size $np \
    --micro-batch-size 4 --train-iters 1000000 --eval-interval 0 --save-interval 0 > "$R.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do # wait for a few steps (up to 60 s)
    [ -f "$R/metrics.jsonl" ] && [ "$(wc -l < "$R/metrics.jsonl")" -ge 3 ] && break
    sleep 0.2
  done
  kill -INT $pid
  set +e; wait $pid; code=$?; set -e
  [ "$code" = 130 ] || fail "np=$np: moe train exited $code after Ctrl-C, expected 130: $(cat "$R.log")"
  last=$(ls "$R/checkpoints" | tail -n 1)
  [ -n "$last" ] || fail "np=$np: no checkpoint after Ctrl-C"
  steps=$(grep -c '"loss"' "$R/metrics.jsonl")
  [ "$last" = "$(printf 'step-%07d' "$steps")" ] || fail "np=$np: checkpoint $last but $steps steps ran"
  "$MOE" train "${TINY[@]}" --run-dir "$R" --nproc $np --expert-model-parallel-size $np \
    --micro-batch-size 4 --train-iters $((steps + 2)) --eval-interval 0 --load "$R/checkpoints"
  [ "$(grep -c '"loss"' "$R/metrics.jsonl")" = $((steps + 2)) ] || fail "np=$np: resume did not continue"
done
echo "Ctrl-C checkpoints and stops"
