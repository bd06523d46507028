#!/usr/bin/env bash
# Idempotent set-up: a virtualenv with the pinned requirements, and the `ops` extension built in
# place. A second run with nothing changed takes seconds.
#   MRCNN_VENV          virtualenv path (default: <repo>/.venv)
#   MRCNN_REQUIREMENTS  requirements file, relative to the repo or absolute (default:
#                       requirements.txt; requirements-torch2.11.txt gives the GPU machine's
#                       torch 2.11 / torchvision 0.26, e.g. for a second virtualenv:
#                       MRCNN_REQUIREMENTS=requirements-torch2.11.txt MRCNN_VENV=/tmp/venv211)
#   MRCNN_CUDA          auto | 0 | 1: build the CUDA kernels (auto: only when a GPU is visible)
#   TORCH_CUDA_ARCH_LIST  CUDA archs to build (default: the visible GPUs', see setup.py)
#   MAX_JOBS            parallel compile jobs (default: all cores)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MRCNN_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
REQ="${MRCNN_REQUIREMENTS:-requirements.txt}"
case "$REQ" in /*) ;; *) REQ="$ROOT/$REQ" ;; esac
if [ ! -f "$REQ" ]; then
  echo "[setup] MRCNN_REQUIREMENTS: no such requirements file: $REQ" >&2
  exit 2
fi

if [ ! -x "$PY" ]; then
  echo "[setup] creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi

# Keyed on the content alone (as before MRCNN_REQUIREMENTS): existing virtualenvs stay valid.
req_hash=$(sha256sum < "$REQ" | cut -c1-16)
if [ "$(cat "$VENV/.mrcnn-requirements" 2>/dev/null)" != "$req_hash" ]; then
  echo "[setup] installing $(basename "$REQ") into $VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -r "$REQ"
  echo "$req_hash" > "$VENV/.mrcnn-requirements"
fi

# Rebuild the extension only when its sources, the build script, the build switches, the
# installed requirements (torch's ABI) or the visible GPUs (what MRCNN_CUDA=auto decides on)
# changed: an extension built on a login node without GPUs is rebuilt on the GPU node.
gpus=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null || true)
src_hash=$( (cd "$ROOT" && cat setup.py ops/csrc/*.* ops/csrc/*/* 2>/dev/null; \
  echo "${MRCNN_CUDA:-auto} ${TORCH_CUDA_ARCH_LIST:-} ${MRCNN_DEBUG_INFO:-} $PY $req_hash $gpus") \
  | sha256sum | cut -c1-16)
so=$(ls "$ROOT"/ops/_C*.so 2>/dev/null | head -1 || true)
if [ -z "$so" ] || [ "$(cat "$ROOT/ops/.build-hash" 2>/dev/null)" != "$src_hash" ]; then
  jobs="${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}"
  echo "[setup] building ops extension (MRCNN_CUDA=${MRCNN_CUDA:-auto}, MAX_JOBS=$jobs)"
  (cd "$ROOT" && MAX_JOBS="$jobs" "$PY" setup.py -q build_ext --inplace)
  echo "$src_hash" > "$ROOT/ops/.build-hash"
fi
"$PY" -c "import sys; sys.path.insert(0, '$ROOT'); import ops; print('[setup] ops:', ops.info())"
