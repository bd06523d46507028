"""matcher.match against torchvision's Matcher: thresholds, ties, low-quality matches, padding."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils

from mrcnn.modeling.boxes import pairwise_iou
from mrcnn.modeling.matcher import match


def random_boxes(n: int, size: float, g: torch.Generator, min_side: float = 2.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = torch.rand(n, 2, generator=g) * size * 0.5 + min_side
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("allow_low", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_equals_torchvision(allow_low, seed):
    g = torch.Generator().manual_seed(seed)
    gt = random_boxes(7, 100, g)
    preds = random_boxes(300, 100, g)
    q = pairwise_iou(gt, preds)
    tv = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=allow_low)(q.clone())
    assert torch.equal(match(q, 0.7, 0.3, allow_low), tv)


def test_match_ties_and_thresholds():
    # pred 0: above high -> matched; pred 1: exactly at low -> ignore (in [low, high));
    # pred 2: exactly at high, tied between gt 0 and gt 1 -> gt 0 (the lower index, as
    # torchvision); pred 3: below low -> background.
    q = torch.tensor([[0.7, 0.3, 0.5, 0.1], [0.2, 0.1, 0.5, 0.05]])
    out = match(q, 0.5, 0.3)
    assert out.tolist() == [0, -2, 0, -1]
    assert torch.equal(out, tv_utils.Matcher(0.5, 0.3)(q.clone()))
    # low-quality: gt 1's best is pred 2 (tied with gt 0) -> pred 2 matched to its argmax gt 0;
    # gt 1 has two tied best predictions in the second matrix, both get matched.
    q2 = torch.tensor([[0.1, 0.2, 0.25, 0.0], [0.05, 0.02, 0.2, 0.2]])
    out2 = match(q2, 0.7, 0.3, allow_low_quality_matches=True)
    assert torch.equal(out2, tv_utils.Matcher(0.7, 0.3, True)(q2.clone()))
    assert out2.tolist() == [-1, -1, 0, 1]


def test_match_no_gt_and_padding():
    assert match(torch.zeros(0, 5), 0.5, 0.5).tolist() == [-1] * 5
    assert match(torch.zeros(3, 0), 0.5, 0.5).shape == (0,)
    # padded gt rows (-1 quality, invalid) never match, even under low-quality matching
    q = torch.tensor([[[0.6, 0.1, 0.0]], [[-1.0, -1.0, -1.0]]])  # [B=2, M=1, N=3]
    valid = torch.tensor([[True], [False]])
    out = match(q, 0.7, 0.3, allow_low_quality_matches=True, gt_valid=valid)
    assert out.tolist() == [[0, -1, -1], [-1, -1, -1]]


def test_match_batched_equals_per_image():
    g = torch.Generator().manual_seed(3)
    q = torch.rand(4, 5, 50, generator=g)
    out = match(q, 0.6, 0.4, True)
    for i in range(4):
        assert torch.equal(out[i], tv_utils.Matcher(0.6, 0.4, True)(q[i].clone()))
