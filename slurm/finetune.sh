#!/bin/bash
# Fine-tune on a SLURM allocation, one task per GPU, resumable across preemption and time limits.
#
#   sbatch [sbatch options] slurm/finetune.sh CONFIG [section.key=value ...]
#   e.g. sbatch slurm/finetune.sh configs/finetune/human_nontata_promoters.yaml
#        sbatch --nodes=2 slurm/finetune.sh configs/finetune/species_hyenadna.yaml data.seq_len=1048576 \
#          train.micro_batch=1 run.name=species_1m
#
# The launch, signal forwarding (SIGUSR1 ahead of the time limit: save, exit 0, requeue; SIGTERM: save, exit) and
# resume from <run dir>/checkpoints/latest are slurm/pretrain.sh's, run with APP=finetune/main.py; read its header.
# The #SBATCH lines below are this script's defaults (fine-tuning runs are smaller: one node, 8 GPUs, 12 h).
#SBATCH --job-name=longdna-ft
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
cd "${SLURM_SUBMIT_DIR:-.}" || exit 2
[ -f slurm/pretrain.sh ] || { echo "slurm/finetune.sh: submit from the repository root" >&2; exit 2; }
APP=finetune/main.py exec bash slurm/pretrain.sh "$@"
