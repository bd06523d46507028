"""Mask R-CNN, ResNet-50-FPN with GroupNorm in the backbone, FPN and mask head, 1x schedule
(maskrcnn-benchmark's gn_baselines/e2e_mask_rcnn_R_50_FPN_1x_gn).

GroupNorm statistics do not depend on the batch, so the normalization keeps training (unlike
FrozenBN) at 2 images per GPU without SyncBN's communication. It needs GN ImageNet weights (the
BN weights of torchvision do not fit GN layers), converted to the native format:

    bash launch/train.sh 8 configs/r50_fpn_gn_1x.py --workdir=runs/r50_fpn_gn_1x \
        --config.init.weights=r50_gn_imagenet_native.pth --config.init.format=native

Expected: the GN paper reports 40.3 box AP / 35.7 mask AP at 2x (maskrcnn-benchmark: 40.2 /
36.0); at 1x expect about 1 AP less, about +1 box AP over r50_fpn_1x. Step time is about 1.2x.
The seed's box head also has GN in its fc layers, which this project's MLP head does not have.
Smoke test: `--config=configs/r50_fpn_gn_1x.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from configs import common, r50_fpn_1x


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = common.parse_arg(arg, runlocal=False)
    c = r50_fpn_1x.get_config()
    c.name = "r50_fpn_gn_1x"
    c.model.backbone.norm = "GN"
    c.model.backbone.gn_groups = 32
    c.model.backbone.fpn_norm = "GN"
    c.model.mask_head.norm = "GN"
    # The seed decays every weight, GN scales included (its biases: weight_decay_bias = 0).
    c.solver.weight_decay_norm = c.solver.weight_decay
    if opts.runlocal:
        common.shrink_for_local_run(c)
    return c
