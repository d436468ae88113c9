#!/bin/bash
# Pretrain on a SLURM allocation, one task per GPU, resumable across preemption and time limits.
#
#   sbatch [sbatch options] slurm/pretrain.sh CONFIG [section.key=value ...]
#   e.g. sbatch --nodes=2 slurm/pretrain.sh configs/hyenadna_tiny_1k.yaml run.name=tiny data.path=data/hg38
#
# Submit from the repository root. The #SBATCH lines below are defaults (one 8-GPU node); sbatch options on the
# command line override them. srun starts one `python pretrain/main.py` per task; the app reads its rank, world
# size and local rank from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and the rendezvous from MASTER_ADDR /
# MASTER_PORT exported here.
#
# Stopping and requeueing: SLURM sends SIGUSR1 to this script ahead of the time limit (--signal=B:USR1@...);
# it is forwarded to every task, which finishes its optimizer step, saves a checkpoint and exits 0, and the job
# is then requeued. A requeued (or resubmitted) job resumes from <run dir>/checkpoints/latest by itself.
# SIGTERM (scancel, preemption) is forwarded the same way but does not requeue: a preempted job is requeued by
# SLURM itself, a cancelled one stays cancelled.
#
# Environment: PYTHON (default .venv/bin/python), APP (default pretrain/main.py; slurm/finetune.sh sets
# finetune/main.py), MASTER_PORT (default derived from the job id),
# NCCL_* (set below only where unset).
#SBATCH --job-name=longdna
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail

if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: sbatch [sbatch options] slurm/pretrain.sh CONFIG.yaml [section.key=value ...]" >&2
  echo "       (run from the repository root; got config '${1:-}')" >&2
  exit 2
fi
CONFIG=$1
shift
cd "${SLURM_SUBMIT_DIR:-.}" || exit 2
APP=${APP:-pretrain/main.py}
[ -f "$APP" ] || { echo "slurm/pretrain.sh: submit from the repository root (no $APP in $PWD)" >&2; exit 2; }
PYTHON=${PYTHON:-.venv/bin/python}

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
# NCCL: fail fast instead of hanging on a dead peer; site-specific fabric settings (NCCL_SOCKET_IFNAME,
# NCCL_IB_HCA, ...) belong in the environment of the submitting shell.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export PYTHONUNBUFFERED=1

echo "slurm/pretrain.sh: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NUM_NODES} node(s)," \
     "${SLURM_NTASKS} tasks, master ${MASTER_ADDR}:${MASTER_PORT}: ${CONFIG} $*"

caught=""
requeue=0
forward() {  # $1 = signal name: pass it on to every task through srun
  caught=$1
  [ "$1" = USR1 ] && requeue=1
  echo "slurm/pretrain.sh: SIG$1 received, asking the tasks to save and exit"
  kill -s "$1" "$srun_pid" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

srun --kill-on-bad-exit=1 "$PYTHON" "$APP" --config "$CONFIG" "$@" &
srun_pid=$!
while :; do
  wait "$srun_pid"
  rc=$?
  # `wait` returns early (status > 128) when a trapped signal arrives: wait again for srun itself.
  if [ $rc -gt 128 ] && [ -n "$caught" ]; then caught=""; continue; fi
  break
done

if [ $rc -eq 0 ] && [ $requeue -eq 1 ]; then
  echo "slurm/pretrain.sh: checkpoint saved; requeueing job ${SLURM_JOB_ID} (it resumes from latest)"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit $rc
