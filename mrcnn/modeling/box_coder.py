"""Box regression coding: (dx, dy, dw, dh) deltas of a box relative to a reference box.

dx = wx * (gx - rx) / rw, dy = wy * (gy - ry) / rh, dw = ww * log(gw / rw), dh = wh * log(gh / rh)
with centres (x, y) and sizes (w, h) of the target g and the reference r (xyxy, pixels; width is
x2 - x1, no +1). The weights are (1, 1, 1, 1) for the RPN and (10, 10, 5, 5) for the RoI heads.
The operations follow torchvision's BoxCoder in the same order, so outputs agree bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

import ops

# Decoded sizes are exp(dw) * w: without a cap an untrained head (or a bad step) can predict
# dw in the hundreds, overflow exp to inf and poison NMS and the loss. log(1000 / 16) lets a
# box grow at most 62.5x from its reference, more than any anchor-to-object ratio in COCO.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def encode(targets: Tensor, reference: Tensor, weights: Sequence[float]) -> Tensor:
    """Deltas that turn `reference` boxes into `targets`. Both [..., 4] xyxy -> [..., 4].

    Computed in the inputs' dtype (callers pass float32). Zero-size references give inf/NaN:
    mask such rows before using them in a loss.
    """
    if (
        ops.has_kernels(targets)
        and targets.shape == reference.shape
        and targets.dtype == reference.dtype
        and targets.is_floating_point()
        and not (targets.requires_grad or reference.requires_grad)
    ):
        # One fused kernel (plus torch's own log): the same values as below, bit for bit.
        flat = ops.encode_boxes(targets.reshape(-1, 4), reference.reshape(-1, 4), tuple(weights))
        return flat.reshape(targets.shape)
    wx, wy, ww, wh = weights
    ex_w = reference[..., 2] - reference[..., 0]
    ex_h = reference[..., 3] - reference[..., 1]
    ex_x = reference[..., 0] + 0.5 * ex_w
    ex_y = reference[..., 1] + 0.5 * ex_h
    gt_w = targets[..., 2] - targets[..., 0]
    gt_h = targets[..., 3] - targets[..., 1]
    gt_x = targets[..., 0] + 0.5 * gt_w
    gt_y = targets[..., 1] + 0.5 * gt_h
    dx = wx * (gt_x - ex_x) / ex_w
    dy = wy * (gt_y - ex_y) / ex_h
    dw = ww * torch.log(gt_w / ex_w)
    dh = wh * torch.log(gt_h / ex_h)
    return torch.stack((dx, dy, dw, dh), dim=-1)


def decode(
    deltas: Tensor,
    reference: Tensor,
    weights: Sequence[float],
    scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> Tensor:
    """Boxes from deltas. deltas [..., K*4] (K boxes per reference, e.g. one per class),
    reference [..., 4] -> [..., K*4] xyxy, in deltas' dtype (pass float32 deltas for precision).
    """
    reference = reference.to(deltas.dtype)
    widths = reference[..., 2] - reference[..., 0]
    heights = reference[..., 3] - reference[..., 1]
    ctr_x = reference[..., 0] + 0.5 * widths
    ctr_y = reference[..., 1] + 0.5 * heights

    wx, wy, ww, wh = weights
    dx = deltas[..., 0::4] / wx
    dy = deltas[..., 1::4] / wy
    dw = deltas[..., 2::4] / ww
    dh = deltas[..., 3::4] / wh
    dw = torch.clamp(dw, max=scale_clamp)
    dh = torch.clamp(dh, max=scale_clamp)

    pred_ctr_x = dx * widths[..., None] + ctr_x[..., None]
    pred_ctr_y = dy * heights[..., None] + ctr_y[..., None]
    pred_w = torch.exp(dw) * widths[..., None]
    pred_h = torch.exp(dh) * heights[..., None]
    half_w = 0.5 * pred_w
    half_h = 0.5 * pred_h
    boxes = torch.stack(
        (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=-1
    )
    return boxes.flatten(-2)
