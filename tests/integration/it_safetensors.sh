# moe.c checkpoints <-> safetensors: train the tiny model 3 steps, export it
# (model only, and with the optimizer state), check the files with readers that
# are not moe.c's (tests/oracle/safetensors_check.py: a plain parse and Hugging
# Face's safetensors, against the shard bytes), import them back (bit-exact:
# export -> import -> export gives the same file, and a run resumed from the
# import matches one resumed from the original), train on from a model-only
# import, read files Hugging Face's writer made (F16, "model." names), and
# refuse mismatched configs, an occupied root and a corrupt checkpoint.
source "$(dirname "$0")/lib.sh"
D=$(mktemp -d "$SCRATCH/safetensors.XXXXXX")
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
CHECK=("$PY" "$SRC/tests/oracle/safetensors_check.py")
COMMON=("${TINY[@]}" --eval-interval 0 --moe-router-enable-expert-bias --save-interval 0 --lr-warmup-iters 2)

# py_ok CMD...: the Python check passes, or skips (77) without its packages.
py_ok() {
  set +e
  "$@"
  local rc=$?
  set -e
  [ "$rc" = 0 ] || [ "$rc" = 77 ] || fail "'$*' exited $rc"
  return 0
}

"$MOE" train "${COMMON[@]}" --run-dir "$D/a" --train-iters 3
STEP=$D/a/checkpoints/step-0000003
[ -f "$STEP/manifest.pb" ] || fail "training left no checkpoint at step 3"

expect_status 0 "$MOE" checkpoint export --from "$D/a/checkpoints" --safetensors "$D/model.safetensors"
expect_output "step 3 of $STEP"
expect_status 0 "$MOE" checkpoint export --from "$STEP" --safetensors "$D/full.safetensors" --with-optimizer
expect_output "(with optimizer state)"
"$MOE" inspect checkpoint "$STEP" --json > "$D/ref.json"
py_ok "${CHECK[@]}" check "$D/model.safetensors" --inspect "$D/ref.json"
py_ok "${CHECK[@]}" check "$D/full.safetensors" --inspect "$D/ref.json" --with-optimizer

# The run's config.yaml leaves vocab-size 0 (taken from the data): import needs it.
expect_status 2 "$MOE" checkpoint import --safetensors "$D/model.safetensors" --config "$D/a/config.yaml" \
  --to "$D/nope"
expect_output "vocab-size is 0"
sed 's/^vocab-size: 0.*/vocab-size: 256/' "$D/a/config.yaml" > "$D/model.yaml"
grep -q '^vocab-size: 256' "$D/model.yaml" || fail "no vocab-size line in $D/a/config.yaml"

# The full state back: the same bytes out again, and the same run onwards.
expect_status 0 "$MOE" checkpoint import --safetensors "$D/full.safetensors" --config "$D/model.yaml" --to "$D/imp"
expect_output "at step 3 (optimizer moments from the file)"
"$MOE" checkpoint export --from "$D/imp" --safetensors "$D/again.safetensors" --with-optimizer > /dev/null
cmp "$D/full.safetensors" "$D/again.safetensors" || fail "export -> import -> export changed the file"
"$MOE" train "${COMMON[@]}" --run-dir "$D/b" --train-iters 5 --load "$D/a/checkpoints"
"$MOE" train "${COMMON[@]}" --run-dir "$D/c" --train-iters 5 --load "$D/imp"
cmp "$D/b/checkpoints/step-0000005/shard-00000.bin" "$D/c/checkpoints/step-0000005/shard-00000.bin" \
  || fail "resuming from the imported checkpoint differs from resuming from the original"

# The model alone: step 0, zero moments; training goes on from it.
expect_status 0 "$MOE" checkpoint import --safetensors "$D/model.safetensors" --config "$D/model.yaml" --to "$D/m"
expect_output "at step 0 (optimizer moments zero)"
"$MOE" train "${COMMON[@]}" --run-dir "$D/d" --train-iters 1 --load "$D/m"
[ "$(wc -l < "$D/d/metrics.jsonl")" -ge 1 ] || fail "no step trained from the imported model"
[ -f "$D/d/checkpoints/step-0000001/manifest.pb" ] || fail "no checkpoint after training from the import"

# Files from Hugging Face's writer: F16 values, "model." names.
set +e
"${CHECK[@]}" rewrite "$D/model.safetensors" "$D/hf16.safetensors" --dtype F16 --prefix model.
rc=$?
set -e
if [ "$rc" = 0 ]; then
  expect_status 0 "$MOE" checkpoint import --safetensors "$D/hf16.safetensors" --config "$D/model.yaml" --to "$D/hf"
  "$MOE" train "${COMMON[@]}" --run-dir "$D/e" --train-iters 1 --load "$D/hf"
else
  [ "$rc" = 77 ] || fail "rewrite exited $rc"
  echo "skipped the Hugging Face writer part (no safetensors/numpy)"
fi

# Refusals: another model, an untied head (one tensor missing), an occupied root, a corrupt step.
sed 's/^hidden-size: .*/hidden-size: 32/' "$D/model.yaml" > "$D/wide.yaml"
expect_status 2 "$MOE" checkpoint import --safetensors "$D/model.safetensors" --config "$D/wide.yaml" --to "$D/w"
expect_output "'embedding.weight' has shape [256, 64], the model of $D/wide.yaml has [256, 32]"
sed 's/^untie-embeddings-and-output-weights: .*/untie-embeddings-and-output-weights: true/' "$D/model.yaml" \
  > "$D/untied.yaml"
expect_status 2 "$MOE" checkpoint import --safetensors "$D/model.safetensors" --config "$D/untied.yaml" --to "$D/u"
expect_output "no tensor 'lm_head.weight'"
expect_status 2 "$MOE" checkpoint import --safetensors "$D/model.safetensors" --config "$D/model.yaml" --to "$D/imp"
expect_output "already holds checkpoints"
[ ! -e "$D/w" ] && [ ! -e "$D/u" ] || fail "a refused import wrote something"
cp -r "$STEP" "$D/step-0000003"
b=$(od -An -tu1 -j100 -N1 "$D/step-0000003/shard-00000.bin" | tr -d ' ')
printf "\\x$(printf %02x $((b ^ 1)))" | dd of="$D/step-0000003/shard-00000.bin" bs=1 seek=100 conv=notrunc status=none
expect_status 2 "$MOE" checkpoint export --from "$D/step-0000003" --safetensors "$D/bad.safetensors"
expect_output "checksum mismatch"
[ ! -e "$D/bad.safetensors" ] || fail "a refused export wrote its file"
echo "safetensors export/import works"
