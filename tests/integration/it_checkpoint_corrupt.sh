# A corrupt checkpoint is refused with a message naming the file, and loading
# falls back to the previous one; with none valid, the run refuses to start.
source "$(dirname "$0")/lib.sh"
D=$(mktemp -d "$SCRATCH/corrupt.XXXXXX")
COMMON=("${TINY[@]}" --eval-interval 0)
"$MOE" train "${COMMON[@]}" --run-dir "$D/r" --train-iters 4 --save-interval 2
C="$D/r/checkpoints"
[ -d "$C/step-0000002" ] && [ -d "$C/step-0000004" ] || fail "expected checkpoints at 2 and 4"
# flip one byte in the middle of the newest shard
f="$C/step-0000004/shard-00000.bin"
sz=$(stat -c %s "$f")
printf '\xff' | dd of="$f" bs=1 seek=$((sz / 2)) conv=notrunc status=none
expect_status 2 "$MOE" inspect checkpoint "$C/step-0000004"
expect_status 0 "$MOE" train "${COMMON[@]}" --run-dir "$D/r2" --train-iters 5 --load "$C"
expect_output "step-0000004"
expect_output "resumed from $C/step-0000002"
# truncate the older one too: nothing valid is left
truncate -s 100 "$C/step-0000002/shard-00000.bin"
expect_status 2 "$MOE" train "${COMMON[@]}" --run-dir "$D/r3" --train-iters 5 --load "$C"
expect_output "$C"
echo "corrupt checkpoints refused"
