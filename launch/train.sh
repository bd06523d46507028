#!/usr/bin/env bash
# Trains on one machine with N processes under `torchrun --standalone`: one per GPU, or N CPU
# processes (gloo) when there is no GPU. Extra arguments go to main.py (--workdir, overrides).
#   bash launch/train.sh 8 configs/r50_fpn_1x.py --workdir=runs/r50 --config.dtype=bfloat16
#   bash launch/train.sh 2 configs/shapes.py:runlocal
# solver.ims_per_batch is the global batch: it must divide by N x solver.accumulate_steps.
# SIGTERM, SIGINT or SIGUSR1 (to this script alone, as `docker stop` does, or to the whole process
# group, as `timeout`, SLURM and Kubernetes do) makes every rank save a checkpoint at the same
# step and exit 0, and then this script exits 0. MRCNN_SETUP=0 skips launch/setup.sh.
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
# torchrun dies of a stop signal (it installs its own handlers, and kills the ranks 30 s later)
# instead of letting the ranks save. So it runs in a session of its own, out of reach of
# signals to this script's process group, and this script passes each stop signal on to the
# ranks as SIGTERM (a second SIGINT would stop a rank at once, mid-save); once they have saved
# and exited 0, torchrun exits 0, and so does this script.
setsid "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
  main.py --config="$CONFIG" --mode=train "$@" &
RUN=$!
forward() { pkill -TERM -P "$RUN" 2>/dev/null || true; }
trap forward TERM INT USR1
rc=0
while kill -0 "$RUN" 2>/dev/null; do
  wait "$RUN" && rc=0 || rc=$?
done
wait "$RUN" 2>/dev/null && rc=0 || rc=${rc}
exit "$rc"
