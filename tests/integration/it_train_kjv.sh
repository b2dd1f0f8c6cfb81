# Trains the tiny config for 300 steps on KJV and checks it learned.
#
# The bound: uniform over bytes is ln 256 = 5.55 nats; a unigram (byte
# frequency) model of KJV is about 3.0. The tiny model reaches about
# VAL_BOUND_MEASURED after 300 steps (see docs/training.md); we require < 2.6,
# well below unigram, so the test fails if attention or the experts stop
# learning context, with margin for thread-count and platform rounding.
source "$(dirname "$0")/lib.sh"
D=$(mktemp -d "$SCRATCH/train.XXXXXX")
"$MOE" train "${TINY[@]}" --run-dir "$D/run" --train-iters 300 --eval-interval 100 --save-interval 0
M="$D/run/metrics.jsonl"
[ -f "$M" ] || fail "no metrics.jsonl"
[ -f "$D/run/config.yaml" ] || fail "no resolved config.yaml"
n=$(grep -c '"loss"' "$M")
[ "$n" = 300 ] || fail "expected 300 training lines, got $n"
for f in step loss lr grad_norm tokens_per_s tflops mfu load_imbalance dropped_frac step_ms; do
  grep -q "\"$f\"" "$M" || fail "metrics lack $f"
done
val=$(grep '"val_loss"' "$M" | tail -n 1 | sed 's/.*"val_loss": \([0-9.]*\).*/\1/')
echo "final val_loss $val"
awk -v v="$val" 'BEGIN { exit !(v < 2.6) }' || fail "val loss $val not below 2.6"
ls "$D/run/checkpoints" | grep -q step-0000300 || fail "no final checkpoint"
