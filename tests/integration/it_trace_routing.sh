# --trace-routing on 2 ranks: a RoutingTrace with one window per trace-window
# steps, per-source loads that add up to every (token, slot) pair trained, and
# `moe inspect trace --json` reading it back.
source "$(dirname "$0")/lib.sh"
D=$(mktemp -d "$SCRATCH/trace.XXXXXX")
"$MOE" train "${TINY[@]}" --run-dir "$D/r" --nproc 2 --expert-model-parallel-size 2 --micro-batch-size 4 \
  --train-iters 12 --trace-routing "$D/routing.pb" --trace-window 5 --eval-interval 6
expect_status 0 "$MOE" inspect trace "$D/routing.pb" --json
# 12 steps x 8 sequences x 64 tokens x top-2 = 12288 pairs per MoE layer, in windows of 5, 5, 2 steps
grep -q '"windows":3' <<<"$OUT" || fail "expected 3 windows: $OUT"
grep -q '"sources":2' <<<"$OUT" || fail "expected 2 sources: $OUT"
grep -q '"pairs":\[12288,12288\]' <<<"$OUT" || fail "pairs per layer should be 12288: $OUT"
printf 'garbage' > "$D/bad.pb"
expect_status 2 "$MOE" inspect trace "$D/bad.pb"
expect_output "bad.pb"
echo "routing traces recorded"
