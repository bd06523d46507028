#!/usr/bin/env bash
# The main job on the embedded default: set up, generate the synthetic shapes dataset on first use,
# train Mask R-CNN from scratch on the CPU (or GPU), evaluate (COCO bbox + segm AP), predict a few
# validation images and say where everything is. Extra args are config overrides, e.g.
#   bash launch/demo.sh --config.solver.max_iter=100
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/launch/setup.sh"
PY="${MRCNN_VENV:-$ROOT/.venv}/bin/python"
WORKDIR="${WORKDIR:-runs/shapes}"
cd "$ROOT"
"$PY" main.py --config=configs/shapes.py --mode=train --workdir="$WORKDIR" "$@"
VAL_DIR=$("$PY" -c "
import sys; sys.path.insert(0, '.')
from configs import shapes
from mrcnn.data import catalog
print(catalog.resolve(shapes.get_config(), shapes.get_config().data.val)[0])")
"$PY" main.py --config=configs/shapes.py --mode=predict --workdir="$WORKDIR" \
  --config.predict.input="$VAL_DIR/*[0-5].jpg" "$@"
# Look at it: the final evaluation broken down (no inference) and the run's page.
"$PY" main.py --config=configs/shapes.py --mode=analyze --workdir="$WORKDIR" "$@"
echo
echo "== done =="
echo "metrics:      $WORKDIR/metrics.jsonl  (final COCO AP: $WORKDIR/eval/*/metrics.json)"
echo "log:          $WORKDIR/log.txt"
echo "checkpoints:  $WORKDIR/model_*.pth  ($WORKDIR/last_checkpoint)"
echo "predictions:  $WORKDIR/predictions.json and $WORKDIR/predictions/*.png"
echo "TensorBoard:  $PY -m tensorboard.main --logdir $WORKDIR/tb"
echo "analysis:     $WORKDIR/analysis/{bbox,segm}/ (per-class AP, PR curves, errors, confusion)"
echo "report:       file://$(cd "$WORKDIR" && pwd)/report/index.html  (static: opens offline)"
