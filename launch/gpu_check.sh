#!/usr/bin/env bash
# The one prepared GPU check, for a lent H200 (see .library device README): < 7 minutes.
#   1. install the pure-Python deps from carried wheels (.whl/, no network there),
#   2. build `ops` with CUDA (sm_90) against the machine's own torch,
#   3. run the op tests (CUDA kernels against the CPU kernels and the references),
#   4. run the CUDA tests of the perf paths (CUDA graphs, prefetcher),
#   5. run the benchmark matrix (bench/gpu_check.py) and write one JSON into $OUT (or bench/results).
# Rehearse on a CPU:  bash launch/gpu_check.sh --cpu
# Prepare the wheels here first:  bash launch/gpu_check.sh --fetch-wheels
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="${OUT:-$ROOT/bench/results}"
mkdir -p "$OUTDIR"
STAMP=$(date +%Y%m%d-%H%M)
if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl ml-collections==1.1.0 absl-py==2.5.1 pycocotools==2.0.11 einops==0.8.2 PyYAML==6.0.4 \
    ninja==1.13.2 hypothesis==6.155.2 sortedcontainers==2.4.0 pytest==9.0.3 pluggy==1.7.0 \
    iniconfig==2.3.1
  exit $?
fi
if [ "${1:-}" = "--cpu" ]; then
  PY="${MRCNN_VENV:-$ROOT/.venv}/bin/python"
  bash launch/setup.sh || exit 1
  "$PY" -m pytest -q -p no:cacheprovider tests/test_ops.py -x -k "not compile" || exit 1
  exec "$PY" -m bench.gpu_check --cpu --out "$OUTDIR/cpu-rehearsal-$STAMP.json"
fi
PY=python3
set -x
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export MRCNN_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS=16
[ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ] && export CUDA_HOME=/usr/local/cuda
time $PY setup.py -q build_ext --inplace 2>&1 | tail -20
$PY -c "import ops; print(ops.info())"
# CUDA kernels against the CPU kernels (all ops, incl. matching, multi-level RoIAlign, RPN top-k)
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_ops_cuda.py 2>&1 | tail -15
# CUDA graphs (graphed == eager, training and inference) and the side-stream prefetcher
timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_perf_paths.py -x -k cuda 2>&1 | tail -15
timeout 300 $PY -m bench.gpu_check --out "$OUTDIR/h200-$STAMP.json" 2>&1 | tail -60
