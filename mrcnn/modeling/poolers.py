"""Multi-scale RoIAlign: each RoI is pooled from the pyramid level that suits its size.

The level of a box of area A is floor(k0 + log2(sqrt(A) / 224) + 1e-6), k0 = 4, clamped to the
levels present (FPN paper, eq. 1; torchvision's LevelMapper); `map_levels` states the rule, which
ops.multilevel_roi_align applies inside its kernel. The scale of each level is
inferred from the feature size against the largest (unpadded) image size as torchvision does:
2 ** round(log2(feature_h / image_h)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

import ops
from ops import reference

CANONICAL_SCALE = 224
CANONICAL_LEVEL = 4


def infer_scales(
    feature_sizes: Sequence[tuple[int, int]], image_sizes: Sequence[tuple[int, int]]
) -> list[float]:
    """Spatial scale (feature pixels per image pixel) of each level, torchvision's rule."""
    max_h = max(s[0] for s in image_sizes)
    scales = []
    for fh, _ in feature_sizes:
        approx = float(fh) / float(max_h)
        scales.append(2.0 ** float(torch.tensor(approx).log2().round()))
    return scales


def map_levels(boxes: Tensor, k_min: int, k_max: int) -> Tensor:
    """Pyramid level index (0 = level k_min) of each box [R, 4] -> int64 [R]; -1 for a box with
    negative area (no level). The rule is ops.reference.fpn_levels, the Python copy of what
    ops.multilevel_roi_align's kernels apply."""
    return reference.fpn_levels(boxes, k_min, k_max, CANONICAL_LEVEL, CANONICAL_SCALE)


def roi_pool(
    features: Sequence[Tensor],
    boxes: Tensor,
    batch_idx: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    output_size: int,
    sampling_ratio: int,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign of boxes [R, 4] (xyxy, image pixels; `batch_idx` int64 [R] the image of each)
    over `features` (finest first, each [B, C, H_l, W_l]) -> [R, C, output_size, output_size]
    in the features' dtype. One level: plain RoIAlign at that level's scale.
    """
    scales = infer_scales([f.shape[-2:] for f in features], image_sizes)
    rois = torch.cat([batch_idx.to(boxes.dtype)[:, None], boxes], dim=1)
    size = (output_size, output_size)
    if len(features) == 1:
        return ops.roi_align(features[0], rois, size, scales[0], sampling_ratio, aligned)
    # One operator for all levels: each RoI picks its level with map_levels' rule inside the
    # kernel, so there is no sort, no per-level launch and no host read of the level counts.
    return ops.multilevel_roi_align(
        features,
        rois,
        size,
        scales,
        sampling_ratio,
        aligned,
        canonical_level=CANONICAL_LEVEL,
        canonical_scale=CANONICAL_SCALE,
    )
