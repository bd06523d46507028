"""Box regression coding: (dx, dy, dw, dh) deltas of a box relative to a reference box.

dx = wx * (gx - rx) / rw, dy = wy * (gy - ry) / rh, dw = ww * log(gw / rw), dh = wh * log(gh / rh)
with centres (x, y) and sizes (w, h) of the target g and the reference r (xyxy, pixels; width is
x2 - x1, no +1). The weights are (1, 1, 1, 1) for the RPN and (10, 10, 5, 5) for the RoI heads.

The arithmetic is written once, in the `ops` kernels (ops/csrc/box_coding.h) and their Python
reference (ops.reference.encode_boxes / decode_boxes, the fallback without compiled kernels),
in torchvision's BoxCoder operation order, so outputs agree bit for bit. This module only maps
the model's [..., 4] layouts onto them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

import ops
import ops.reference

# Decoded sizes are exp(dw) * w: without a cap an untrained head (or a bad step) can predict
# dw in the hundreds, overflow exp to inf and poison NMS and the loss. log(1000 / 16) lets a
# box grow at most 62.5x from its reference, more than any anchor-to-object ratio in COCO.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def encode(targets: Tensor, reference: Tensor, weights: Sequence[float]) -> Tensor:
    """Deltas that turn `reference` boxes into `targets`. Both [..., 4] xyxy -> [..., 4], in
    targets' dtype (callers pass float32). Zero-size references give inf/NaN: mask such rows
    before using them in a loss. Regression targets are constants: no gradient flows.
    """
    reference = reference.detach().to(targets.dtype).expand_as(targets)
    flat = ops.encode_boxes(
        targets.detach().reshape(-1, 4), reference.reshape(-1, 4), tuple(weights)
    )
    return flat.reshape(targets.shape)


def decode(
    deltas: Tensor,
    reference: Tensor,
    weights: Sequence[float],
    scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> Tensor:
    """Boxes from deltas. deltas [..., K*4] (K boxes per reference, e.g. one per class),
    reference [..., 4] -> [..., K*4] xyxy, in deltas' dtype (pass float32 deltas for precision).

    ops.reference.decode_boxes, not the ops.decode_boxes kernel: the kernel's exp is libm's,
    which can differ from torch.exp by an ulp, and the detections must equal torchvision's bit
    for bit. Differentiable (plain tensor operations).
    """
    lead = deltas.shape[:-1]
    flat = ops.reference.decode_boxes(
        deltas.reshape(-1, deltas.shape[-1]),
        reference.to(deltas.dtype).expand(*lead, 4).reshape(-1, 4),
        tuple(weights),
        scale_clamp,
    )
    return flat.reshape(deltas.shape)
