#!/usr/bin/env bash
# Stops the cluster scripts/slurm/slurm-up.sh started under STATE_DIR: its
# jobs are cancelled, then slurmd, slurmctld and munged, each only if the PID
# it recorded is still that daemon (/proc/PID/comm). Nothing else is touched.
#   scripts/slurm/slurm-down.sh [--clean] [STATE_DIR]   (--clean: remove STATE_DIR too)
set -uo pipefail
clean=0
[ "${1:-}" = --clean ] && { clean=1; shift; }
D=$(realpath -m "${1:-${MOE_SLURM_DIR:-/tmp/moe-slurm}}")
say() { echo "slurm-down: $*"; }
[ -d "$D" ] || { say "nothing at $D"; exit 0; }
export SLURM_CONF=$D/slurm.conf
ours() { # NAME: prints the PID we recorded if it is still that daemon
  local f=$D/run/started.$1 pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
}
stop() { # NAME
  local pid
  if ! pid=$(ours "$1"); then
    [ -e "$D/run/started.$1" ] && say "$1 already gone"
    rm -f "$D/run/started.$1"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]; then
    say "$1 (pid $pid) ignored TERM: KILL"
    kill -KILL "$pid"
  fi
  rm -f "$D/run/started.$1"
  say "stopped $1 (pid $pid)"
}

if ours slurmctld >/dev/null; then
  ids=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    scancel $ids
    for _ in $(seq 150); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
    # shellcheck disable=SC2086
    say "cancelled jobs" $ids
  fi
fi
stop slurmd
# Step daemons (slurmstepd) our slurmd started and that outlived it (a step
# still ending): each runs in our log dir. They belong to this cluster only.
for p in /proc/[0-9]*; do
  [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
  case "$(readlink "$p/cwd" 2>/dev/null)" in "$D"/*) ;; *) continue ;; esac
  pid=${p#/proc/}
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] && kill -KILL "$pid" 2>/dev/null
  say "stopped a leftover slurmstepd (pid $pid)"
done
stop slurmctld
stop munged
if [ -s "$D/run/etc-link" ]; then
  E=$(cat "$D/run/etc-link")
  [ -L "$E" ] && [ "$(readlink "$E")" = "$D/slurm.conf" ] && rm -f "$E" && say "removed $E"
  rm -f "$D/run/etc-link"
fi
if [ "$clean" = 1 ]; then
  rm -rf "$D"
  say "removed $D"
fi
exit 0
