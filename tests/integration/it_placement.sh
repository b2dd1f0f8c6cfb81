# Trace -> plan -> train: record routing on 2 ranks, plan a placement from it
# (ILP on CBC), train with the plan, and get the contiguous run's losses; the
# same with a replicated plan (ILP, 2 extra copies per layer); a plan made for
# another EP size, or a replicated plan under a capacity factor, is refused
# before anything starts.
source "$(dirname "$0")/lib.sh"
D=$(mktemp -d "$SCRATCH/placement.XXXXXX")
COMMON=("${TINY[@]}" --eval-interval 0 --nproc 2 --expert-model-parallel-size 2 --micro-batch-size 4
        --train-iters 8 --save-interval 0)
"$MOE" train "${COMMON[@]}" --run-dir "$D/base" --trace-routing "$D/routing.pb" --trace-window 4
"$MOE" plan placement --trace "$D/routing.pb" --ep 2 --method ilp --out "$D/p.plan" --json > "$D/plan.json"
grep -q '"method":"ilp"' "$D/plan.json" || fail "no ilp plan: $(cat "$D/plan.json")"
expect_status 0 "$MOE" inspect plan "$D/p.plan" --json
grep -q '"placement"' <<<"$OUT" || fail "inspect plan lacks placement: $OUT"
"$MOE" train "${COMMON[@]}" --run-dir "$D/planned" --expert-placement "$D/p.plan"
losses() { sed -n 's/.*"loss": \([0-9.e+-]*\),.*/\1/p' "$1"; }
paste <(losses "$D/base/metrics.jsonl") <(losses "$D/planned/metrics.jsonl") | awk '
  { d = $1 - $2; if (d < 0) d = -d; if (d / $1 > worst) worst = d / $1; n++ }
  END { printf "compared %d steps, worst relative difference %.2e\n", n, worst; exit !(n == 8 && worst <= 1e-5) }' \
  || fail "training with the plan changed the losses"
"$MOE" plan placement --trace "$D/routing.pb" --ep 2 --method ilp --replicas 2 --out "$D/r.plan" > /dev/null
"$MOE" train "${COMMON[@]}" --run-dir "$D/replicated" --expert-placement "$D/r.plan" > "$D/r.log" 2>&1 \
  || { cat "$D/r.log"; fail "training with the replicated plan failed"; }
grep -q "(ilp plan, 2 MoE layers, 3 copies per rank, 4 extra copies in all)" "$D/r.log" || fail "the replicated plan was not used: $(cat "$D/r.log")"
paste <(losses "$D/base/metrics.jsonl") <(losses "$D/replicated/metrics.jsonl") | awk '
  { d = $1 - $2; if (d < 0) d = -d; if (d / $1 > worst) worst = d / $1; n++ }
  END { printf "replicated: compared %d steps, worst relative difference %.2e\n", n, worst; exit !(n == 8 && worst <= 1e-5) }' \
  || fail "training with the replicated plan changed the losses"
expect_status 2 "$MOE" train "${COMMON[@]}" --run-dir "$D/bad" --expert-placement "$D/r.plan" \
  --moe-expert-capacity-factor 1.5
expect_output "need dropless routing"
[ ! -e "$D/bad" ] || fail "a refused run started anyway"
"$MOE" plan placement --trace "$D/routing.pb" --ep 4 --method greedy --out "$D/p4.plan" > /dev/null
expect_status 2 "$MOE" train "${COMMON[@]}" --run-dir "$D/bad" --expert-placement "$D/p4.plan"
expect_output "EP size 4"
[ ! -e "$D/bad" ] || fail "a refused run started anyway"
echo "trace -> plan -> train works"
