#!/usr/bin/env bash
# slurm/local/stop.sh STATE_DIR — stop the cluster that slurm/local/start.sh STATE_DIR started.
#
# Cancels the jobs it still knows, then stops exactly the processes of STATE_DIR/run/*.pid (each only while its
# command line still names STATE_DIR), slurmd's first, and removes the /etc/hosts line start.sh added. The state
# (logs, config) stays in STATE_DIR. Safe to run twice or after a start that failed half-way.
set -uo pipefail

[ $# -eq 1 ] && [ -d "$1" ] || { echo "usage: slurm/local/stop.sh STATE_DIR (an existing directory)" >&2; exit 1; }
STATE=$(cd "$1" && pwd -P)
export SLURM_CONF="$STATE/etc/slurm.conf"

pid_of() { local pid; pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$STATE/" && echo "$pid"; }

stop() {  # pidfile: TERM, up to 10 s, then KILL
  local pid
  if pid=$(pid_of "$1"); then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do
      [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null || break
      sleep 0.1
    done
    [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$1"
}

if pid_of "$STATE/run/slurmctld.pid" > /dev/null && [ -f "$SLURM_CONF" ]; then
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    scancel $jobs 2>/dev/null
    for _ in $(seq 60); do [ -z "$(squeue -h -t R,CG,S -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi
for pf in "$STATE"/run/slurmd-*.pid; do [ -e "$pf" ] && stop "$pf"; done
stop "$STATE/run/slurmctld.pid"
stop "$STATE/run/munged.pid"
rm -f "$STATE/munge/munge.socket" "$STATE/munge/munge.socket.lock"

marker="# longdna local slurm $STATE"
if grep -qF "$marker" /etc/hosts 2>/dev/null; then
  kept=$(grep -vF "$marker" /etc/hosts)
  printf '%s\n' "$kept" > /etc/hosts   # in place: /etc/hosts may be a bind mount
fi
echo "slurm/local/stop.sh: stopped the cluster of $STATE"
