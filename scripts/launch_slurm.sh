#!/usr/bin/env bash
# Multi-node training on Slurm: one torchrun agent per node, meeting through the c10d rendezvous on
# the job's first node; each agent starts GPUS_PER_NODE processes of pipelines.pretrain (or finetune).
#
#   sbatch --nodes 4 --gpus-per-node 8 scripts/launch_slurm.sh pretrain --preset small \
#       --data owner/dataset --stream --out /shared/runs/small
#   sbatch --nodes 2 scripts/launch_slurm.sh finetune --preset debug --init /shared/runs/small/final \
#       --data hf://datasets/owner/dataset --out /shared/runs/policy
#
# --out must be on storage every node sees (checkpoints are written by every rank, metrics and the
# export by rank 0); --data may be a shared folder, a Hub repo id (downloaded on every node, or
# streamed with --stream) or any fsspec URL (streamed; see README "Streaming training data").
# Rerunning the same command resumes from the newest complete checkpoint in --out.
#
# Environment: GPUS_PER_NODE (default: the GPUs this node sees, at least 1 process), PORT (rendezvous
# port on the first node, default 29500), PY (the project's python, default .venv/bin/python).
# Slurm's nodes: SLURM_JOB_NODELIST, SLURM_NNODES, SLURM_JOB_ID (set by sbatch/salloc).
#SBATCH --job-name=gwp-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

driver=${1:?usage: sbatch scripts/launch_slurm.sh pretrain|finetune [flags…]}
shift
case "$driver" in
  pretrain | finetune) ;;
  *)
    echo "launch_slurm.sh: unknown driver '$driver' (pretrain, finetune)" >&2
    exit 2
    ;;
esac
: "${SLURM_JOB_NODELIST:?launch_slurm.sh: not inside a Slurm allocation (submit it with sbatch)}"

PY=${PY:-.venv/bin/python}
PORT=${PORT:-29500}
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
GPUS_PER_NODE=${GPUS_PER_NODE:-$("$PY" -c 'import torch; print(max(1, torch.cuda.device_count()))')}
export PYTHONPATH=${PYTHONPATH:-$PWD}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}
# one thread per process unless told otherwise: several ranks share each node's cores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# one task per node (--ntasks-per-node=1); the rendezvous gives every agent its node rank
srun --kill-on-bad-exit=1 --ntasks="$SLURM_NNODES" --ntasks-per-node=1 \
  "$PY" -m torch.distributed.run \
  --nnodes "$SLURM_NNODES" --nproc-per-node "$GPUS_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$head:$PORT" --rdzv-id "gwp-$SLURM_JOB_ID" \
  -m "pipelines.$driver" "$@"
