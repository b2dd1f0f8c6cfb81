# The emulated cluster (scripts/emu): 4 hosts at 1gbit under a private
# prefix; one MPI rank per host (each in its own namespace), the comm test
# suite across them over TCP, the links at the shaped rate (and re-shaped),
# `up` refusing a namespace it did not make, and `down` leaving nothing behind
# (namespaces, links, state, processes) whether the steps pass or fail.
# Exit 77 (skip) without root or where network namespaces / tbf are refused.
source "$(dirname "$0")/lib.sh"
EMU=$SRC/scripts/emu/emu.sh
skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root"
for c in ip tc unshare mpirun python3; do command -v "$c" >/dev/null || skip "no $c"; done
unshare --net sh -c 'tc qdisc add dev lo root tbf rate 1gbit burst 65536 latency 20ms' 2>/dev/null ||
  skip "network namespaces or tbf are not permitted here"

# private names: a state root in the scratch dir, a prefix no one else uses
export MOE_EMU_ROOT=$SCRATCH/emu
P=it$(tr -dc a-z </dev/urandom | head -c 6 || true)
Q=${P}q # a second cluster, for the foreign-namespace check
ns_of() { ip netns list | awk -v p="$1" 'index($1, p) == 1 && substr($1, length(p) + 1) ~ /^([0-9]+|sw)$/ { print $1 }'; }

# teardown + checks, on every exit: a failed step still leaves nothing behind
# (steps that could hang run under `timeout`, well inside ctest's TIMEOUT,
# which would kill this script before its trap could run)
TORN=0
teardown() {
  local rc=$? ns pids="" p left
  [ "$TORN" = 0 ] || return 0
  TORN=1
  set +e
  for ns in $(ns_of "$P") $(ns_of "$Q"); do pids+=" $(ip netns pids "$ns")"; done
  "$EMU" --prefix "$P" down >/dev/null || { echo "FAIL: down $P" >&2; rc=1; }
  "$EMU" --prefix "$Q" down >/dev/null || { echo "FAIL: down $Q" >&2; rc=1; }
  ip netns del "${Q}1" 2>/dev/null # the foreign one, made by this test
  left=$(ns_of "$P"; ns_of "$Q")
  [ -z "$left" ] || { echo "FAIL: namespaces left: $left" >&2; rc=1; }
  left=$(ip -o link | grep -E "$P" || true)
  [ -z "$left" ] || { echo "FAIL: links left in the root namespace: $left" >&2; rc=1; }
  [ ! -e "$MOE_EMU_ROOT/$P" ] && [ ! -e "$MOE_EMU_ROOT/$Q" ] || { echo "FAIL: state dir left in $MOE_EMU_ROOT" >&2; rc=1; }
  for p in $pids; do # alive and not a zombie
    if [ -e "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then
      echo "FAIL: process $p ($(tr '\0' ' ' <"/proc/$p/cmdline")) outlived down" >&2; rc=1
    fi
  done
  wait 2>/dev/null
  [ "$rc" != 0 ] || echo "emulated cluster: torn down, nothing left"
  exit "$rc"
}
trap teardown EXIT

t0=$(date +%s.%N)
"$EMU" --prefix "$P" up 4 --rate 1gbit
OUT=$("$EMU" --prefix "$P" up 4) # again: nothing to do, the rate is kept
expect_output "links at 1gbit"
expect_status 1 "$EMU" --prefix "$P" up 3
expect_output "is up with 4 hosts"
[ "$(ns_of "$P" | sort | tr '\n' ' ')" = "${P}1 ${P}2 ${P}3 ${P}4 ${P}sw " ] || fail "namespaces: $(ns_of "$P")"

# one rank per host, each in its own network namespace, hostname = host
OUT=$(timeout -k 5 30 "$EMU" --prefix "$P" mpirun -np 4 -- bash -c 'echo "rank=$OMPI_COMM_WORLD_RANK ns=$(ip netns identify $$) host=$(hostname)"')
for r in 0 1 2 3; do expect_output "rank=$r ns=$P$((r + 1)) host=$P$((r + 1))"; done

# the comm test suite with its 4 ranks on 4 hosts: every byte goes over the shaped TCP links
CK_FORK=no CK_DEFAULT_TIMEOUT=60 OMP_NUM_THREADS=1 timeout -k 5 30 "$EMU" --prefix "$P" mpirun -- "$BIN/mpi_comm" ||
  fail "mpi_comm across 4 emulated hosts"

# rate in effect: 50 MB at 1gbit takes 0.4 s (unshaped: several Gbit/s)
mbit() { sed -n 's/.* = \([0-9.]*\) Mbit\/s.*/\1/p' <<<"$OUT"; }
in_range() { awk -v v="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(v >= lo && v <= hi) }'; }
OUT=$("$EMU" --prefix "$P" bw --from 1 --to 2 --mbytes 50); echo "$OUT"
in_range "$(mbit)" 300 1100 || fail "1gbit link measured $(mbit) Mbit/s"
"$EMU" --prefix "$P" shape 200mbit
OUT=$("$EMU" --prefix "$P" bw --from 3 --to 4 --mbytes 10); echo "$OUT"
in_range "$(mbit)" 60 220 || fail "200mbit link measured $(mbit) Mbit/s"

# a namespace emu.sh did not make is refused by name, and down leaves it alone
ip netns add "${Q}1"
expect_status 1 "$EMU" --prefix "$Q" up 2
expect_output "'${Q}1' exists but emu.sh did not create it"
"$EMU" --prefix "$Q" down >/dev/null
[ -e "/run/netns/${Q}1" ] || fail "down removed a namespace it did not create"
ip netns del "${Q}1"

# a process left running on a host: down must end it
"$SRC/scripts/emu/nsexec" "${P}2" 'sleep 600' &
for _ in $(seq 50); do [ -n "$(ip netns pids "${P}2")" ] && break; sleep 0.1; done
[ -n "$(ip netns pids "${P}2")" ] || fail "nothing started on ${P}2"
echo "emulated cluster checks passed in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
