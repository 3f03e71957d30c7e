#!/usr/bin/env bash
# Idempotent set-up: a virtualenv outside the clone (torch is large; CI and later runs
# reuse it), the package and its test tools, and the default model version.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${FACESTREAM_VENV:-$HOME/.cache/facestream/venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
fi

# Reinstall only when the dependency list changed.
stamp="$VENV/.facestream-deps-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing facestream and its dependencies into $VENV (first run: several minutes)"
  "$VENV/bin/pip" install -q -e ".[test]"
  rm -f "$VENV"/.facestream-deps-*
  touch "$stamp"
else
  # the clone may have moved: re-point the editable install without touching dependencies
  "$VENV/bin/pip" install -q --no-deps -e . >/dev/null
fi

# The default embedder is built from PyPI-shipped weights, never downloaded at run time.
if ! "$VENV/bin/facestream" models show >/dev/null 2>&1; then
  echo "[setup] building the default model version (dlib ResNet -> torch -> ONNX)"
  "$VENV/bin/facestream" models bootstrap
fi
echo "[setup] ready: $VENV/bin/facestream"
