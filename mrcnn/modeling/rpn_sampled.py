"""The RPN head evaluated at a few anchors, so its gradient costs O(sampled anchors).

The RPN loss reads the head's outputs only at the anchors drawn for the loss (at most
`rpn.batch_size_per_image` per image, 256 of the ~200k anchors of an 800 x 1333 image). The dense
head still runs for proposal selection, but with `model.rpn.sparse_grad` it runs without autograd,
and the outputs the loss needs are recomputed here, with gradient, from the 3x3 neighbourhood of
each drawn anchor's feature cell:

    t = relu(W_conv . patch + b_conv),  logit = w_cls[a] . t + b_cls[a],  delta = W_box[a] t + b_box[a]

This is the same function of the same weights and features as the dense head at that cell, so
the loss and every gradient are the dense ones up to float rounding (summation order), while the
head's backward pass (two 3x3-conv-sized products per FPN level, about a quarter of a training
step's arithmetic at 800 x 1333) shrinks to a few small matrix products. The selection has a
fixed size (top-k of the sampled mask), so there is no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def select_sampled(sampled: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """sampled bool [B, N] with at most k True per row -> (indices int64 [B, k'], valid bool
    [B, k']) with k' = min(k, N): every sampled anchor appears once; the rest is padding."""
    k = min(k, sampled.shape[1])
    vals, idx = torch.topk(sampled.to(torch.float32), k, dim=1, sorted=False)
    return idx, vals > 0


def head_at_anchors(
    head: torch.nn.Module,
    feats: Sequence[Tensor],
    anchor_idx: Tensor,
    level_sizes: Sequence[int],
) -> tuple[Tensor, Tensor]:
    """Outputs of `head` (an RPNHead: `conv` 3x3 pad 1, `cls_logits` and `bbox_pred` 1x1) at the
    anchors anchor_idx int64 [B, K] (indices into the flattened (level, y, x, anchor) order of
    rpn.flatten_outputs) -> (logits [B, K], deltas [B, K, 4]), differentiable w.r.t. the head's
    weights and `feats` (each [B, C, H_l, W_l], any memory format).
    """
    b, k = anchor_idx.shape
    num_anchors = head.cls_logits.out_channels
    device = anchor_idx.device
    conv_w = head.conv.weight  # [C_out, C_in, 3, 3]
    c_out, c_in = conv_w.shape[:2]
    if head.conv.kernel_size != (3, 3) or head.conv.padding != (1, 1):
        raise ValueError("head_at_anchors expects the RPN's 3x3 conv with padding 1")

    flat = anchor_idx.reshape(-1)
    # Every level's anchors start at a multiple of A, so the anchor of an index is global.
    anchor = flat % num_anchors
    bb = torch.arange(b, device=device).repeat_interleave(k)[:, None].expand(-1, 9)
    offs = torch.arange(-1, 2, device=device)
    patches = None
    start = 0
    for f, n in zip(feats, level_sizes):
        h, w = f.shape[-2:]
        local = flat - start
        on_level = (local >= 0) & (local < n)
        cell = local.clamp(0, max(n - 1, 0)) // num_anchors
        # The cell's 3x3 neighbourhood: [S, 9] in (ky, kx) row-major order, the order of the
        # conv weight's last two dimensions; outside the map reads the zero padding.
        yy = ((cell // w)[:, None, None] + offs[None, :, None]).expand(-1, 3, 3).reshape(-1, 9)
        xx = ((cell % w)[:, None, None] + offs[None, None, :]).expand(-1, 3, 3).reshape(-1, 9)
        inside = on_level[:, None] & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        # Advanced indices around a slice: the result is [S, 9, C].
        part = f[bb, :, yy.clamp(0, h - 1), xx.clamp(0, w - 1)]
        part = part * inside[..., None].to(part.dtype)
        patches = part if patches is None else patches + part
        start += n
    assert patches is not None
    weight = conv_w.permute(0, 2, 3, 1).reshape(c_out, 9 * c_in)
    t = F.relu(F.linear(patches.reshape(-1, 9 * c_in), weight, head.conv.bias))  # [S, C]

    cls_w = head.cls_logits.weight.reshape(num_anchors, c_out)
    logits = (t * cls_w[anchor].to(t.dtype)).sum(-1) + head.cls_logits.bias[anchor].to(t.dtype)
    box_w = head.bbox_pred.weight.reshape(num_anchors, 4, c_out)[anchor]  # [S, 4, C]
    box_b = head.bbox_pred.bias.reshape(num_anchors, 4)[anchor]
    deltas = torch.bmm(box_w.to(t.dtype), t[:, :, None])[..., 0] + box_b.to(t.dtype)
    return logits.reshape(b, k), deltas.reshape(b, k, 4)
