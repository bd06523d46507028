"""Elementary box maths on xyxy boxes in absolute pixels, batched over leading dimensions.

The formulas and their order of operations are torchvision's (`box_area`, `box_iou`,
`clip_boxes_to_image`, `remove_small_boxes`), so results agree bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """boxes [..., 4] -> [...]"""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair: boxes1 [..., M, 4], boxes2 [..., N, 4] (broadcast leading dims)
    -> [..., M, N] float. Degenerate pairs (zero union) give NaN, as torchvision's box_iou."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    # Per axis rather than on [..., M, N, 2] pairs: the same arithmetic, half the temporaries
    # (the RPN's [B, M, anchors] matrices are the largest tensors of a training step).
    a = boxes1[..., :, None, :]
    b = boxes2[..., None, :, :]
    w = (torch.min(a[..., 2], b[..., 2]) - torch.max(a[..., 0], b[..., 0])).clamp_(min=0)
    h = (torch.min(a[..., 3], b[..., 3]) - torch.max(a[..., 1], b[..., 1])).clamp_(min=0)
    inter = w.mul_(h)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter.div_(union)


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
