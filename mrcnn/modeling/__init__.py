"""The Mask R-CNN model. `build_model(config.model)` is the entry point.

Files, one subject each: norm (norm layers), backbone (ResNet), fpn, anchors, boxes, box_coder,
matcher, sampling, targets (RPN / RoI training targets), rpn, poolers, box_head, mask_head,
mask_targets, losses, postprocess, mask_rcnn (the module wiring them).
"""

from __future__ import annotations

import ml_collections

from mrcnn.modeling.mask_rcnn import MaskRCNN


def build_model(model_config: ml_collections.ConfigDict) -> MaskRCNN:
    """The model described by `config.model` (see configs/r50_fpn_1x.py), randomly initialized.

    Weights are loaded separately (`mrcnn.weights.load_weights`).
    """
    return MaskRCNN(model_config)


__all__ = ["MaskRCNN", "build_model"]
