"""Mask R-CNN, ResNet-101-C4, 1x schedule: r50_c4_1x with a deeper backbone.

    bash launch/train.sh 8 configs/r101_c4_1x.py --workdir=runs/r101_c4_1x \
        --config.init.weights=resnet101_imagenet.pth --config.init.format=torchvision_backbone

Expected: no published figure for this exact recipe; R-101 adds 2 to 3 box AP over R-50 in the
seed's other backbones, so about 38 box AP / 33.5 mask AP (above r50_c4_1x's 35.6 / 31.5, below
r101_fpn_1x's 40.1 / 36.1). Treat it as a target to confirm. Smoke test:
`--config=configs/r101_c4_1x.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from configs import common, r50_c4_1x


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = common.parse_arg(arg, runlocal=False)
    c = r50_c4_1x.get_config()
    c.name = "r101_c4_1x"
    c.model.backbone.depth = 101
    if opts.runlocal:
        common.shrink_for_local_run(c)
    return c
