"""torchvision's improved COCO Mask R-CNN (`maskrcnn_resnet50_fpn_v2`, weights COCO_V1), ready to
evaluate, predict or fine-tune; the weights file is the only flag.

    python main.py --config=configs/coco_torchvision_v2.py --mode=predict --workdir=runs/tv_v2 \
        --config.init.weights=maskrcnn_resnet50_fpn_v2_coco.pth --config.predict.input='photos/*.jpg'
    python main.py --config=configs/coco_torchvision_v2.py --mode=eval --workdir=runs/tv_v2 \
        --config.init.weights=maskrcnn_resnet50_fpn_v2_coco.pth

The v2 architecture (Li et al., "Benchmarking Detection Transfer Learning with Vision
Transformers", 2021): BatchNorm after every FPN conv, a 2-conv RPN head, a 4-conv + 1-fc box head
with BatchNorm, BatchNorm in the mask head's 4 convs. Every norm, the ResNet body's included, is
BatchNorm as in torchvision, so in eval mode the model computes exactly what torchvision's does
(tests/modeling/test_v2_equivalence.py: scores equal to the bit). Folding the body's statistics
into FrozenBN (`--config.model.backbone.norm=FrozenBN`, or `freeze_at` > 0, which freezes those
stages as FrozenBN) is the same function up to float rounding (features ~3e-5 relative), which
can swap near-tied detections. Fine-tuning: torchvision's default trains res3..res5
(`--config.model.backbone.freeze_at=2`). Expected on COCO 2017 val: 47.4 box AP / 41.8 mask AP
(torchvision's published figures). Weights of the v1 model with this config are an error that
names configs/coco_torchvision_v1.py.
"""

from __future__ import annotations

import ml_collections

from configs import common, r50_fpn_1x
from configs.coco_torchvision_v1 import set_coco_torchvision_head


def set_v2_architecture(c: ml_collections.ConfigDict, norm: str = "BN") -> None:
    """torchvision's maskrcnn_resnet50_fpn_v2 heads, with `norm` in the FPN and RoI heads."""
    c.model.backbone.fpn_norm = norm
    c.model.rpn.conv_depth = 2
    # The sampled-anchor RPN gradient re-evaluates a single conv; the 2-conv head trains densely.
    c.model.rpn.sparse_grad = False
    c.model.box_head.num_conv = 4
    c.model.box_head.conv_dim = 256
    c.model.box_head.num_fc = 1
    c.model.box_head.fc_dim = 1024
    c.model.box_head.norm = norm
    c.model.mask_head.norm = norm


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = common.parse_arg(arg, runlocal=False)
    c = r50_fpn_1x.get_config()
    c.name = "coco_torchvision_v2"
    set_coco_torchvision_head(c)
    set_v2_architecture(c)
    c.model.backbone.norm = "BN"
    c.model.backbone.freeze_at = 0  # frozen stages would become FrozenBN (see above)
    if opts.runlocal:
        common.shrink_for_local_run(c)
    return c
