"""Matching predictions (anchors, proposals) to ground-truth boxes by a quality matrix (IoU).

Semantics are torchvision's `Matcher`, batched over leading dimensions and with padded
ground truth: for every prediction the best gt is taken; its IoU decides
- >= high: matched, value = the gt index (0..M-1);
- in [low, high): BETWEEN_THRESHOLDS (-2, "ignore");
- < low: BELOW_LOW_THRESHOLD (-1, "background").
With `allow_low_quality_matches`, every prediction that attains some gt's highest IoU (ties
included) is matched to its own best gt even below `high`, so every gt gets at least one
prediction (the RPN's rule). As in torchvision this also applies when a gt's highest IoU is 0.

The rule is written once: the model matches with `ops.match_boxes` (via targets.match_gt), which
fuses the IoU with it in a kernel, and `match` here is ops.reference.match_quality, the Python
copy that kernel's tests and its fallback use.
"""

from __future__ import annotations

from ops.reference import match_quality as match

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2

__all__ = ["BELOW_LOW_THRESHOLD", "BETWEEN_THRESHOLDS", "match"]
