#!/usr/bin/env bash
# Trains on one machine with N processes under `torchrun --standalone`: one per GPU, or N CPU
# processes (gloo) when there is no GPU. Extra arguments go to main.py (--workdir, overrides).
#   bash launch/train.sh 8 configs/r50_fpn_1x.py --workdir=runs/r50 --config.dtype=bfloat16
#   bash launch/train.sh 2 configs/shapes.py:runlocal
# solver.ims_per_batch is the global batch: it must divide by N x solver.accumulate_steps.
# SIGUSR1 to the process group (kill -USR1 -- -PGID) makes every rank save a checkpoint at the
# same step and exit 0; torchrun itself ignores it. MRCNN_SETUP=0 skips launch/setup.sh.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash launch/train.sh NPROC CONFIG [main.py args...]" >&2
  exit 2
fi
NPROC=$1 CONFIG=$2
shift 2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "${MRCNN_SETUP:-1}" = 0 ] || source "$ROOT/launch/setup.sh"
PY="${MRCNN_VENV:-$ROOT/.venv}/bin/python"
cd "$ROOT"
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
if [ "$GPUS" -gt 0 ] && [ "$NPROC" -gt "$GPUS" ]; then
  echo "launch/train.sh: $NPROC processes but only $GPUS GPUs" >&2
  exit 2
fi
if [ "$GPUS" -eq 0 ]; then  # CPU ranks share the cores instead of each taking all of them
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}"
fi
trap '' USR1  # inherited through exec: torchrun ignores it, the workers install their handler
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
  main.py --config="$CONFIG" --mode=train "$@"
