#!/usr/bin/env bash
# Idempotent set-up: a virtualenv with the pinned requirements, and the `ops` extension built in
# place. A second run with nothing changed takes seconds.
#   MRCNN_VENV   virtualenv path (default: <repo>/.venv)
#   MRCNN_CUDA   auto | 0 | 1: build the CUDA kernels (auto: when nvcc and a CUDA torch exist)
#   TORCH_CUDA_ARCH_LIST  CUDA archs to build (default: see setup.py)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MRCNN_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  echo "[setup] creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi

req_hash=$(sha256sum "$ROOT/requirements.txt" | cut -c1-16)
if [ "$(cat "$VENV/.mrcnn-requirements" 2>/dev/null)" != "$req_hash" ]; then
  echo "[setup] installing requirements.txt into $VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -r "$ROOT/requirements.txt"
  echo "$req_hash" > "$VENV/.mrcnn-requirements"
fi

# Rebuild the extension only when its sources, the build script or the build switches changed.
src_hash=$( (cd "$ROOT" && cat setup.py ops/csrc/*.* ops/csrc/*/* 2>/dev/null; \
  echo "${MRCNN_CUDA:-auto} ${TORCH_CUDA_ARCH_LIST:-} $PY") | sha256sum | cut -c1-16)
so=$(ls "$ROOT"/ops/_C*.so 2>/dev/null | head -1 || true)
if [ -z "$so" ] || [ "$(cat "$ROOT/ops/.build-hash" 2>/dev/null)" != "$src_hash" ]; then
  echo "[setup] building ops extension (MRCNN_CUDA=${MRCNN_CUDA:-auto})"
  (cd "$ROOT" && MAX_JOBS="${MAX_JOBS:-2}" "$PY" setup.py -q build_ext --inplace)
  echo "$src_hash" > "$ROOT/ops/.build-hash"
fi
"$PY" -c "import sys; sys.path.insert(0, '$ROOT'); import ops; print('[setup] ops:', ops.info())"
