"""Mask R-CNN, ResNet-50-C4, 1x schedule (the seed's e2e_mask_rcnn_R_50_C4_1x).

No FPN: the RPN runs on res4 (stride 16, all 15 anchors on one level) and res5 is the RoI head,
shared by the box and mask branches (one 14x14 RoIAlign on res4, res5 halves it to 7x7, the
mask deconv brings it back to 14x14). The seed trains it at 8 images per batch for 180k steps.

    bash launch/train.sh 8 configs/r50_c4_1x.py --workdir=runs/r50_c4_1x \
        --config.init.weights=resnet50_imagenet.pth --config.init.format=torchvision_backbone

Expected: about 35.6 box AP / 31.5 mask AP on minival (maskrcnn-benchmark's R-50-C4 Mask 1x;
Detectron: 35.5 / 31.3), 2.2 / 2.7 below R-50-FPN and slower per image (res5 runs per RoI).
Smoke test: `--config=configs/r50_c4_1x.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from configs import common, r50_fpn_1x


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = common.parse_arg(arg, runlocal=False)
    c = r50_fpn_1x.get_config()
    c.name = "r50_c4_1x"
    c.model.backbone.fpn = False
    # One level: the "per level" pre-NMS counts are the whole image's (maskrcnn-benchmark's C4).
    c.model.rpn.pre_nms_top_n_train = 12000
    c.model.rpn.pre_nms_top_n_test = 6000
    c.model.box_head.pooler_resolution = 14
    c.model.box_head.sampling_ratio = 0  # adaptive, as the seed's C4 pooler
    c.model.mask_head.sampling_ratio = 0
    c.model.mask_head.resolution = 14  # res5 halves the 14x14 RoI features, the deconv doubles
    c.solver.ims_per_batch = 8
    c.solver.base_lr = 0.01
    c.solver.steps = (120000, 160000)
    c.solver.max_iter = 180000
    c.solver.checkpoint_period = 5000
    if opts.runlocal:
        common.shrink_for_local_run(c)
    return c
