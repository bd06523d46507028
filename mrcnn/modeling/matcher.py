"""Matching predictions (anchors, proposals) to ground-truth boxes by a quality matrix (IoU).

Semantics are torchvision's `Matcher`, batched over leading dimensions and with padded
ground truth: for every prediction the best gt is taken; its IoU decides
- >= high: matched, value = the gt index (0..M-1);
- in [low, high): BETWEEN_THRESHOLDS (-2, "ignore");
- < low: BELOW_LOW_THRESHOLD (-1, "background").
With `allow_low_quality_matches`, every prediction that attains some gt's highest IoU (ties
included) is matched to its own best gt even below `high`, so every gt gets at least one
prediction (the RPN's rule). As in torchvision this also applies when a gt's highest IoU is 0.

The model matches with `ops.match_boxes` (via targets.match_gt), which fuses the IoU with these
rules and gives the same result bit for bit without building the IoU matrix; `match` remains the
reference and the path taken without compiled kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(
    quality: Tensor,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool = False,
    gt_valid: Tensor | None = None,
) -> Tensor:
    """quality: float [..., M, N] (gt x predictions); gt_valid: optional bool [..., M] marking
    real gt rows when the gt is padded (padded rows must hold a quality below 0, e.g. -1, so
    that they never win). Returns int64 [..., N]: gt index, -1 or -2 as above. With no gt
    (M == 0) every prediction is background (-1).
    Keeps torchvision's tie rule of `max`: the lowest gt index among equal IoUs.
    """
    if low_threshold > high_threshold:
        raise ValueError(f"low_threshold {low_threshold} > high_threshold {high_threshold}")
    *lead, m, n = quality.shape
    if m == 0 or n == 0:
        return torch.full((*lead, n), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=quality.device)
    matched_vals, matches = quality.max(dim=-2)
    below = torch.full_like(matches, BELOW_LOW_THRESHOLD)
    between = torch.full_like(matches, BETWEEN_THRESHOLDS)
    result = torch.where(
        matched_vals < low_threshold,
        below,
        torch.where(matched_vals < high_threshold, between, matches),
    )
    if allow_low_quality_matches:
        highest = quality.max(dim=-1, keepdim=True).values  # [..., M, 1]
        is_best = quality == highest
        if gt_valid is not None:
            is_best = is_best & gt_valid[..., None]
        result = torch.where(is_best.any(dim=-2), matches, result)
    return result
