#!/usr/bin/env bash
# Trains on several machines: run this once on every node, with the same settings except
# NODE_RANK. torchrun's static rendezvous at MASTER_ADDR:MASTER_PORT joins the nodes; global
# rank = NODE_RANK x NPROC_PER_NODE + local rank, so rank 0 (checkpoints, logs) is on node 0.
#   NNODES          number of nodes (default: $SLURM_JOB_NUM_NODES, else 1)
#   NODE_RANK       this node's index, 0..NNODES-1 (default: $SLURM_NODEID, else 0)
#   MASTER_ADDR     address of node 0 that every node can reach (default 127.0.0.1)
#   MASTER_PORT     a free TCP port on node 0 (default 29500)
#   NPROC_PER_NODE  processes per node (default: $SLURM_GPUS_ON_NODE, else the GPU count, else 1)
# Arguments: CONFIG [main.py args...]. The workdir must be on a filesystem all nodes share.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash launch/multinode.sh configs/r50_fpn_1x.py \
#       --workdir=/shared/runs/r50_16gpu                        # on node0, and NODE_RANK=1 on node1
# Run launch/setup.sh once beforehand (the nodes must not build the extension concurrently).
# SIGUSR1 (SLURM's warning before the time limit) is for the training processes: they save a
# checkpoint at the same step on every rank and exit 0. torchrun ignores it (it would die of it).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: [NNODES=.. NODE_RANK=.. MASTER_ADDR=.. MASTER_PORT=..] bash launch/multinode.sh" \
    "CONFIG [main.py args...]" >&2
  exit 2
fi
CONFIG=$1
shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${MRCNN_VENV:-$ROOT/.venv}/bin/python"
cd "$ROOT"
NNODES="${NNODES:-${SLURM_JOB_NUM_NODES:-1}}"
NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE="${SLURM_GPUS_ON_NODE:-$("$PY" -c \
    'import torch; print(max(torch.cuda.device_count(), 1))')}"
fi
echo "[multinode] node $NODE_RANK/$NNODES on $(hostname): $NPROC_PER_NODE processes," \
  "rendezvous $MASTER_ADDR:$MASTER_PORT"
trap '' USR1  # inherited through exec: torchrun ignores it, the workers install their handler
exec "$PY" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" \
  --nproc_per_node="$NPROC_PER_NODE" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
  main.py --config="$CONFIG" --mode=train "$@"
