#!/usr/bin/env bash
# Third-party validation of our writers, each validator in its own environment:
#   * lerobot-doctor on a freshly generated LeRobot v3.0 dataset and its v2.1 conversion;
#   * a dataset written by LeRobot 0.4.4 itself, ingested with no mapping, equal to LeRobot's
#     own reading (scripts/check_lerobot_native.sh);
#   * (with --tfds) tensorflow_datasets.builder_from_directory on our RLDS output.
# usage: scripts/check_formats.sh [--tfds] [WORKDIR]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tfds=0
if [[ "${1:-}" == "--tfds" ]]; then tfds=1; shift; fi
work="${1:-$repo/runs/check_formats}"
py="$repo/.venv/bin/python"
export MUJOCO_GL="${MUJOCO_GL:-egl}"

rm -rf "$work" && mkdir -p "$work"
cd "$repo"
"$py" -m pipelines.generate_sim --tasks drawer-open-v3,button-press-topdown-v3 --episodes-per-task 2 \
  --image-size 64 --out "$work/lerobot_v3" --no-progress
"$py" -m pipelines.convert "$work/lerobot_v3" --to lerobot_v2 --out "$work/lerobot_v2"
for ds in lerobot_v3 lerobot_v2; do
  echo "== lerobot-doctor: $ds =="
  bash scripts/check_lerobot_doctor.sh "$work/$ds"
done
echo "== LeRobot-written dataset, no mapping =="
bash scripts/check_lerobot_native.sh "$work/lerobot_native"
if [[ $tfds -eq 1 ]]; then
  echo "== tensorflow_datasets: RLDS =="
  bash scripts/check_rlds_tfds.sh "$work/rlds"
fi
echo "check-formats: all validators passed"
