"""Multi-scale RoIAlign: each RoI is pooled from the pyramid level that suits its size.

The level of a box of area A is floor(k0 + log2(sqrt(A) / 224) + 1e-6), k0 = 4, clamped to the
levels present (FPN paper, eq. 1; torchvision's LevelMapper). The scale of each level is
inferred from the feature size against the largest (unpadded) image size as torchvision does:
2 ** round(log2(feature_h / image_h)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

import ops

CANONICAL_SCALE = 224
CANONICAL_LEVEL = 4
LEVEL_EPS = 1e-6


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
    """Pyramid level index (0 = level k_min) of each box [R, 4] -> int64 [R]."""
    s = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    lvl = torch.floor(
        CANONICAL_LEVEL + torch.log2(s / CANONICAL_SCALE) + torch.tensor(LEVEL_EPS, dtype=s.dtype)
    )
    lvl = torch.clamp(lvl, min=k_min, max=k_max)
    return lvl.to(torch.int64) - k_min


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
    k_min = int(-math.log2(scales[0]))
    k_max = int(-math.log2(scales[-1]))
    levels = map_levels(boxes, k_min, k_max)
    # RoIs grouped by level with one sort and one host read of the counts (instead of one
    # nonzero per level), pooled level by level, written back to their original rows.
    order = torch.argsort(levels, stable=True)
    counts = torch.bincount(levels, minlength=len(features)).tolist()
    pooled = [
        ops.roi_align(f, r, size, scale, sampling_ratio, aligned)
        for f, r, scale, n in zip(features, rois[order].split(counts), scales, counts)
        if n
    ]
    feat = features[0]
    if not pooled:
        return feat.new_zeros((0, feat.shape[1], output_size, output_size))
    dtype = pooled[0].dtype
    sorted_out = torch.cat([p.to(dtype) for p in pooled])
    # Every RoI gets exactly one level, so every row is written: no zero fill needed.
    out = torch.empty_like(sorted_out)
    return out.index_copy_(0, order, sorted_out)
