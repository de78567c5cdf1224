#!/usr/bin/env bash
# Check a LeRobot v2.1 / v3.0 dataset folder with the third-party `lerobot-doctor` (PyPI 0.2.0).
#
# usage: scripts/check_lerobot_doctor.sh DATASET_DIR [extra lerobot-doctor check args...]
#
# The doctor lives in its own virtualenv (.venvs/lerobot-doctor), never in the project's
# .venv, so its pins cannot disturb ours. Exit status: 0 when no check FAILs (warnings about
# data quality, e.g. zero variance in synthetic data, are printed but do not fail), 1 when a
# check fails (format errors), 2 on usage errors.
set -euo pipefail

if [[ $# -lt 1 || ! -d "$1" ]]; then
  echo "usage: $0 DATASET_DIR [lerobot-doctor check options]" >&2
  exit 2
fi
dataset="$1"
shift

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LEROBOT_DOCTOR_VENV:-$repo_root/.venvs/lerobot-doctor}"
version="0.2.0"

if [[ ! -x "$venv/bin/lerobot-doctor" ]]; then
  echo "creating $venv with lerobot-doctor==$version" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "lerobot-doctor==$version"
fi

# `check` (without --ci) exits 1 when any check reports FAIL.
exec "$venv/bin/lerobot-doctor" check "$dataset" --verbose "$@"
