#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for tests and trying `moe submit`:
# its own munged, slurmctld and slurmd, all state under one directory.
#   scripts/slurm/slurm-up.sh [--etc] [STATE_DIR]     (default $MOE_SLURM_DIR or /tmp/moe-slurm)
#   export SLURM_CONF=STATE_DIR/slurm.conf            (or: source STATE_DIR/env)
#   scripts/slurm/slurm-down.sh [--clean] [STATE_DIR]
# Idempotent: daemons it already started are left running. It records the PID
# of each daemon it starts (STATE_DIR/run/started.NAME) so slurm-down.sh stops
# exactly those. It never touches the system's munged (ours has its own socket
# and key under STATE_DIR) nor an /etc/slurm/slurm.conf it did not write:
# --etc links /etc/slurm/slurm.conf to ours only where none exists, so plain
# sinfo/sbatch find the cluster without SLURM_CONF.
# Ports: MOE_SLURM_PORT (slurmctld, default 6817) and the next one (slurmd).
# Needs root and the Debian packages slurm-wlm, munge and libpmix2.
set -euo pipefail
etc=0
[ "${1:-}" = --etc ] && { etc=1; shift; }
D=$(realpath -m "${1:-${MOE_SLURM_DIR:-/tmp/moe-slurm}}")
PORT=${MOE_SLURM_PORT:-6817}
die() { echo "slurm-up: error: $*" >&2; exit 1; }
say() { echo "slurm-up: $*"; }

[ "$(id -u)" = 0 ] || die "needs root (the daemons run as root here)"
for c in munged mungekey munge slurmctld slurmd sinfo scontrol; do
  command -v "$c" >/dev/null || die "$c not found: install the Debian packages slurm-wlm munge libpmix2"
done
mkdir -p "$D"/{run,log,ctld,spool,tmp,munge}
chmod 755 "$D"
CONF=$D/slurm.conf
export SLURM_CONF=$CONF

# ours_alive NAME: the daemon we recorded is still that process
ours_alive() {
  local f=$D/run/started.$1
  [ -s "$f" ] && [ "$(cat "/proc/$(cat "$f")/comm" 2>/dev/null)" = "$1" ]
}
# something already listens on 127.0.0.1:PORT
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---- munge: a private daemon, socket and key ----
M=$D/munge
if ours_alive munged; then
  say "munged already running (pid $(cat "$D/run/started.munged"))"
else
  chown munge:munge "$M"; chmod 755 "$M" # clients reach the socket; the key stays 0600
  [ -s "$M/munge.key" ] || runuser -u munge -- mungekey --create --keyfile="$M/munge.key" --bits=1024
  rm -f "$M/munge.socket" "$M/munge.socket.lock" "$M/munged.pid"
  runuser -u munge -- munged --socket="$M/munge.socket" --key-file="$M/munge.key" \
    --pid-file="$M/munged.pid" --log-file="$M/munged.log" --seed-file="$M/munged.seed"
  for _ in $(seq 50); do [ -s "$M/munged.pid" ] && break; sleep 0.1; done
  [ -s "$M/munged.pid" ] || die "munged did not start; see $M/munged.log"
  cp "$M/munged.pid" "$D/run/started.munged"
  say "started munged (pid $(cat "$M/munged.pid"))"
fi
munge -S "$M/munge.socket" -n | unmunge -S "$M/munge.socket" >/dev/null || die "munge does not answer on $M/munge.socket"

# ---- slurm.conf: rewritten only when it changes ----
NODE=$(hostname -s)
# the node line from the hardware probe, minus UpTime (RealMemory above what
# slurmd finds would drain the node)
NODELINE=$(slurmd -C | head -1 | sed 's/ *UpTime=.*//')
NEW="# written by moe.c scripts/slurm/slurm-up.sh for $D
ClusterName=moe
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
MailProg=/bin/true
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$M/munge.socket
StateSaveLocation=$D/ctld
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
TmpFS=$D/tmp
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
$NODELINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW" ]; then
  printf '%s\n' "$NEW" >"$CONF.tmp" && mv "$CONF.tmp" "$CONF"
  changed=1
  say "wrote $CONF"
fi
printf 'export SLURM_CONF=%q\n' "$CONF" >"$D/env"

# ---- daemons ----
fresh=0 # slurmctld started by this call
start_daemon() { # NAME PORT
  if ours_alive "$1"; then
    say "$1 already running (pid $(cat "$D/run/started.$1"))"
    return
  fi
  port_busy "$2" && die "port $2 is taken by a daemon we did not start (set MOE_SLURM_PORT)"
  rm -f "$D/run/$1.pid"
  "$1" # daemonizes and writes its PidFile
  for _ in $(seq 100); do [ -s "$D/run/$1.pid" ] && break; sleep 0.1; done
  [ -s "$D/run/$1.pid" ] || { tail -20 "$D/log/$1.log" >&2; die "$1 did not start; see $D/log/$1.log"; }
  cp "$D/run/$1.pid" "$D/run/started.$1"
  [ "$1" = slurmctld ] && fresh=1
  say "started $1 (pid $(cat "$D/run/$1.pid"))"
}
start_daemon slurmctld "$PORT"
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
# a controller that was already running rereads a changed file
[ "$changed" = 1 ] && [ "$fresh" = 0 ] && { scontrol reconfigure >/dev/null || die "scontrol reconfigure failed"; }
start_daemon slurmd $((PORT + 1))

st=
for _ in $(seq 300); do
  st=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
  case "$st" in
    idle | mixed | allocated) break ;;
    *drain* | down*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.1
done
case "$st" in idle | mixed | allocated) ;; *) die "node $NODE is '$st', not ready; see $D/log/" ;; esac

if [ "$etc" = 1 ]; then
  E=/etc/slurm/slurm.conf
  if [ -L "$E" ] && [ "$(readlink "$E")" = "$CONF" ]; then :
  elif [ -e "$E" ] || [ -L "$E" ]; then
    echo "slurm-up: $E exists and is not ours: left alone (use SLURM_CONF)" >&2
  else
    mkdir -p /etc/slurm && ln -s "$CONF" "$E" && echo "$E" >"$D/run/etc-link" && say "linked $E -> $CONF"
  fi
fi
say "node $NODE is $st; cluster 'moe' on port $PORT, state in $D"
echo "  export SLURM_CONF=$CONF      # or: source $D/env"
echo "  moe submit --nodes 1 --ntasks-per-node 2 [train flags] --wait"
echo "  scripts/slurm/slurm-down.sh${1:+ $D}   # stops what this started (--clean also removes $D)"
