#!/usr/bin/env bash
# Multi-node training on Kubernetes with KubeRay: a RayJob whose Ray cluster has one worker pod per
# training node; its entrypoint, scripts/ray_torchrun.py, runs one torchrun agent per worker (c10d
# rendezvous on the first) with GPUS_PER_NODE processes of pipelines.pretrain (or finetune) each.
#
#   IMAGE=registry/gwp:latest NODES=4 GPUS_PER_NODE=8 PVC=gwp-shared \
#     scripts/launch_kuberay.sh pretrain --preset small --data owner/dataset --stream --out /shared/runs/small
#   DRY_RUN=1 scripts/launch_kuberay.sh …     # print the RayJob manifest instead of applying it
#
# Needs the KubeRay operator (ray.io/v1 RayJob) and kubectl pointed at the cluster. The image holds
# this project at WORKDIR (default /app, with its .venv); the PersistentVolumeClaim PVC (ReadWriteMany)
# is mounted at /shared on every pod: --out must be under it (checkpoints from every rank, metrics
# and the export from rank 0). --data may be a folder under /shared, a Hub repo id, or an fsspec URL
# (streamed). HF_TOKEN, when set, reaches the pods through the secret HF_SECRET (key "token").
# Resubmitting the same job resumes from the newest complete checkpoint in --out.
set -euo pipefail

driver=${1:?usage: scripts/launch_kuberay.sh pretrain|finetune [flags…]}
shift
case "$driver" in
  pretrain | finetune) ;;
  *)
    echo "launch_kuberay.sh: unknown driver '$driver' (pretrain, finetune)" >&2
    exit 2
    ;;
esac
IMAGE=${IMAGE:?launch_kuberay.sh: set IMAGE to a container image holding this project}
NODES=${NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-1}
CPUS_PER_NODE=${CPUS_PER_NODE:-8}
MEMORY=${MEMORY:-64Gi}
PVC=${PVC:-gwp-shared}
WORKDIR=${WORKDIR:-/app}
HF_SECRET=${HF_SECRET:-hf-token}
NAME=${NAME:-gwp-$driver-$(date +%Y%m%d-%H%M%S)}
PY="$WORKDIR/.venv/bin/python"

# the flags as one shell-quoted string for the entrypoint
flags=$(printf ' %q' "$@")
gpu_limit=""
if [ "$GPUS_PER_NODE" -gt 0 ]; then
  gpu_limit="nvidia.com/gpu: $GPUS_PER_NODE"
fi

pod_spec() { # $1 = container name, $2 = extra indentation
  cat <<POD | sed "s/^/$2/"
containers:
  - name: $1
    image: $IMAGE
    workingDir: $WORKDIR
    env:
      - {name: PYTHONPATH, value: "$WORKDIR"}
      - {name: OMP_NUM_THREADS, value: "1"}
      - name: HF_TOKEN
        valueFrom: {secretKeyRef: {name: $HF_SECRET, key: token, optional: true}}
    resources:
      limits: {cpu: "$CPUS_PER_NODE", memory: "$MEMORY"${gpu_limit:+, $gpu_limit}}
    volumeMounts:
      - {name: shared, mountPath: /shared}
volumes:
  - name: shared
    persistentVolumeClaim: {claimName: $PVC}
POD
}

manifest=$(cat <<YAML
apiVersion: ray.io/v1
kind: RayJob
metadata:
  name: $NAME
spec:
  entrypoint: >-
    $PY scripts/ray_torchrun.py $driver --nodes $NODES --procs-per-node $GPUS_PER_NODE
    --cpus-per-node $CPUS_PER_NODE --rdzv-id $NAME --$flags
  shutdownAfterJobFinishes: true
  ttlSecondsAfterFinished: 600
  rayClusterSpec:
    headGroupSpec:
      rayStartParams: {num-cpus: "0"}
      template:
        spec:
$(pod_spec ray-head "          ")
    workerGroupSpecs:
      - groupName: trainers
        replicas: $NODES
        minReplicas: $NODES
        maxReplicas: $NODES
        rayStartParams: {}
        template:
          spec:
$(pod_spec ray-worker "            ")
YAML
)

if [ -n "${DRY_RUN:-}" ]; then
  printf '%s\n' "$manifest"
else
  printf '%s\n' "$manifest" | kubectl apply -f -
  echo "submitted RayJob $NAME: kubectl get rayjob $NAME; kubectl logs -f job/$NAME" >&2
fi
