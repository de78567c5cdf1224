#!/usr/bin/env bash
# System libraries for headless MuJoCo rendering (EGL through Mesa's software rasteriser).
# Installs only what is missing; needs root (or sudo) the first time, nothing after.
set -euo pipefail

PACKAGES=(libegl1 libopengl0 libegl-mesa0 libgl1-mesa-dri libglvnd0 libgbm1)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages for headless rendering: present"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "missing system packages ${missing[*]} and no apt-get: install EGL/Mesa for MuJoCo yourself" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing system packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
