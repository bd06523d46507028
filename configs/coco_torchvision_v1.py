"""torchvision's COCO Mask R-CNN (`maskrcnn_resnet50_fpn`, weights COCO_V1), ready to evaluate,
predict or fine-tune: COCO's 91-output heads indexed by category id and the weights format are
set, so the weights file is the only flag.

    python main.py --config=configs/coco_torchvision_v1.py --mode=predict --workdir=runs/tv_v1 \
        --config.init.weights=maskrcnn_resnet50_fpn_coco.pth --config.predict.input='photos/*.jpg'
    python main.py --config=configs/coco_torchvision_v1.py --mode=eval --workdir=runs/tv_v1 \
        --config.init.weights=maskrcnn_resnet50_fpn_coco.pth

The file is torchvision's state dict (`MaskRCNN_ResNet50_FPN_Weights.COCO_V1`, saved with
`torch.save(model.state_dict(), path)`). Expected on COCO 2017 val: 37.9 box AP / 34.6 mask AP
(torchvision's published figures; the model computes what torchvision's does,
tests/modeling/test_equivalence.py). Category names and ids come from mrcnn/data/coco_categories.py
through the COCO dataset names, so predicting needs no annotation file.
"""

from __future__ import annotations

import ml_collections

from configs import common, r50_fpn_1x
from mrcnn.data import coco_categories


def set_coco_torchvision_head(c: ml_collections.ConfigDict) -> None:
    """COCO's 91-way heads indexed by category id, torchvision's weights format, COCO 2017."""
    c.model.num_classes = coco_categories.NUM_CLASSES_BY_ID
    c.data.category_ids_as_labels = True
    c.data.train.name = "coco_2017_train"
    c.data.val.name = "coco_2017_val"
    c.init.format = "torchvision"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = common.parse_arg(arg, runlocal=False)
    c = r50_fpn_1x.get_config()
    c.name = "coco_torchvision_v1"
    set_coco_torchvision_head(c)
    if opts.runlocal:
        common.shrink_for_local_run(c)
    return c
