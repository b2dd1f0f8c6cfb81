# Bad input never starts training: each case exits 2 with a message naming the problem.
source "$(dirname "$0")/lib.sh"
D=$(mktemp -d "$SCRATCH/cli.XXXXXX")
R=(--run-dir "$D/run")

expect_status 2 "$MOE" train "${R[@]}" --num-attention-heads 6 --hidden-size 64
expect_output "num-attention-heads"
expect_status 2 "$MOE" train "${R[@]}" --moe-router-topk 5 --num-experts 4
expect_output "moe-router-topk"
expect_status 2 "$MOE" train "${R[@]}" --lr -1
expect_output "lr"
expect_status 2 "$MOE" train "${R[@]}" --num-layerz 3
expect_output "num-layerz"
expect_status 2 "$MOE" train "${R[@]}" --config "$D/nope.yaml"
expect_output "nope.yaml"
printf 'num-layers: [1, 2\nhidden-size: 64\n' > "$D/bad.yaml"
expect_status 2 "$MOE" train "${R[@]}" --config "$D/bad.yaml"
expect_output "bad.yaml"
printf 'num_layers: 2\n' > "$D/under.yaml"
expect_status 2 "$MOE" train "${R[@]}" --config "$D/under.yaml"
expect_output "num-layers"
expect_status 2 "$MOE" train "${R[@]}" --data-path "$D/no-such-data" --train-iters 30
expect_output "no-such-data"
expect_status 2 "$MOE" train "${R[@]}" --nproc 3 --expert-model-parallel-size 2
expect_status 2 "$MOE" train --run-dir "$D/refused" --moe-overlap finest
expect_output "moe-overlap"
expect_status 2 "$MOE" train --run-dir "$D/refused" --nproc 3 --pipeline-model-parallel-size 3 \
  --micro-batch-size 2
expect_output "pipeline-model-parallel-size (3) must divide num-layers (2)"
expect_status 2 "$MOE" train --run-dir "$D/refused" --nproc 4 --tensor-model-parallel-size 2 --context-parallel-size 2 \
  --seq-length 30
expect_output "seq-length (30) must be a multiple of 2 x context-parallel-size (4)"
[ ! -e "$D/refused" ] || fail "a refused run started anyway ($D/refused exists)"
expect_status 2 "$MOE" frobnicate
expect_output "unknown command"
expect_status 2 "$MOE" data prepare --input "$D/missing.txt" --out "$D/out"
expect_output "missing.txt"
expect_status 0 "$MOE" train --help
expect_output "num-layers"
echo "all bad inputs refused"
