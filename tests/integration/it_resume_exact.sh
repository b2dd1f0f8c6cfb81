# Resume reproduces the uninterrupted run bit for bit: a 12-step run versus a
# 6-step run resumed to 12, compared line by line (every metric but timing)
# and tensor by tensor (the final checkpoints' shard bytes).
source "$(dirname "$0")/lib.sh"
D=$(mktemp -d "$SCRATCH/resume.XXXXXX")
COMMON=("${TINY[@]}" --eval-interval 0 --moe-router-enable-expert-bias --global-batch-size 16
        --lr-warmup-iters 3 --lr-decay-iters 12)
"$MOE" train "${COMMON[@]}" --run-dir "$D/a" --train-iters 12 --save-interval 6
"$MOE" train "${COMMON[@]}" --run-dir "$D/b" --train-iters 6 --save-interval 6
"$MOE" train "${COMMON[@]}" --run-dir "$D/b" --train-iters 12 --save-interval 6 --load "$D/b/checkpoints"
strip() { sed -E 's/, "tokens_per_s": [^,]*, "tflops": [^,]*, "mfu": [^,]*//; s/, "step_ms": [^}]*//' "$1"; }
diff <(strip "$D/a/metrics.jsonl") <(strip "$D/b/metrics.jsonl") || fail "resumed metrics differ"
cmp "$D/a/checkpoints/step-0000012/shard-00000.bin" "$D/b/checkpoints/step-0000012/shard-00000.bin" \
  || fail "resumed checkpoint differs"
echo "resume is bit-exact"
