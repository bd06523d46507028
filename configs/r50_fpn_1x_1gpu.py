"""Mask R-CNN, ResNet-50-FPN, 1x schedule on one GPU (the seed's e2e_mask_rcnn_R_50_FPN_1x_1GPU).

The 8-GPU recipe scaled down linearly: 2 images per step instead of 16, so the learning rate is
8x smaller (0.02 -> 0.0025) and every step count 8x larger (the same 1.44M images seen, the
same decay points in images). Warmup keeps the seed's 500 steps.

    bash launch/train.sh 1 configs/r50_fpn_1x_1gpu.py --workdir=runs/r50_fpn_1x_1gpu
    # or the same global batch of 16 on one GPU, 8 micro-batches of 2 per step:
    bash launch/train.sh 1 configs/r50_fpn_1x.py --config.solver.accumulate_steps=8

Expected: the 8-GPU result, 37.7 box AP / 34.2 mask AP, within about 0.3 AP (smaller batches are
slightly noisier), after 720k steps: about 2 days on one V100 (the seed measured 8.5 images/s
at 2 images per GPU in float32).
Smoke test: `--config=configs/r50_fpn_1x_1gpu.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from configs import common, r50_fpn_1x


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = common.parse_arg(arg, runlocal=False)
    c = r50_fpn_1x.get_config()
    c.name = "r50_fpn_1x_1gpu"
    c.solver.base_lr = 0.0025
    c.solver.ims_per_batch = 2
    c.solver.steps = (480000, 640000)
    c.solver.max_iter = 720000
    if opts.runlocal:
        common.shrink_for_local_run(c)
    return c
