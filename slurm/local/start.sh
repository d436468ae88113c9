#!/usr/bin/env bash
# slurm/local/start.sh STATE_DIR — a real SLURM cluster on this one machine, for the tests and CI.
#
# Starts munged, slurmctld and NODES slurmd daemons (simulated nodes n1..nN on 127.0.0.1, one port each) with every
# file (config, key, state, spool, logs, pid files) under STATE_DIR, and waits until the nodes are idle. Installs
# the Debian packages slurmctld slurmd slurm-client munge with apt-get if they are missing. Must run as root:
# slurmd switches to the job owner's uid. Stop with slurm/local/stop.sh STATE_DIR, which stops exactly the
# processes recorded here (STATE_DIR/run/*.pid).
#
# Afterwards: `source STATE_DIR/env.sh` (SLURM_CONF) gives sbatch / srun / squeue / scontrol for this cluster.
# Partition `debug` (the default) allows requeue. A requeued job waits AuthInfo cred_expire seconds before it may
# start again (SLURM's default 120 s); CRED_EXPIRE below shortens that for tests.
#
# Environment: NODES (2), CPUS (nproc, per node), CRED_EXPIRE (5, SLURM's minimum), PORT_BASE (16817: slurmctld;
# node K listens on PORT_BASE+K), TIMEOUT (60 s for the nodes to come up).
set -euo pipefail

die() { echo "slurm/local/start.sh: error: $*" >&2; exit 1; }
log() { echo "slurm/local/start.sh: $*"; }

[ $# -eq 1 ] && [ -n "$1" ] || die "usage: slurm/local/start.sh STATE_DIR"
[ "$(id -u)" = 0 ] || die "must run as root (slurmd switches to the uid of each job's owner)"
mkdir -p "$1"
STATE=$(cd "$1" && pwd -P)
NODES=${NODES:-2}
CPUS=${CPUS:-$(nproc)}
CRED_EXPIRE=${CRED_EXPIRE:-5}
PORT_BASE=${PORT_BASE:-16817}
TIMEOUT=${TIMEOUT:-60}
SOCK="$STATE/munge/munge.socket"
[ ${#SOCK} -lt 100 ] || die "STATE_DIR path is too long for a unix socket: $SOCK"

# --- packages (Debian); postinst scripts must not start the system-wide daemons, hence policy-rc.d
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null \
    || die "slurmctld/slurmd/sbatch/munged are missing and there is no apt-get to install them"
  log "installing slurmctld slurmd slurm-client munge with apt-get"
  policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d; policy=1; fi
  export DEBIAN_FRONTEND=noninteractive
  pkgs=(slurmctld slurmd slurm-client munge)
  apt-get install -y -q --no-install-recommends "${pkgs[@]}" > "$STATE/apt.log" 2>&1 \
    || { apt-get update -q >> "$STATE/apt.log" 2>&1; apt-get install -y -q --no-install-recommends "${pkgs[@]}" \
         >> "$STATE/apt.log" 2>&1; } \
    || { [ $policy = 1 ] && rm -f /usr/sbin/policy-rc.d; tail -20 "$STATE/apt.log" >&2; die "apt-get install failed"; }
  [ $policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

mkdir -p "$STATE"/{munge,etc,state,spool,log,run}
chmod 755 "$STATE" "$STATE/munge"   # munged wants a world-searchable socket directory
for k in $(seq 1 "$NODES"); do mkdir -p "$STATE/spool/n$k"; done

# A pid file counts only while its process lives and names STATE_DIR on its command line (pids get reused).
alive() { local pid; pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$STATE/"; }

# --- munge
[ -s "$STATE/munge/munge.key" ] || dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$STATE/munge/munge.key"
if ! alive "$STATE/run/munged.pid"; then
  rm -f "$SOCK" "$SOCK.lock"
  munged --key-file="$STATE/munge/munge.key" --socket="$SOCK" --pid-file="$STATE/run/munged.pid" \
         --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/seed" \
    || { tail -5 "$STATE/log/munged.log" >&2; die "munged did not start"; }
  for _ in $(seq 50); do alive "$STATE/run/munged.pid" && break; sleep 0.1; done
  alive "$STATE/run/munged.pid" || die "munged wrote no pid file"
fi

# --- slurm.conf: no cgroups, no accounting daemon, plain process tracking
CONF="$STATE/etc/slurm.conf"
NODELIST=n1; [ "$NODES" -gt 1 ] && NODELIST="n[1-$NODES]"
MEM_MB=$(( $(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) * 8 / 10 / NODES ))
{
  cat <<EOF
ClusterName=longdnatest
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$PORT_BASE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=$CRED_EXPIRE
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
KillWait=5
MinJobAge=600
EOF
  for k in $(seq 1 "$NODES"); do
    echo "NodeName=n$k NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=$((PORT_BASE + k)) CPUs=$CPUS" \
         "Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM_MB State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=$NODELIST Default=YES MaxTime=INFINITE State=UP"
} > "$CONF"
printf 'export SLURM_CONF=%q\n' "$CONF" > "$STATE/env.sh"
export SLURM_CONF="$CONF"

# --- node names must resolve (jobs use `scontrol show hostnames` for MASTER_ADDR); a marked line, removed by stop.sh
marker="# longdna local slurm $STATE"
if ! grep -qF "$marker" /etc/hosts; then
  line="127.0.0.1 $(for k in $(seq 1 "$NODES"); do printf 'n%s ' "$k"; done)$marker"
  echo "$line" >> /etc/hosts
fi

# --- daemons in the foreground (-D) of their own session; each writes its pid file
start_daemon() {  # name pidfile command...
  local name=$1 pidfile=$2; shift 2
  alive "$pidfile" && return
  rm -f "$pidfile"
  setsid "$@" > "$STATE/log/$name.out" 2>&1 < /dev/null &
  local bg=$!
  for _ in $(seq 100); do alive "$pidfile" && break; kill -0 "$bg" 2>/dev/null || break; sleep 0.1; done
  if ! alive "$pidfile"; then
    kill -0 "$bg" 2>/dev/null && echo "$bg" > "$pidfile" \
      || { tail -20 "$STATE/log/$name.out" >&2; die "$name did not start (see $STATE/log/)"; }
  fi
}
start_daemon slurmctld "$STATE/run/slurmctld.pid" slurmctld -D -f "$CONF"
for k in $(seq 1 "$NODES"); do
  start_daemon "slurmd-n$k" "$STATE/run/slurmd-n$k.pid" slurmd -D -N "n$k" -f "$CONF"
done

deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
  states=$(sinfo -h -N -o '%N %T' 2>/dev/null || true)
  up=$(echo "$states" | awk '$2 == "idle" || $2 == "mixed" || $2 == "allocated"' | grep -c . || true)
  [ "$up" -ge "$NODES" ] && break
  for n in $(echo "$states" | awk '$2 ~ /down|drain/ {print $1}'); do  # left down by an earlier run
    scontrol update NodeName="$n" State=RESUME || true
  done
  [ "$(date +%s)" -lt "$deadline" ] || { echo "$states" >&2; die "nodes not idle after ${TIMEOUT}s (logs: $STATE/log)"; }
  sleep 0.3
done
log "$NODES node(s) $NODELIST idle; source $STATE/env.sh to use them"
