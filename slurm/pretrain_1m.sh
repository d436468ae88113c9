#!/bin/bash
# Pretrain a 1M-token-context model on 4 nodes x 8 GPUs (32 data-parallel ranks), requeued until done.
#
#   sbatch slurm/pretrain_1m.sh [section.key=value ...]               # HyenaDNA large-1m
#   MODEL=mamba sbatch slurm/pretrain_1m.sh [section.key=value ...]   # Mamba 1M context scaling
#
# Submit from the repository root, with the hg38 shards at data/hg38 (or pass data.path=...). Everything else
# (srun, rank variables, NCCL settings, signal forwarding, requeue) is slurm/pretrain.sh. The longer signal lead
# covers a step at 1M tokens plus a checkpoint save.
#SBATCH --job-name=longdna-1m
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

case "${MODEL:-hyena}" in
  hyena) CONFIG=configs/hyenadna_large_1m.yaml ;;
  mamba) CONFIG=configs/mamba_dna_1m.yaml ;;
  *) echo "slurm/pretrain_1m.sh: MODEL must be hyena or mamba, got '${MODEL}'" >&2; exit 2 ;;
esac
cd "${SLURM_SUBMIT_DIR:-.}" || exit 2
# Sequence-parallel degree: the smallest the planner finds fitting this config on this allocation (each SP group
# inside one node, data parallelism across nodes); GPU_MEM_GB is one GPU's memory (default 80). A
# parallel.sequence=N argument still wins (later overrides win).
NODES=${SLURM_JOB_NUM_NODES:-4}
PER_NODE=${SLURM_NTASKS_PER_NODE:-8}
SP=$("${PYTHON:-.venv/bin/python}" -m parallel.plan --config "$CONFIG" --gpus $((NODES * PER_NODE)) \
  --gpus-per-node "$PER_NODE" --gpu-mem-gb "${GPU_MEM_GB:-80}" --pick "$@") || exit 2
echo "slurm/pretrain_1m.sh: parallel.sequence=$SP (python -m parallel.plan, ${NODES} x ${PER_NODE} GPUs of ${GPU_MEM_GB:-80} GB)"
exec bash slurm/pretrain.sh "$CONFIG" "parallel.sequence=$SP" "$@"
