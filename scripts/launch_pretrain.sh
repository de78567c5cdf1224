#!/usr/bin/env bash
# Launch recipes for pretraining (pipelines/pretrain.py). Every run writes <out>/run_config.json,
# <out>/metrics.jsonl, checkpoints under <out>/checkpoints (a rerun of the same command resumes),
# and <out>/final/{model.safetensors,config.json} — the `pipelines.finetune --init` input.
#
#   scripts/launch_pretrain.sh RECIPE [extra pipelines.pretrain flags…]
#
# Recipes:
#   cpu-debug     one process, debug model, pixel codec (runs on a laptop)
#   cpu-2proc     `deepspeed --num_gpus 2` on a CPU-only machine: 2 processes over gloo, ZeRO-2
#   cpu-torchrun  the same with torchrun
#   learning      Meta-World rollouts → shards → debug pretraining → PNG strip (benchmarks/pretrain_learning.py)
#   gpu-small     N GPUs (NGPUS, default all), small model, bf16 ZeRO-2
#   gpu-wan22-5b  N GPUs, the paper's geometry from a diffusers Wan2.2-TI2V-5B checkpoint, Wan VAE
#                 latents, bf16 ZeRO-3 + activation checkpointing; WAN=<diffusers pipeline folder>
#
# Environment: DATA (shards folder or dataset repo id), OUT (run folder), PORT (rendezvous port,
# pick distinct ones for jobs sharing a machine), NGPUS.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
# DeepSpeed compiles its C++ ops on first use, slowly (BENCHMARKS.md): keep them in the project, once.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}
export PYTHONPATH=${PYTHONPATH:-$PWD}

recipe=${1:?usage: scripts/launch_pretrain.sh RECIPE [flags…] (see the header)}
shift
DATA=${DATA:-runs/shards}
PORT=${PORT:-29533}
NGPUS=${NGPUS:-$("$PY" -c 'import torch; print(max(1, torch.cuda.device_count()))')}

case "$recipe" in
  cpu-debug)
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$PY" -m pipelines.pretrain --preset debug \
      --data "$DATA" --out "${OUT:-runs/pretrain-debug}" "$@"
    ;;
  cpu-2proc)
    # the launcher's flag is --module (it rejects -m); on CPU --num_gpus N asks for N processes
    OMP_NUM_THREADS=1 "$BIN/deepspeed" --num_gpus 2 --master_port "$PORT" --module pipelines.pretrain \
      --preset debug --zero-stage 2 --threads 1 --data "$DATA" --out "${OUT:-runs/pretrain-debug-2p}" "$@"
    ;;
  cpu-torchrun)
    OMP_NUM_THREADS=1 "$BIN/torchrun" --nproc_per_node 2 --master_port "$PORT" -m pipelines.pretrain \
      --preset debug --zero-stage 2 --threads 1 --data "$DATA" --out "${OUT:-runs/pretrain-debug-tr}" "$@"
    ;;
  learning)
    MUJOCO_GL=${MUJOCO_GL:-egl} "$PY" -m benchmarks.pretrain_learning --out "${OUT:-runs/pretrain-learning}" "$@"
    ;;
  gpu-small)
    "$BIN/deepspeed" --num_gpus "$NGPUS" --master_port "$PORT" --module pipelines.pretrain \
      --preset small --data "$DATA" --out "${OUT:-runs/pretrain-small}" "$@"
    ;;
  gpu-wan22-5b)
    WAN=${WAN:?set WAN to a diffusers Wan2.2-TI2V-5B folder (transformer/ and vae/)}
    "$BIN/deepspeed" --num_gpus "$NGPUS" --master_port "$PORT" --module pipelines.pretrain \
      --preset wan22-5b --init-wan "$WAN" --codec wan-vae --vae "$WAN" \
      --latent-cache "${OUT:-runs/pretrain-wan22-5b}/latents" \
      --data "$DATA" --out "${OUT:-runs/pretrain-wan22-5b}" "$@"
    ;;
  *)
    echo "launch_pretrain.sh: unknown recipe '$recipe' (cpu-debug, cpu-2proc, cpu-torchrun, learning, gpu-small, gpu-wan22-5b)" >&2
    exit 2
    ;;
esac
