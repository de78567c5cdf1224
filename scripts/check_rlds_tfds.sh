#!/usr/bin/env bash
# Cross-check curation.formats.rlds (TF-free) against real TensorFlow Datasets, both ways.
#
#   scripts/check_rlds_tfds.sh OUTDIR
#
# TensorFlow lives only in a separate venv (.venvs/tfds, created on first use); the project
# venv (.venv) never imports it. Steps: write with our writer -> load with
# tfds.builder_from_directory and compare; write with TFDS -> read with our reader and compare.
# Exits non-zero on any mismatch.
set -euo pipefail

OUT=${1:?usage: $0 OUTDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$ROOT/.venv/bin/python"
TFVENV="$ROOT/.venvs/tfds"
HELPER="$ROOT/scripts/check_rlds_tfds.py"

if ! "$TFVENV/bin/python" -c "import tensorflow_datasets, tensorflow" >/dev/null 2>&1; then
  echo "[setup] creating $TFVENV (tensorflow-cpu + tensorflow-datasets)"
  BASE=$(command -v python3.11 || command -v python3)
  "$BASE" -m venv "$TFVENV"
  "$TFVENV/bin/pip" install -q tensorflow-cpu tensorflow-datasets \
    || "$TFVENV/bin/pip" install -q tensorflow tensorflow-datasets
fi
"$TFVENV/bin/python" -c "import tensorflow as tf, tensorflow_datasets as tfds; print('[setup] tensorflow', tf.__version__, '| tensorflow-datasets', tfds.__version__)" 2>/dev/null

mkdir -p "$OUT"
rm -rf "$OUT/ours" "$OUT/native" "$OUT/expected.npz"   # only what this script writes

"$PY" "$HELPER" write "$OUT"
TF_CPP_MIN_LOG_LEVEL=2 "$TFVENV/bin/python" "$HELPER" verify "$OUT" 2> >(grep -v -E "^(I0000|W0000|WARNING: All log)" >&2)
"$PY" "$HELPER" read-native "$OUT"
"$PY" -c "import sys, curation.formats.rlds; assert 'tensorflow' not in sys.modules; print('[check] project venv never imported tensorflow')"
echo "[check] RLDS <-> TFDS: all checks passed"
