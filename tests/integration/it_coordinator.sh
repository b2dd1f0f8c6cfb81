# moe train through the coordinator (launch/coordinator.c, docs/control-plane.md):
# (1) two ranks train, registered with the coordinator; one worker killed with
#     kill -9 mid-run -> automatic restart from the newest checkpoint -> the
#     same final loss and bit-identical final parameters as an uninterrupted run;
# (2) a worker stopped with SIGSTOP is found within the heartbeat timeout and
#     the attempt fails naming it (exit 1 with --max-restarts 0);
# (3) hostile frames (junk, wrong HMAC, oversized, truncated, replayed) sent to
#     the coordinator of a running job are refused and the job finishes.
source "$(dirname "$0")/lib.sh"
D=$(mktemp -d "$SCRATCH/coord.XXXXXX")
RUN=("${TINY[@]}" --nproc 2 --expert-model-parallel-size 2 --micro-batch-size 4 --eval-interval 0
     --lr-warmup-iters 5 --num-threads 1 --keep-checkpoints 0)

# wait_steps DIR N: until DIR/metrics.jsonl has N lines (up to 60 s)
wait_steps() {
  for _ in $(seq 1 1200); do
    [ -f "$1/metrics.jsonl" ] && [ "$(wc -l < "$1/metrics.jsonl")" -ge "$2" ] && return 0
    sleep 0.05
  done
  fail "$1 did not reach $2 steps"
}
worker_pids() { pgrep -f "^[^ ]*moe-worker --config $1/config.yaml" || true; }  # not mpirun
last_loss() { grep '"loss"' "$1/metrics.jsonl" | tail -n 1 | sed 's/.*"loss": \([^,]*\),.*/\1/'; }

# ---- (1) uninterrupted reference, then the same run with a worker killed ----
ITERS=200
MOE_LOG_LEVEL=debug "$MOE" train "${RUN[@]}" --train-iters $ITERS --save-interval 10 --run-dir "$D/ref" \
  > "$D/ref.log" 2>&1 || fail "reference run failed: $(tail -n 20 "$D/ref.log")"
for r in 0 1; do
  grep -q "coordinator: rank $r registered" "$D/ref.log" || fail "rank $r never registered: $(cat "$D/ref.log")"
done
[ ! -e "$D/ref/coordinator.addr" ] || fail "coordinator.addr left behind"
[ ! -e "$D/ref/secret" ] || fail "secret file left behind"

"$MOE" train "${RUN[@]}" --train-iters $ITERS --save-interval 10 --run-dir "$D/kill" --max-restarts 2 \
  > "$D/kill.log" 2>&1 &
pid=$!
wait_steps "$D/kill" 45
mapfile -t pids < <(worker_pids "$D/kill")
[ "${#pids[@]}" = 2 ] || fail "expected 2 workers, found ${#pids[@]}: ${pids[*]}"
victim=${pids[$((RANDOM % 2))]}
kill -9 "$victim"
set +e; wait $pid; code=$?; set -e
[ "$code" = 0 ] || fail "run with a killed worker exited $code: $(tail -n 30 "$D/kill.log")"
grep -q "attempt 1 failed" "$D/kill.log" || fail "no restart after kill -9: $(cat "$D/kill.log")"
grep -q "resumed from" "$D/kill.log" || fail "the restart did not resume from a checkpoint: $(cat "$D/kill.log")"
[ "$(grep -c '"loss"' "$D/kill/metrics.jsonl")" = $ITERS ] || fail "metrics.jsonl does not hold each step once"
a=$(last_loss "$D/ref"); b=$(last_loss "$D/kill")
[ "$a" = "$b" ] || fail "final loss after restart $b != uninterrupted $a"
final=$(printf 'step-%07d' $ITERS)
n=0
for f in "$D/ref/checkpoints/$final"/shard-*.bin; do
  cmp -s "$f" "$D/kill/checkpoints/$final/$(basename "$f")" || fail "final parameters differ in $(basename "$f")"
  n=$((n + 1))
done
[ $n -ge 1 ] || fail "no shards in the final checkpoint"
echo "kill -9 of pid $victim: restarted, final loss $b and $n final shards equal the uninterrupted run"

# ---- (2) SIGSTOP: detected within the heartbeat timeout ----
T=3
"$MOE" train "${RUN[@]}" --train-iters 1000000 --save-interval 0 --run-dir "$D/stop" --heartbeat-timeout $T \
  > "$D/stop.log" 2>&1 &
pid=$!
wait_steps "$D/stop" 5
mapfile -t pids < <(worker_pids "$D/stop")
victim=${pids[1]}
t0=$(date +%s.%N)
kill -STOP "$victim"
set +e; wait $pid; code=$?; set -e
t1=$(date +%s.%N)
gone() { ! kill -0 "$1" 2>/dev/null || [[ "$(ps -o stat= -p "$1" 2>/dev/null)" == Z* ]]; }  # dead or a zombie
for _ in $(seq 1 40); do gone "$victim" && break; sleep 0.05; done
gone "$victim" || { kill -9 "$victim"; fail "the stopped worker was left behind"; }
[ "$code" = 1 ] || fail "a stopped worker: exit $code, expected 1: $(tail -n 20 "$D/stop.log")"
grep -q "pid $victim) sent no heartbeat" "$D/stop.log" || fail "the silent rank is not named: $(tail -n 20 "$D/stop.log")"
silent=$(grep -o "pid $victim) sent no heartbeat for [0-9.]* s" "$D/stop.log" | head -n 1 | awk '{print $(NF-1)}')
python3 -c "import sys; sys.exit(0 if $silent <= $T + 2 else 1)" ||
  fail "a stopped worker was found after $silent s of silence (timeout $T s)"
python3 -c "import sys; sys.exit(0 if $t1 - $t0 <= $T + 5 else 1)" ||
  fail "a stopped worker took $(python3 -c "print($t1-$t0)") s to end the run (timeout $T s)"
echo "SIGSTOP detected: $(grep -o 'rank [0-9] ([^)]*) sent no heartbeat[^:]*' "$D/stop.log" | head -n 1)"

# ---- (3) hostile frames while a job runs ----
"$MOE" train "${RUN[@]}" --train-iters 400 --save-interval 0 --run-dir "$D/hostile" > "$D/hostile.log" 2>&1 &
pid=$!
wait_steps "$D/hostile" 5
python3 - "$D/hostile" <<'EOF' || { kill $pid; fail "hostile client failed"; }
import hashlib, hmac, os, socket, struct, sys
run = sys.argv[1]
lines = open(os.path.join(run, "coordinator.addr")).read().split("\n")
host, port = lines[0].rsplit(":", 1)
job = lines[1].split(" ", 1)[1]
key = bytes.fromhex(open(os.path.join(run, "secret")).read().strip())

def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def field(num, wire, val):
    tag = varint(num << 3 | wire)
    return tag + (varint(val) if wire == 0 else varint(len(val)) + val)

# Envelope{job_id, rank 0 (omitted: proto3 default), sender WORKER, seq 1, hello}
hello = field(1, 0, 1) + field(2, 0, 2) + field(3, 2, b"intruder") + field(4, 0, 4242)
payload = field(1, 2, job.encode()) + field(3, 0, 2) + field(4, 0, 1) + field(10, 2, hello)

def frame(k, p):
    head = struct.pack(">I", len(p))
    return head + p + hmac.new(k, head + p, hashlib.sha256).digest()

cases = {
    "junk": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "junk-small": struct.pack(">I", 20) + os.urandom(52),
    "wrong-hmac": frame(os.urandom(32), payload),
    "oversized": struct.pack(">I", 0xFFFFFFF0) + b"x" * 100,
    "truncated": frame(key, payload)[:30],
    "replayed": frame(key, payload),  # rank 0 already used seq 1 for its Hello
}
for name, data in cases.items():
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(data)
    if name == "truncated":
        s.shutdown(socket.SHUT_WR)
    try:
        while s.recv(4096):
            pass  # the coordinator must never answer
    except socket.timeout:
        sys.exit("%s: the coordinator kept the connection open" % name)
    except ConnectionResetError:
        pass
    s.close()
print("sent", ", ".join(cases))
EOF
set +e; wait $pid; code=$?; set -e
[ "$code" = 0 ] || fail "the job under hostile frames exited $code: $(tail -n 30 "$D/hostile.log")"
for why in oversized bad-mac truncated replay; do
  grep -q "control: refused a frame from 127.0.0.1:[0-9]* ($why)" "$D/hostile.log" ||
    fail "no '$why' refusal logged: $(cat "$D/hostile.log")"
done
[ "$(grep -c '"loss"' "$D/hostile/metrics.jsonl")" = 400 ] || fail "the job under hostile frames did not finish"
echo "hostile frames refused: $(grep -c 'control: refused a frame' "$D/hostile.log"); the job finished"
echo "coordinator: restart, silence detection and hostile frames OK"
