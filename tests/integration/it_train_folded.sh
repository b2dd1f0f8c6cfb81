# `moe train --nproc 4` with attention TP 2 (sequence parallel) x CP 2 folded
# onto EP 4 for the experts, on KJV: the same losses as one rank (relative
# 1e-5); its step-6 checkpoint continues under other layouts (TP 2 x DP 2 with
# the distributed optimizer; PP 2 x DP 2 with EP 2) exactly as one rank
# continues it.
source "$(dirname "$0")/lib.sh"
D=$(mktemp -d "$SCRATCH/folded.XXXXXX")
COMMON=("${TINY[@]}" --eval-interval 0 --micro-batch-size 2 --global-batch-size 8
        --lr-warmup-iters 2 --lr-decay-iters 12 --num-threads 1)
FOLD=(--nproc 4 --tensor-model-parallel-size 2 --sequence-parallel --context-parallel-size 2
      --expert-model-parallel-size 4)
"$MOE" train "${COMMON[@]}" "${FOLD[@]}" --run-dir "$D/fold" --train-iters 12 --save-interval 6
"$MOE" train "${COMMON[@]}" --run-dir "$D/one" --train-iters 12 --save-interval 6

losses() { sed -n 's/.*"loss": \([0-9.e+-]*\),.*/\1/p' "$1"; }
compare() { # file_a file_b: relative difference of losses <= 1e-5
  paste <(losses "$1") <(losses "$2") | awk '
    { d = $1 - $2; if (d < 0) d = -d; r = d / $2; if (r > worst) worst = r; n++ }
    END { printf "compared %d steps, worst relative difference %.2e\n", n, worst; exit !(n > 0 && worst <= 1e-5) }'
}
compare "$D/fold/metrics.jsonl" "$D/one/metrics.jsonl" || fail "TP2 x CP2 / EP4 and 1 rank disagree"

"$MOE" train "${COMMON[@]}" --nproc 4 --tensor-model-parallel-size 2 --use-distributed-optimizer \
  --run-dir "$D/swap" --train-iters 12 --save-interval 0 --load "$D/fold/checkpoints/step-0000006"
compare "$D/swap/metrics.jsonl" <(tail -n 6 "$D/one/metrics.jsonl") || fail "folded checkpoint under TP2 x DP2 differs"
"$MOE" train "${COMMON[@]}" --nproc 4 --pipeline-model-parallel-size 2 --expert-model-parallel-size 2 \
  --run-dir "$D/pipe" --train-iters 12 --save-interval 0 --load "$D/fold/checkpoints/step-0000006"
compare "$D/pipe/metrics.jsonl" <(tail -n 6 "$D/one/metrics.jsonl") || fail "folded checkpoint under PP2 x DP2 / EP2 differs"
echo "folded training matches one rank, and its checkpoint changes layout (TP, CP, PP, EP, distopt)"
