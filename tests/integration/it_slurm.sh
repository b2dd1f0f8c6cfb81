# `moe submit` on a real Slurm: a single-node cluster (munged, slurmctld,
# slurmd) started by scripts/slurm/slurm-up.sh under a private state dir and
# port. A 2-rank EP=2 job trains 6 steps with --wait (exit 0, 6 metrics lines,
# workers started by srun --mpi=pmix inside the job), `moe status` shows it
# COMPLETED, a failing job's --wait exits with the job's code, a long job is
# `moe cancel`led and ends CANCELLED with its workers seen in step 0 with the
# job's SLURM_* environment. Before that, the refusals: a bad layout (exit 2,
# nothing written), --nproc against nodes x tasks, no sbatch on PATH (exit 1).
# slurm-down.sh always runs (trap) and must leave none of its daemons.
# Exit 77 (skip) without root or the Slurm packages.
source "$(dirname "$0")/lib.sh"
skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root"
for c in sbatch srun squeue scontrol scancel slurmctld slurmd munged mungekey; do
  command -v "$c" >/dev/null || skip "no $c (Debian packages slurm-wlm munge libpmix2)"
done
UP=$SRC/scripts/slurm/slurm-up.sh
DOWN=$SRC/scripts/slurm/slurm-down.sh
D=$(mktemp -d "$SCRATCH/slurm.XXXXXX")
COMMON=("${TINY[@]}" --eval-interval 0 --micro-batch-size 2 --global-batch-size 8 --num-threads 1
        --expert-model-parallel-size 2)
t0=$SECONDS
lap() { echo "[$((SECONDS - t0)) s] $*"; }

# ---- refusals, before any cluster exists ----
expect_status 2 "$MOE" submit "${COMMON[@]}" --run-dir "$D/bad" --nodes 1 --ntasks-per-node 3 --train-iters 6
expect_output "moe submit: error:"
[ ! -e "$D/bad" ] || fail "a refused submit wrote $D/bad"
expect_status 2 "$MOE" submit "${COMMON[@]}" --run-dir "$D/bad" --nproc 4 --nodes 1 --ntasks-per-node 2
expect_output "disagrees"
expect_status 2 "$MOE" submit "${COMMON[@]}" --run-dir "$D/bad" --nodes 0
expect_status 1 env PATH=/nonexistent "$MOE" submit "${COMMON[@]}" --run-dir "$D/bad" --nodes 1 --ntasks-per-node 2
expect_output "sbatch not found on PATH"
[ ! -e "$D/bad/job.sbatch" ] || fail "a submit without sbatch wrote a batch script"
expect_status 2 "$MOE" status "$D"
expect_output "job.id"
lap "refusals checked"

# ---- the cluster: private state dir (short: the munge socket path is bounded) and ports ----
STATE=$(mktemp -d /tmp/moe-slurm-it.XXXXXX)
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in $(seq 20); do
  PORT=$((20000 + RANDOM % 20000))
  port_busy "$PORT" || port_busy $((PORT + 1)) || break
done
export MOE_SLURM_PORT=$PORT SLURM_CONF=$STATE/slurm.conf
DAEMONS="" # the PIDs slurm-up.sh recorded: none may survive slurm-down.sh
TORN=0
teardown() {
  local rc=$? p
  [ "$TORN" = 0 ] || return 0
  TORN=1
  set +e
  "$DOWN" --clean "$STATE"
  for p in $DAEMONS; do
    if kill -0 "$p" 2>/dev/null; then echo "FAIL: pid $p ($(cat "/proc/$p/comm")) survived slurm-down" >&2; rc=1; fi
  done
  [ ! -e "$STATE" ] || { echo "FAIL: slurm-down --clean left $STATE" >&2; rc=1; }
  for p in /proc/[0-9]*; do # a step daemon of ours runs in STATE/log
    case "$(readlink "$p/cwd" 2>/dev/null)" in
      "$STATE"/*) echo "FAIL: ${p#/proc/} ($(cat "$p/comm")) outlived slurm-down" >&2; rc=1 ;;
    esac
  done
  lap "torn down"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM
timeout 60 "$UP" "$STATE"
DAEMONS=$(cat "$STATE"/run/started.*)
[ "$(wc -w <<<"$DAEMONS")" = 3 ] || fail "slurm-up.sh recorded '$DAEMONS', expected munged, slurmctld, slurmd"
lap "cluster up"
again=$(timeout 30 "$UP" "$STATE")
if ! grep -q "slurmd already running" <<<"$again" || grep -q "^slurm-up: started" <<<"$again"; then
  fail "a second slurm-up.sh did not find its daemons running: $again"
fi
cmp -s "$STATE/slurm.conf" /etc/slurm/slurm.conf && fail "slurm-up.sh wrote /etc/slurm/slurm.conf"

# ---- a 6-step job, waited for ----
R=$D/run
expect_status 0 timeout 120 "$MOE" submit "${COMMON[@]}" --run-dir "$R" --train-iters 6 \
  --nodes 1 --ntasks-per-node 2 --time 5 --job-name it-slurm --wait
expect_output "COMPLETED exit 0:0"
echo "$OUT"
ID=$(cat "$R/job.id")
[ "$(wc -l <"$R/metrics.jsonl")" = 6 ] || fail "metrics.jsonl has $(wc -l <"$R/metrics.jsonl") lines, expected 6"
[ "$(stat -c %a "$R/job.sbatch")" = 644 ] || fail "job.sbatch is not 0644"
for l in "#SBATCH --nodes=1" "#SBATCH --ntasks-per-node=2" '#SBATCH --time="5"' '#SBATCH --job-name="it-slurm"' \
         "MOE_MPIRUN=" "train --config '$R/config.yaml'"; do
  grep -qF -- "$l" "$R/job.sbatch" || fail "job.sbatch lacks '$l'"
done
LOG=$R/slurm-$ID.out
grep -q "^moe: slurm job $ID on " "$LOG" || fail "$LOG does not show the batch script ran in job $ID"
grep -q "^srun-mpirun: job $ID: srun --mpi=pmix -n 2 .*moe-worker" "$LOG" || fail "$LOG: the workers were not started by srun"
grep -q "done: 6 steps" "$LOG" || fail "$LOG: training did not finish"
expect_status 0 "$MOE" status "$R"
expect_output "job $ID: COMPLETED exit 0:0"
expect_status 0 "$MOE" status "$ID"
expect_output "job $ID: COMPLETED"
lap "6-step job $ID done"

# ---- --wait hands back the job's own failure ----
expect_status 2 timeout 120 "$MOE" submit "${COMMON[@]}" --run-dir "$D/fail" --train-iters 6 \
  --nodes 1 --ntasks-per-node 2 --load "$D/no-such-checkpoint" --wait
expect_output "FAILED exit 2:0"
lap "failing job exited 2"

# ---- a long job, cancelled while its workers run ----
L=$D/long
expect_status 0 "$MOE" submit "${COMMON[@]}" --run-dir "$L" --train-iters 1000000 --nodes 1 --ntasks-per-node 2
LID=$(cat "$L/job.id")
expect_output "submitted job $LID"
step=
for _ in $(seq 300); do
  step=$(squeue -h -s -j "$LID" -o "%i %j" | grep "^$LID\.0 " || true)
  [ -n "$step" ] && break
  sleep 0.1
done
[ "$step" = "$LID.0 moe-worker" ] || fail "no step $LID.0 running moe-worker (got '$step')"
expect_status 0 "$MOE" status "$L"
expect_output "job $LID: RUNNING"
# the ranks are tasks of step 0, with the job's environment
for _ in $(seq 100); do # a task's pid shows as -1 until it has started
  pids=$(scontrol listpids "$LID" | awk '$3 == "0" && $4 != "-" && $1 > 0 { print $1 }')
  [ "$(wc -w <<<"$pids")" = 2 ] && break
  sleep 0.1
done
[ "$(wc -w <<<"$pids")" = 2 ] || fail "step 0 has tasks '$pids', expected 2: $(scontrol listpids "$LID")"
for p in $pids; do
  tr '\0' '\n' <"/proc/$p/environ" | grep -qx "SLURM_JOB_ID=$LID" || fail "rank pid $p lacks SLURM_JOB_ID=$LID"
  tr '\0' '\n' <"/proc/$p/environ" | grep -qx "SLURM_STEP_ID=0" || fail "rank pid $p is not in step 0"
done
expect_status 0 "$MOE" cancel "$L"
expect_output "cancelled job $LID"
state=
for _ in $(seq 300); do
  state=$("$MOE" status "$LID" || true)
  grep -q "CANCELLED" <<<"$state" && break
  sleep 0.1
done
grep -q "^job $LID: CANCELLED" <<<"$state" || fail "job $LID did not end CANCELLED: $state"
lap "long job $LID cancelled"

# ---- Slurm stopped: clear errors at once (Slurm's own clients retry for ~18 s) ----
"$DOWN" "$STATE"
for p in $DAEMONS; do kill -0 "$p" 2>/dev/null && fail "pid $p survived slurm-down.sh"; done
expect_status 1 timeout 60 "$MOE" status "$ID"
expect_output "is slurmctld running"
expect_status 1 timeout 60 "$MOE" submit "${COMMON[@]}" --run-dir "$D/down" --nodes 1 --ntasks-per-node 2
expect_output "controller does not answer"
expect_status 1 timeout 60 "$MOE" cancel "$L"
lap "status without a controller refused"
echo "slurm: submit, wait, status, cancel all work"
