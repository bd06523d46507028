"""Elementary box maths on xyxy boxes in absolute pixels, batched over leading dimensions.

The formulas and their order of operations are torchvision's (`box_area`, `box_iou`,
`clip_boxes_to_image`, `remove_small_boxes`), so results agree bit for bit. The IoU is
ops.reference's (one copy for the model, the kernels' tests and the fallback).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ops import reference


def box_area(boxes: Tensor) -> Tensor:
    """boxes [..., 4] -> [...]"""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair: boxes1 [..., M, 4], boxes2 [..., N, 4] (broadcast leading dims)
    -> [..., M, N] in the boxes' dtype. Degenerate pairs (zero union) give NaN, as torchvision's
    box_iou. ops.reference.box_iou is the one copy of this arithmetic (ops.box_iou's kernels
    and ops.match_boxes compute the same values)."""
    return reference.box_iou(boxes1, boxes2)


def clip_boxes(boxes: Tensor, height: Tensor | float, width: Tensor | float) -> Tensor:
    """Clamps x to [0, width] and y to [0, height]. boxes [..., 4]; height/width broadcast
    against boxes[..., 0] (e.g. [B, 1] per-image sizes for boxes [B, N, 4])."""
    x = boxes[..., 0::2]
    y = boxes[..., 1::2]
    if isinstance(width, Tensor):
        width, height = width[..., None], height[..., None]
    x = x.clamp(min=0).clamp(max=width) if isinstance(width, Tensor) else x.clamp(0, width)
    y = y.clamp(min=0).clamp(max=height) if isinstance(height, Tensor) else y.clamp(0, height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def nonempty(boxes: Tensor, min_size: float) -> Tensor:
    """[..., 4] -> bool [...]: both sides >= min_size (torchvision's remove_small_boxes test)."""
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return (ws >= min_size) & (hs >= min_size)


def image_sizes_tensor(image_sizes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """[(h, w), ...] -> float32 [B, 2] (h, w) on `device` (one small host-to-device copy)."""
    return torch.tensor(image_sizes, dtype=torch.float32).to(device, non_blocking=True)
