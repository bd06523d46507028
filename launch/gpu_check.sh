#!/usr/bin/env bash
# The one prepared GPU check for a lent H200: one command of at most 10 minutes. Every step runs
# under its own timeout, clamped so that the whole check ends within GPU_CHECK_BUDGET_S
# (default 510 s = 8.5 min, the build included); it stops at the first failure that makes the
# rest meaningless (no GPU, a missing package, the build, ops without CUDA kernels) and says so.
#   1. env:       nvidia-smi, the machine's python/torch (no network there), CUDA usable
#   2. deps:      the carried wheels (.whl/, see --fetch-wheels) into $GPU_CHECK_SITE (/tmp/site)
#   3. build:     ops with CUDA for sm_90 against the machine's own torch (2.11), ninja, all cores
#   4. ops:       ops.info()['cuda'] true, one CUDA kernel call
#   5. headline:  training bf16 batch 16 and inference bf16 batch 8, 800x1333, fast paths
#   6. tests:     the CUDA tests (kernels against the CPU ones, CUDA graphs, prefetcher)
#   7. rest:      the rest of the benchmark matrix (bench/gpu_check.py) while time remains
# Every step's whole output goes to a log under $OUT (7 files, no folders): 00-summary.txt (the
# step results and the headline figures, first), 01-env.log, 02-build.log, 03-bench-headline.log,
# 04-tests-cuda.log, 05-bench-rest.log, gpu_check.json. Without $OUT: bench/results/gpu-check-*.
#
#   bash launch/gpu_check.sh                 # on the GPU machine (carry .whl: the wheels)
#   bash launch/gpu_check.sh --fetch-wheels  # here, beforehand: the wheels the GPU machine lacks
#   bash launch/gpu_check.sh --cpu           # rehearsal on a CPU (same steps, toy sizes)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE=gpu
case "${1:-}" in
  --cpu) MODE=cpu ;;
  --fetch-wheels) MODE=fetch ;;
  "") ;;
  *) echo "launch/gpu_check.sh: unknown argument '$1' (expected --cpu or --fetch-wheels)" >&2
     exit 2 ;;
esac

if [ "$MODE" = fetch ]; then
  # What KINDS.md's package list of the GPU machine lacks (it has torch 2.11, torchvision 0.26,
  # numpy, absl-py, PyYAML, einops, pytest, hypothesis, ninja). ninja's wheel goes beside them
  # and is installed there only if no ninja is on PATH (a serial build would not fit).
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  rm -rf .whl && mkdir -p .whl/ninja
  get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$@"; }
  get .whl ml-collections==1.1.0 pycocotools==2.0.11 && get .whl/ninja ninja==1.13.2 || exit 1
  ls -l .whl .whl/ninja
  exit 0
fi

# The CPU rehearsal is slower than the device in every step; it checks the flow, not the budget.
if [ "$MODE" = cpu ]; then BUDGET="${GPU_CHECK_BUDGET_S:-1800}"; else BUDGET="${GPU_CHECK_BUDGET_S:-510}"; fi
RESERVE=10  # seconds kept for the summary at the end
STAMP=$(date +%Y%m%d-%H%M)
OUTDIR="${OUT:-$ROOT/bench/results/gpu-check-$MODE-$STAMP}"
mkdir -p "$OUTDIR"
SUMMARY="$OUTDIR/00-summary.txt"
: > "$SUMMARY"
if [ "$MODE" = cpu ]; then
  PY="${MRCNN_VENV:-$ROOT/.venv}/bin/python"
else
  PY="${GPU_CHECK_PYTHON:-python3}"
fi
export PYTHONUNBUFFERED=1
SITE="${GPU_CHECK_SITE:-/tmp/site}"  # where the carried wheels are installed
SECONDS=0

note() { echo "[gpu_check +${SECONDS}s] $*" | tee -a "$SUMMARY"; }
stop() { note "STOP: $*"; note "nothing after this step ran; logs in $OUTDIR"; exit 1; }

# step NAME CAP_S LOG CMD...: CMD under `timeout min(CAP_S, what is left)`, output to LOG.
step() {
  local name=$1 cap=$2 log=$3; shift 3
  local left=$((BUDGET - RESERVE - SECONDS)) t start rc
  [ "$MODE" = cpu ] && cap=$((cap * 3))  # bench/gpu_check.py's CPU_SLOWDOWN
  t=$(( cap < left ? cap : left ))
  if [ "$t" -lt 5 ]; then note "$name: not run, ${left}s left of the ${BUDGET}s budget"; return 124; fi
  start=$SECONDS
  echo "== $name (timeout ${t}s): $*" >> "$log"
  # Through bash -c so that a step can be one of the functions below (exported).
  timeout -k 5 "$t" bash -c '"$@"' "$name" "$@" >> "$log" 2>&1
  rc=$?
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && note "$name: TIMED OUT after ${t}s"
  note "$name: rc=$rc in $((SECONDS - start))s (log: $(basename "$log"))"
  return "$rc"
}

ENVLOG="$OUTDIR/01-env.log"
env_probe() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv || return 1
  "$PY" -c "
import sys, torch
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)
ok = torch.cuda.is_available()
print('cuda available:', ok, torch.cuda.get_device_name() if ok else '')
sys.exit(0 if ok else 1)"
}
deps() {
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl || return 1
  fi
  # The modules the check imports, and every carried wheel's distribution: both must be seen.
  "$PY" -c "
import glob, importlib.metadata as md, importlib.util, os, sys
missing = [m for m in ('ml_collections', 'absl', 'yaml', 'pycocotools', 'einops', 'numpy',
           'PIL', 'torchvision', 'pytest', 'hypothesis') if importlib.util.find_spec(m) is None]
for w in glob.glob('.whl/*.whl'):
    name = os.path.basename(w).split('-')[0]
    try:
        print(name, md.version(name), 'from', md.distribution(name).locate_file(''))
    except md.PackageNotFoundError:
        missing.append(name + ' (carried, not importable)')
print('missing:', missing or 'none'); sys.exit(1 if missing else 0)"
}
find_ninja() {
  # pip's ninja lives beside the python that has torch, which may not be on PATH.
  PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH"
  if ! command -v ninja >/dev/null && ls .whl/ninja/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/ninja .whl/ninja/*.whl
    PATH="/tmp/ninja/bin:$PATH"
  fi
  export PATH
  command -v ninja && ninja --version
}
build() {
  if [ "$MODE" = cpu ]; then bash launch/setup.sh; return; fi
  [ -z "${CUDA_HOME:-}" ] && [ ! -d /usr/local/cuda-13.0 ] && [ -d /usr/local/cuda ] \
    && export CUDA_HOME=/usr/local/cuda
  MRCNN_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="$(nproc)" \
    "$PY" setup.py build_ext --inplace
}
ops_probe() {
  "$PY" -c "
import sys, torch, ops
info = ops.info(); print(info)
if not info['compiled']: sys.exit('ops._C did not load: ' + str(info['load_error']))
if '$MODE' == 'cpu': sys.exit(0)
if not info['cuda']: sys.exit('ops was built without CUDA kernels')
b = torch.tensor([[0., 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], device='cuda')
keep = ops.nms(b, torch.tensor([.9, .8, .7], device='cuda'), 0.5).tolist()
print('cuda nms keep', keep); sys.exit(0 if keep == [0, 2] else 'CUDA nms gave ' + str(keep))"
}

figures() {  # the figures measured so far, from the JSON, into the summary
  [ -f "$OUTDIR/gpu_check.json" ] || return 0
  timeout 10 "$PY" -c "
import json, sys
sys.path.insert(0, '.')
from bench.gpu_check import summary_lines
print('\n'.join(summary_lines(json.load(open('$OUTDIR/gpu_check.json')))))" | tee -a "$SUMMARY"
}
export -f env_probe deps find_ninja build ops_probe
export PY MODE SITE

note "mode=$MODE budget=${BUDGET}s out=$OUTDIR python=$PY"
if [ "$MODE" = gpu ]; then
  step env 30 "$ENVLOG" env_probe || stop "no usable GPU (nvidia-smi or torch.cuda; see 01-env.log)"
  # Set before the deps step: its import check must see what it installs there.
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  step deps 60 "$ENVLOG" deps || stop "a Python package is missing (see 01-env.log; carry it with --fetch-wheels)"
  step ninja 30 "$ENVLOG" find_ninja || stop "no ninja: the build would be serial and not fit"
  export PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):/tmp/ninja/bin:$PATH"
fi
step build 240 "$OUTDIR/02-build.log" build || stop "the ops build failed (see 02-build.log)"
step ops 60 "$ENVLOG" ops_probe || stop "ops has no working CUDA kernels (see 01-env.log)"

CHECK=("$PY" -m bench.gpu_check --out "$OUTDIR/gpu_check.json")
[ "$MODE" = cpu ] && CHECK+=(--cpu)
step headline 330 "$OUTDIR/03-bench-headline.log" "${CHECK[@]}" --set headline \
  --log "$OUTDIR/03-bench-headline.log" --budget-s $((BUDGET - RESERVE - SECONDS))
figures
step tests-cuda 150 "$OUTDIR/04-tests-cuda.log" "$PY" -m pytest -q -p no:cacheprovider -rfEs \
  tests -k cuda
step rest 600 "$OUTDIR/05-bench-rest.log" "${CHECK[@]}" --set rest \
  --log "$OUTDIR/05-bench-rest.log" --budget-s $((BUDGET - RESERVE - SECONDS))
note "all figures:"
figures
note "done in ${SECONDS}s of ${BUDGET}s; logs and gpu_check.json in $OUTDIR"
