"""Mask R-CNN, ResNet-101-FPN, 1x schedule: r50_fpn_1x with a deeper backbone.

    bash launch/train.sh 8 configs/r101_fpn_1x.py --workdir=runs/r101_fpn_1x \
        --config.init.weights=resnet101_imagenet.pth --config.init.format=torchvision_backbone

Expected: about 40.1 box AP / 36.1 mask AP on minival after 90k iterations at 16 images per batch
(maskrcnn-benchmark's R-101-FPN Mask 1x; Detectron reports 40.0 / 35.9): +2.3 / +1.9 over
R-50-FPN, for about 1.3x the step time. Smoke test: `--config=configs/r101_fpn_1x.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from configs import common, r50_fpn_1x


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = common.parse_arg(arg, runlocal=False)
    c = r50_fpn_1x.get_config()
    c.name = "r101_fpn_1x"
    c.model.backbone.depth = 101
    if opts.runlocal:
        common.shrink_for_local_run(c)
    return c
