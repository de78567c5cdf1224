#!/usr/bin/env bash
# A dataset written by LeRobot's own writer (lerobot 0.4.4, the last release for Python 3.11)
# must ingest with no gwp_source.json, its actions, states and decoded frames equal to what
# LeRobot itself reads back.
#
# usage: scripts/check_lerobot_native.sh [WORKDIR]
#
# lerobot lives in its own virtualenv (.venvs/lerobot-native), never in the project's .venv.
# Its pip dependencies would pull a second torch (gigabytes of CUDA wheels), so the venv is
# made of: `pip install --no-deps` of lerobot and the few pure-Python packages its dataset
# code imports, plus a .pth line that puts the project venv's site-packages (torch, numpy,
# pyarrow, datasets, av …) behind its own. torchvision's video reader is gone from the
# project's torchvision, so LeRobot decodes with torchcodec, which loads FFmpeg by its
# plain library names: links to the FFmpeg that PyAV's wheel bundles provide them.
# Exit status: 0 when everything equals, 1 on a difference, 2 on usage errors.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
project_venv="${GWP_PROJECT_VENV:-$repo/.venv}"
venv="${LEROBOT_NATIVE_VENV:-$repo/.venvs/lerobot-native}"
work="${1:-$repo/runs/check_lerobot_native}"
if [[ $# -gt 1 ]]; then
  echo "usage: $0 [WORKDIR]" >&2
  exit 2
fi
site="$("$project_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

if [[ ! -f "$venv/.complete" ]]; then
  echo "creating $venv (lerobot==0.4.4 over the project's torch)" >&2
  rm -rf "$venv"
  "$project_venv/bin/python" -m venv "$venv"
  vsite="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$site" > "$vsite/gwp_project_venv.pth"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    lerobot==0.4.4 torchcodec==0.17.0 accelerate draccus==0.10.0 jsonlines deepdiff orderly-set \
    termcolor mergedeep pyyaml-include toml typing-inspect mypy-extensions
  mkdir -p "$venv/ffmpeg-libs"
  for lib in "$site"/av.libs/libav*.so.* "$site"/av.libs/libsw*.so.*; do
    name="$(basename "$lib")"  # libavcodec-<hash>.so.62.28.103 -> libavcodec.so.62
    plain="${name%%-*}.so.$(sed -E 's/.*\.so\.([0-9]+).*/\1/' <<<"$name")"
    ln -sf "$lib" "$venv/ffmpeg-libs/$plain"
  done
  touch "$venv/.complete"
fi

rm -rf "$work" && mkdir -p "$work/embodiments"
echo "== lerobot 0.4.4 writes and reads back =="
LD_LIBRARY_PATH="$venv/ffmpeg-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" HF_HUB_OFFLINE=1 \
  "$venv/bin/python" "$repo/scripts/lerobot_native_helper.py" "$work" 2>"$work/lerobot.log" \
  || { tail -20 "$work/lerobot.log" >&2; exit 1; }
echo "== gwp ingests with no mapping and compares =="
cd "$repo"
# the generated embodiment goes to the work folder, not the user's config
GWP_EMBODIMENT_PATH="$work/embodiments" PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" \
  "$project_venv/bin/python" scripts/check_lerobot_native.py "$work"
