#!/usr/bin/env bash
# emu.sh: an emulated cluster on one machine. N "hosts" are network namespaces
# joined by a switch, each host's link rate-limited with tbf, and Open MPI jobs
# run across them over TCP without ssh. Root only. See docs/emulated-cluster.md.
#
#   emu.sh [--prefix P] up N [--rate RATE]   hosts P1..PN at 10.77.0.1..N/24
#   emu.sh [--prefix P] shape RATE           every host link at RATE (1gbit, 200mbit, none)
#   emu.sh [--prefix P] status
#   emu.sh [--prefix P] mpirun [MPIRUN ARGS...] -- PROGRAM [ARGS...]
#   emu.sh [--prefix P] bw [--from I] [--to J] [--mbytes M]   TCP throughput host I -> J
#   emu.sh [--prefix P] down                 remove everything `up` made, end its processes
#
# Layout (nothing is added to the root namespace):
#   namespace P<i> (host i): lo, emu0 = 10.77.0.i/24, hostname P<i> for MPI jobs
#   namespace Psw (switch):  bridge br0 with ports h1..hN, the far ends of the emu0 veths
# A host's link is shaped on both sides: tbf on emu0 (what the host sends) and
# on h<i> (what it receives), so each host has a full-duplex NIC of RATE.
# Each prefix is a separate, isolated network, so clusters with different
# prefixes can run at once. The state dir ($MOE_EMU_ROOT/P, default
# /tmp/moe-emu/P) lists the namespaces `up` created; `down` removes only those.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NSEXEC=$HERE/nsexec
ROOT=${MOE_EMU_ROOT:-/tmp/moe-emu}
PREFIX=${MOE_EMU_PREFIX:-moeh}
NET=10.77.0
IF=emu0

die() { echo "emu: error: $*" >&2; exit 1; }
usage() { sed -n '6,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

set_prefix() {
  [[ $1 =~ ^[a-z][a-z0-9]*[a-z]$ && ${#1} -le 12 ]] ||
    die "bad prefix '$1': 2-12 characters, lower-case letters and digits, starting and ending with a letter"
  PREFIX=$1
}

load() { # the cluster's names; `need` also requires that it is up
  STATE=$ROOT/$PREFIX
  SW=${PREFIX}sw
  N=$(cat "$STATE/n" 2>/dev/null || echo 0)
}
need() {
  load
  [ "$N" -gt 0 ] || die "no emulated cluster '$PREFIX' (nothing in $STATE): run 'emu.sh --prefix $PREFIX up N' first"
}

# --- rates -------------------------------------------------------------------
rate_bps() { # 1gbit -> 1000000000; exits on anything tc-incompatible
  [[ ${1,,} =~ ^([0-9]+)(kbit|mbit|gbit)$ ]] || die "bad rate '$1': use e.g. 100mbit, 1gbit, or none"
  local n=${BASH_REMATCH[1]}
  case ${BASH_REMATCH[2]} in kbit) echo $((n * 1000)) ;; mbit) echo $((n * 1000000)) ;; gbit) echo $((n * 1000000000)) ;; esac
}

shape_all() { # RATE: apply to every host link, record it
  local rate=${1,,} i burst
  if [ "$rate" != none ]; then
    local bps; bps=$(rate_bps "$rate")
    [ "$bps" -gt 0 ] || die "rate must be above zero"
    # a tbf bucket must hold one jiffy of traffic (HZ=250 here) and one 64 KiB GSO packet
    burst=$((bps / 8 / 250)); [ "$burst" -ge 65536 ] || burst=65536
  fi
  for i in $(seq 1 "$N"); do
    if [ "$rate" = none ]; then
      tc -n "$PREFIX$i" qdisc del dev "$IF" root 2>/dev/null || true
      tc -n "$SW" qdisc del dev "h$i" root 2>/dev/null || true
    else
      tc -n "$PREFIX$i" qdisc replace dev "$IF" root tbf rate "$rate" burst "$burst" latency 20ms
      tc -n "$SW" qdisc replace dev "h$i" root tbf rate "$rate" burst "$burst" latency 20ms
    fi
  done
  echo "$rate" >"$STATE/rate"
}

# --- up / down ---------------------------------------------------------------
ensure_ns() { # NAME: create it, or accept it only if this cluster made it
  if [ -e "/run/netns/$1" ]; then
    if ! grep -qx "$1" "$STATE/netns" 2>/dev/null; then
      [ -s "$STATE/netns" ] || { rm -rf "$STATE"; rmdir "$ROOT" 2>/dev/null || true; } # nothing made yet
      die "network namespace '$1' exists but emu.sh did not create it (not in $STATE/netns): choose another --prefix, or remove it with 'ip netns del $1'"
    fi
    return 0
  fi
  grep -qx "$1" "$STATE/netns" 2>/dev/null || echo "$1" >>"$STATE/netns" # recorded before it exists
  ip netns add "$1" || die "cannot create network namespace '$1' (root and CAP_SYS_ADMIN needed)"
}

cmd_up() {
  local n="" rate=""
  while [ $# -gt 0 ]; do
    case $1 in
      --rate) rate=${2:?--rate needs a value}; shift 2 ;;
      --prefix) set_prefix "${2:?--prefix needs a value}"; shift 2 ;;
      [0-9]*) n=$1; shift ;;
      *) die "up: unknown argument '$1'" ;;
    esac
  done
  [[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 250 ]] || die "up: give the number of hosts, 1 to 250"
  [ -z "$rate" ] || [ "${rate,,}" = none ] || rate_bps "$rate" >/dev/null
  [ "$(id -u)" = 0 ] || die "up: needs root (network namespaces, tc)"
  load
  [ "$N" = 0 ] || [ "$N" = "$n" ] || die "cluster '$PREFIX' is up with $N hosts, not $n: run 'emu.sh --prefix $PREFIX down' first"
  mkdir -p "$STATE"
  N=$n

  ensure_ns "$SW"
  ip -n "$SW" link set lo up
  ip -n "$SW" link show br0 >/dev/null 2>&1 || ip -n "$SW" link add br0 type bridge
  ip -n "$SW" link set br0 up
  local i ns
  for i in $(seq 1 "$N"); do
    ns=$PREFIX$i
    ensure_ns "$ns"
    if ! ip -n "$ns" link show "$IF" >/dev/null 2>&1; then
      ip -n "$SW" link del "h$i" 2>/dev/null || true # a half-made pair from an interrupted run
      ip -n "$SW" link add "h$i" type veth peer name "$IF" netns "$ns"
    fi
    ip -n "$SW" link set "h$i" master br0 up
    ip -n "$ns" addr replace "$NET.$i/24" dev "$IF"
    ip -n "$ns" link set "$IF" up
    ip -n "$ns" link set lo up
  done

  # name resolution inside the hosts (nsexec bind-mounts this over /etc/hosts
  # in the host's private mount namespace; the real /etc/hosts is untouched)
  {
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
    for i in $(seq 1 "$N"); do printf '%s.%d\t%s%d\n' "$NET" "$i" "$PREFIX" "$i"; done
  } >"$STATE/hosts"
  for i in $(seq 1 "$N"); do echo "$PREFIX$i slots=1"; done >"$STATE/hostfile"
  echo "$N" >"$STATE/n"

  [ -n "$rate" ] || rate=$(cat "$STATE/rate" 2>/dev/null || echo none) # a re-run keeps the rate
  shape_all "$rate"
  echo "emu: cluster '$PREFIX' up: $N hosts ${PREFIX}[1-$N] at $NET.[1-$N], links at $rate, state in $STATE"
}

kill_inside() { # end every process in the cluster's namespaces: TERM, then KILL after 5 s
  local -a pids=() alive=()
  local ns p
  while read -r ns; do
    [ -e "/run/netns/$ns" ] || continue
    while read -r p; do pids+=("$p"); done < <(ip netns pids "$ns" 2>/dev/null)
  done < <(cat "$STATE/netns" 2>/dev/null)
  [ ${#pids[@]} -gt 0 ] || return 0
  echo "emu: ending processes left in the hosts: ${pids[*]}"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    alive=()
    for p in "${pids[@]}"; do # a zombie has ended: only its parent can reap it
      grep -qs '^State:[[:space:]]*[^Z[:space:]]' "/proc/$p/status" && alive+=("$p")
    done
    [ ${#alive[@]} -gt 0 ] || return 0
    sleep 0.1
  done
  kill -KILL "${alive[@]}" 2>/dev/null || true
}

cmd_down() {
  while [ $# -gt 0 ]; do
    case $1 in
      --prefix) set_prefix "${2:?--prefix needs a value}"; shift 2 ;;
      *) die "down: unknown argument '$1'" ;;
    esac
  done
  load
  if [ ! -d "$STATE" ]; then
    local stray
    stray=$(ip netns list 2>/dev/null | awk -v p="$PREFIX" 'index($1, p) == 1 && substr($1, length(p) + 1) ~ /^([0-9]+|sw)$/ { print $1 }' | paste -sd ' ')
    [ -z "$stray" ] || echo "emu: warning: namespaces '$stray' look like cluster '$PREFIX' but have no record in $STATE; left alone" >&2
    echo "emu: cluster '$PREFIX' is not up"
    return 0
  fi
  kill_inside
  local ns
  # deleting a namespace deletes its interfaces, so the veths, the bridge and the qdiscs go too
  while read -r ns; do
    [ ! -e "/run/netns/$ns" ] || ip netns del "$ns"
  done < <(cat "$STATE/netns" 2>/dev/null)
  rm -rf "$STATE"
  rmdir "$ROOT" 2>/dev/null || true
  echo "emu: cluster '$PREFIX' down"
}

# --- status / shape ----------------------------------------------------------
cmd_status() {
  load
  if [ "$N" = 0 ]; then echo "emu: cluster '$PREFIX' is not up"; return 0; fi
  echo "cluster '$PREFIX': $N hosts, rate $(cat "$STATE/rate"), state $STATE"
  local i ns addr q procs
  for i in $(seq 1 "$N"); do
    ns=$PREFIX$i
    if [ ! -e "/run/netns/$ns" ]; then echo "  $ns: MISSING (run up again to repair)"; continue; fi
    addr=$(ip -n "$ns" -br addr show dev "$IF" 2>/dev/null | awk '{ print $3 " (" $2 ")" }')
    q=$(tc -n "$ns" qdisc show dev "$IF" root 2>/dev/null | grep -o 'rate [^ ]*' || echo unshaped)
    procs=$(ip netns pids "$ns" | wc -l)
    echo "  $ns: $IF $addr, egress $q, $procs processes"
  done
}

cmd_shape() {
  local rate=""
  while [ $# -gt 0 ]; do
    case $1 in
      --prefix) set_prefix "${2:?--prefix needs a value}"; shift 2 ;;
      *) rate=$1; shift ;;
    esac
  done
  [ -n "$rate" ] || die "shape: give a rate (e.g. 1gbit, 200mbit, none)"
  need
  shape_all "$rate"
  echo "emu: cluster '$PREFIX' links at ${rate,,}"
}

# --- mpirun ------------------------------------------------------------------
cmd_mpirun() {
  need
  local -a margs=() prog=()
  if printf '%s\n' "$@" | grep -qx -- '--'; then
    while [ "$1" != -- ]; do margs+=("$1"); shift; done
    shift
  fi
  prog=("$@")
  [ ${#prog[@]} -gt 0 ] || die "mpirun: no program (emu.sh mpirun [MPIRUN ARGS] -- PROGRAM ARGS)"
  # an absolute path, so the daemons on the other hosts find it whatever their directory
  if [[ ${prog[0]} == */* ]]; then
    local abs
    abs=$(realpath -e "${prog[0]}" 2>/dev/null) || die "mpirun: no program '${prog[0]}'"
    prog[0]=$abs
  fi

  has() { printf '%s\n' "${margs[@]+"${margs[@]}"}" | grep -qxE -- "$1"; }
  mca() { # NAME VALUE: our default unless the caller set it (Open MPI refuses a duplicate --mca)
    local i
    for ((i = 0; i + 1 < ${#margs[@]}; i++)); do
      [[ ${margs[i]} =~ ^--?mca$ && ${margs[i + 1]} == "$1" ]] && return 0
    done
    args+=(--mca "$1" "$2")
  }
  local -a args=(mpirun --hostfile "$STATE/hostfile" --oversubscribe)
  has '-(n|np|-n|-np|c)' || args+=(-np "$N")
  has '--?map-by' || args+=(--map-by node)
  [ "$(id -u)" != 0 ] || args+=(--allow-run-as-root)
  mca plm_rsh_agent "$NSEXEC"
  mca plm_rsh_no_tree_spawn 1
  mca btl tcp,self
  mca btl_tcp_if_include "$IF"
  mca oob_tcp_if_include "$IF"
  mca mpi_yield_when_idle 1
  local v
  for v in $(compgen -e); do
    [[ $v =~ ^(OMP_|MOE_|OPENBLAS_|CK_)|^(A|UB|L)SAN_OPTIONS$ ]] && args+=(-x "$v")
  done
  # mpirun runs on host 1: the daemons it starts on the other hosts call back to it over emu0
  MOE_EMU_STATE=$STATE exec "$NSEXEC" "${PREFIX}1" \
    "exec $(printf '%q ' "${args[@]}" "${margs[@]+"${margs[@]}"}" "${prog[@]}")"
}

# --- bw: raw TCP throughput between two hosts (no MPI) -------------------------
BW_PY='
import socket, sys, time
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "recv":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(1); s.settimeout(30)
    print("listening", flush=True)
    c, _ = s.accept(); c.settimeout(60)
    got, t0 = 0, None
    while True:
        b = c.recv(1 << 20)
        if t0 is None: t0 = time.monotonic()
        if not b: break
        got += len(b)
    dt = time.monotonic() - t0
    print("%d %.6f" % (got, dt))
else:
    total = int(sys.argv[4]); buf = bytes(1 << 20)
    for _ in range(100):
        try: s = socket.create_connection((addr, port)); break
        except OSError: time.sleep(0.05)
    else: sys.exit("bw: cannot connect to %s:%d" % (addr, port))
    while total > 0:
        n = min(total, len(buf)); s.sendall(buf[:n]); total -= n
    s.close()
'

cmd_bw() {
  local from=1 to=2 mb=64 port=5201
  while [ $# -gt 0 ]; do
    case $1 in
      --from) from=$2; shift 2 ;;
      --to) to=$2; shift 2 ;;
      --mbytes) mb=$2; shift 2 ;;
      *) die "bw: unknown argument '$1'" ;;
    esac
  done
  need
  [[ $from =~ ^[0-9]+$ && $to =~ ^[0-9]+$ && $from -ge 1 && $to -ge 1 && $from -le $N && $to -le $N && $from != "$to" ]] ||
    die "bw: --from and --to must be two different hosts in 1..$N"
  [[ $mb =~ ^[0-9]+$ && $mb -ge 1 ]] || die "bw: --mbytes must be a positive integer"
  command -v python3 >/dev/null || die "bw: needs python3"
  local out res bytes secs
  out=$(mktemp)
  ip netns exec "$PREFIX$to" python3 -c "$BW_PY" recv "$NET.$to" "$port" >"$out" &
  local srv=$!
  ip netns exec "$PREFIX$from" python3 -c "$BW_PY" send "$NET.$to" "$port" $((mb * 1000000)) ||
    { kill "$srv" 2>/dev/null; rm -f "$out"; die "bw: the transfer failed"; }
  wait "$srv" || { rm -f "$out"; die "bw: the receiver failed"; }
  res=$(tail -n 1 "$out"); rm -f "$out"
  read -r bytes secs <<<"$res"
  awk -v b="$bytes" -v s="$secs" -v f="$PREFIX$from" -v t="$PREFIX$to" -v r="$(cat "$STATE/rate")" \
    'BEGIN { printf "bw: %s -> %s: %.1f MB in %.3f s = %.1f Mbit/s (link rate %s)\n", f, t, b / 1e6, s, b * 8 / s / 1e6, r }'
}

# --- main --------------------------------------------------------------------
while [ $# -gt 0 ] && [ "$1" = --prefix ]; do set_prefix "${2:?--prefix needs a value}"; shift 2; done
[ $# -gt 0 ] || { usage >&2; exit 2; }
cmd=$1; shift
case $cmd in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  shape) cmd_shape "$@" ;;
  status) cmd_status "$@" ;;
  mpirun) cmd_mpirun "$@" ;;
  bw) cmd_bw "$@" ;;
  -h | --help | help) usage ;;
  *) die "unknown command '$cmd' (up, shape, status, mpirun, bw, down)" ;;
esac
