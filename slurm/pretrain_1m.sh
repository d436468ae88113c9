#!/bin/bash
# Pretrain a 1M-token-context model on 4 nodes x 8 GPUs (8 for the 1B models), requeued until done.
#
#   sbatch slurm/pretrain_1m.sh [section.key=value ...]               # HyenaDNA large-1m
#   MODEL=mamba sbatch slurm/pretrain_1m.sh [section.key=value ...]   # Mamba 1M context scaling
#   MODEL=hyena-1b sbatch --nodes=8 slurm/pretrain_1m.sh [...]        # Hyena 1B (configs/hyena_1b_1m.yaml)
#   MODEL=mamba-1b sbatch --nodes=8 slurm/pretrain_1m.sh [...]        # Mamba 1B (configs/mamba_1b_1m.yaml)
#   MODEL=hyena-1b DRY_RUN=1 bash slurm/pretrain_1m.sh                # print the command, start nothing
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

NODES_DEFAULT=4
case "${MODEL:-hyena}" in
  hyena) CONFIG=configs/hyenadna_large_1m.yaml ;;
  mamba) CONFIG=configs/mamba_dna_1m.yaml ;;
  hyena-1b) CONFIG=configs/hyena_1b_1m.yaml; NODES_DEFAULT=8 ;;
  mamba-1b) CONFIG=configs/mamba_1b_1m.yaml; NODES_DEFAULT=8 ;;
  *) echo "slurm/pretrain_1m.sh: MODEL must be hyena, mamba, hyena-1b or mamba-1b, got '${MODEL}'" >&2; exit 2 ;;
esac
cd "${SLURM_SUBMIT_DIR:-.}" || exit 2
# Tensor- and sequence-parallel degrees: the fewest ranks per window the planner finds fitting this config on this
# allocation (each TP x SP group inside one node, data parallelism across nodes); GPU_MEM_GB is one GPU's memory
# (default 80). A parallel.tensor=T or parallel.sequence=N argument still wins (later overrides win).
NODES=${SLURM_JOB_NUM_NODES:-$NODES_DEFAULT}
PER_NODE=${SLURM_NTASKS_PER_NODE:-8}
PICK=$("${PYTHON:-.venv/bin/python}" -m parallel.plan --config "$CONFIG" --gpus $((NODES * PER_NODE)) \
  --gpus-per-node "$PER_NODE" --gpu-mem-gb "${GPU_MEM_GB:-80}" --pick-args "$@") || exit 2
read -r -a DEGREES <<< "$PICK"  # parallel.tensor=T parallel.sequence=S
echo "slurm/pretrain_1m.sh: ${DEGREES[*]} (python -m parallel.plan, ${NODES} x ${PER_NODE} GPUs of ${GPU_MEM_GB:-80} GB)"
if [ -n "${DRY_RUN:-}" ]; then
  echo "bash slurm/pretrain.sh $CONFIG ${DEGREES[*]}${*:+ $*}"
  exit 0
fi
exec bash slurm/pretrain.sh "$CONFIG" "${DEGREES[@]}" "$@"
