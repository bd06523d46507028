"""The example sweep for launch/sweep.py: two shapes ablations, RoIAlign without and with the
half-pixel alignment (configs/r50_fpn_aligned_1x.py at laptop scale).

    python launch/sweep.py --config=configs/shapes_sweep.py --root=runs/sweeps
    python launch/sweep.py --config=configs/shapes_sweep.py:runlocal --root=/tmp/sweeps  # seconds

Each run is configs/shapes.py (600 steps on the CPU) in runs/sweeps/shapes_sweep/aligned-False
and .../aligned-True; the sweep then writes runs/sweeps/shapes_sweep/results.md and results.csv
(bbox / segm AP, s/iter, loss per run) and TensorBoard hparams
(`tensorboard --logdir runs/sweeps/shapes_sweep`, HPARAMS tab).
Expected: both runs within about 1 AP of each other (the alignment matters little at 128 px
with large objects) at the same s/iter; `:runlocal` (4 steps) only checks the machinery:
its APs are near 0.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from configs import shapes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = shapes.get_config(arg)
    c.name = "shapes_sweep"
    return c


def get_sweep(arg: str | None = None) -> list[dict[str, Any]]:
    """One override dict per run (keys as in `--config.<key>=`)."""
    del arg  # the same two runs at every size
    return [{"model.roi_heads.aligned": False}, {"model.roi_heads.aligned": True}]
