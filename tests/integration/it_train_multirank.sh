# `moe train --nproc 4` (EP 2 x DP 4) on KJV: the same losses as one rank on
# the same global batch (relative 1e-5), bit-exact resume with 4 ranks, and a
# checkpoint saved by 4 ranks that one rank loads and continues identically.
source "$(dirname "$0")/lib.sh"
D=$(mktemp -d "$SCRATCH/multi.XXXXXX")
COMMON=("${TINY[@]}" --eval-interval 0 --micro-batch-size 2 --global-batch-size 8
        --lr-warmup-iters 2 --lr-decay-iters 12 --num-threads 1)
PAR=(--nproc 4 --expert-model-parallel-size 2)
"$MOE" train "${COMMON[@]}" "${PAR[@]}" --run-dir "$D/par" --train-iters 12 --save-interval 6
"$MOE" train "${COMMON[@]}" --run-dir "$D/one" --train-iters 12 --save-interval 6

losses() { sed -n 's/.*"loss": \([0-9.e+-]*\),.*/\1/p' "$1"; }
compare() { # file_a file_b first_line: relative difference of losses <= 1e-5
  paste <(losses "$1" | tail -n +"$3") <(losses "$2" | tail -n +"$3") | awk '
    { d = $1 - $2; if (d < 0) d = -d; r = d / $2; if (r > worst) worst = r; n++ }
    END { printf "compared %d steps, worst relative difference %.2e\n", n, worst; exit !(n > 0 && worst <= 1e-5) }'
}
compare "$D/par/metrics.jsonl" "$D/one/metrics.jsonl" 1 || fail "4 ranks and 1 rank disagree"

# resume with 4 ranks from step 6: bit-exact
"$MOE" train "${COMMON[@]}" "${PAR[@]}" --run-dir "$D/res" --train-iters 6 --save-interval 6
"$MOE" train "${COMMON[@]}" "${PAR[@]}" --run-dir "$D/res" --train-iters 12 --save-interval 6 \
  --load "$D/res/checkpoints"
strip() { sed -E 's/, "tokens_per_s": [^,]*, "tflops": [^,]*, "mfu": [^,]*//; s/, "step_ms": [^}]*//' "$1"; }
diff <(strip "$D/par/metrics.jsonl") <(strip "$D/res/metrics.jsonl") || fail "4-rank resume differs"

# the 4-rank checkpoint at step 6 continues on one rank
"$MOE" train "${COMMON[@]}" --run-dir "$D/swap" --train-iters 12 --save-interval 0 \
  --load "$D/par/checkpoints/step-0000006"
compare "$D/swap/metrics.jsonl" <(tail -n 6 "$D/one/metrics.jsonl") 1 || fail "4-rank checkpoint on 1 rank differs"
echo "multi-rank training matches"
