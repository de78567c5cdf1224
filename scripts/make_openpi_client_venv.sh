#!/usr/bin/env bash
# The robot side of the serving test: openpi's own client package (openpi-client 0.1.2 from
# PyPI) in its own virtualenv, never in the project's .venv, as a robot stack would have it.
#
# usage: scripts/make_openpi_client_venv.sh [VENV]     (default .venvs/openpi-client)
#
# openpi-client pins numpy<2 and pulls dm-tree and pillow for helpers the websocket client
# never imports (image_tools, action_chunk_broker), so the venv gets the client with
# --no-deps plus what websocket_client_policy and msgpack_numpy import: msgpack, numpy 1.x,
# websockets, typing_extensions. Small wheels, all from the pip cache after the first run;
# `make test` runs this as a prerequisite, and it returns at once when the venv is complete.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${OPENPI_CLIENT_VENV:-$repo/.venvs/openpi-client}}"
if [[ $# -gt 1 ]]; then
  echo "usage: $0 [VENV]" >&2
  exit 2
fi
python="${PYTHON:-python3}"
[[ -x "$repo/.venv/bin/python" ]] && python="$repo/.venv/bin/python"

if [[ -f "$venv/.complete" ]]; then
  exit 0
fi
echo "creating $venv (openpi-client==0.1.2)" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  openpi-client==0.1.2 numpy==1.26.4 msgpack==1.2.4 websockets==17.4 typing-extensions==4.16.0
"$venv/bin/python" -c "from openpi_client.websocket_client_policy import WebsocketClientPolicy"
touch "$venv/.complete"
