"""The five Mask R-CNN losses, as torchvision computes them, in float32 whatever the inputs' dtype.

- RPN: objectness binary cross-entropy averaged over the sampled anchors; box smooth-L1 summed
  over the sampled positive anchors and divided by the number of sampled anchors (whole batch).
- Box head (`fastrcnn_loss`): cross-entropy over the sampled RoIs; smooth-L1 of the gt class's
  deltas summed over the positive RoIs and divided by the number of sampled RoIs.
- Mask head (`maskrcnn_loss`): binary cross-entropy with logits of the gt class's channel
  against the (soft) target, averaged over the positive RoIs' pixels.
Masks instead of gathers keep the RPN loss free of host synchronization; targets of rows that
do not count are zeroed first, so a non-finite unused target cannot leak NaN into gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def _masked_smooth_l1(pred: Tensor, target: Tensor, keep: Tensor, beta: float) -> Tensor:
    """Sum over rows where `keep` of smooth-L1(pred, target) summed over the last dim."""
    target = target.float()
    target = torch.where(keep[..., None], target, torch.zeros_like(target))
    loss = F.smooth_l1_loss(pred.float(), target, beta=beta, reduction="none").sum(-1)
    return torch.where(keep, loss, torch.zeros_like(loss)).sum()


def rpn_loss(
    objectness: Tensor,
    deltas: Tensor,
    regression_targets: Tensor,
    sampled_pos: Tensor,
    sampled_neg: Tensor,
    beta: float = 1.0 / 9,
) -> tuple[Tensor, Tensor]:
    """objectness logits [B, N], deltas [B, N, 4], regression_targets [B, N, 4], sampled
    positive / negative masks bool [B, N] -> (loss_objectness, loss_rpn_box_reg) float32."""
    sampled = sampled_pos | sampled_neg
    num = sampled.sum().clamp(min=1).float()
    logits = objectness.float()
    bce = F.binary_cross_entropy_with_logits(logits, sampled_pos.float(), reduction="none")
    loss_obj = torch.where(sampled, bce, torch.zeros_like(bce)).sum() / num
    loss_box = _masked_smooth_l1(deltas, regression_targets, sampled_pos, beta) / num
    return loss_obj, loss_box


def fastrcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    beta: float = 1.0 / 9,
) -> tuple[Tensor, Tensor]:
    """class_logits [R, C], box_regression [R, C * 4] (class-specific), labels int64 [R]
    (0 background, -1 an unused slot of fixed-size sampling: it counts nowhere),
    regression_targets [R, 4] -> (loss_classifier, loss_box_reg) float32.

    Over the used rows U: cross-entropy averaged over U, smooth-L1 of the positives divided by
    |U|, torchvision's losses on the used rows alone (masked sums instead of a compaction).
    """
    r = labels.shape[0]
    if r == 0:
        zero = class_logits.float().sum() * 0 + box_regression.float().sum() * 0
        return zero, zero
    used = labels >= 0
    num = used.sum().clamp(min=1).float()
    safe = labels.clamp(min=0)
    ce = F.cross_entropy(class_logits.float(), safe, reduction="none")
    loss_cls = torch.where(used, ce, torch.zeros_like(ce)).sum() / num
    reg = box_regression.reshape(r, -1, 4)
    pred = torch.gather(reg, 1, safe[:, None, None].expand(r, 1, 4))[:, 0]
    loss_box = _masked_smooth_l1(pred, regression_targets, labels > 0, beta) / num
    return loss_cls, loss_box


def mask_loss(mask_logits: Tensor, mask_targets: Tensor, valid: Tensor | None = None) -> Tensor:
    """mask_logits [P, M, M] of the positive RoIs, each of its gt class (`select_class` of the
    full [P, C, M, M] logits), mask_targets [P, M, M] in [0, 1], valid bool [P] (None: all;
    False rows are unused slots of fixed-size sampling) -> loss_mask float32: the binary
    cross-entropy averaged over the valid rows' pixels (0, with a gradient, when there is
    none)."""
    if mask_targets.shape[0] == 0:
        return mask_logits.float().sum() * 0
    if valid is None:
        return F.binary_cross_entropy_with_logits(mask_logits.float(), mask_targets.float())
    bce = F.binary_cross_entropy_with_logits(
        mask_logits.float(), mask_targets.float(), reduction="none"
    )
    keep = valid[:, None, None]
    pixels = valid.sum().clamp(min=1).float() * (bce.shape[1] * bce.shape[2])
    return torch.where(keep, bce, torch.zeros_like(bce)).sum() / pixels
