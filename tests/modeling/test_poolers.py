"""Multi-level RoI pooling against torchvision's MultiScaleRoIAlign and roi_align."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torchvision.ops import MultiScaleRoIAlign

from mrcnn.modeling.poolers import roi_pool


def test_roi_pool_equals_multiscale_roi_align():
    g = torch.Generator().manual_seed(1)
    image_sizes = [(120, 160), (100, 150)]
    feats = [torch.randn(2, 4, -(-128 // s), -(-160 // s), generator=g) for s in (4, 8, 16, 32)]
    # boxes of every size so that all four levels are used
    xy = torch.rand(40, 2, generator=g) * 60
    wh = torch.logspace(0.3, 2.2, 40)[:, None].expand(40, 2)
    boxes = torch.cat([xy, xy + wh], 1)
    bidx = torch.tensor([0] * 25 + [1] * 15)
    out = roi_pool(feats, boxes, bidx, image_sizes, 7, 2)
    tv = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    named = OrderedDict((str(i), f) for i, f in enumerate(feats))
    expected = tv(named, [boxes[:25], boxes[25:]], image_sizes)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert roi_pool(feats, boxes[:0], bidx[:0], image_sizes, 7, 2).shape == (0, 4, 7, 7)


def test_roi_pool_aligned_switch_matches_torchvision_roi_align():
    import torchvision

    g = torch.Generator().manual_seed(4)
    feat = torch.randn(1, 3, 16, 20, generator=g)
    boxes = torch.tensor([[4.0, 6.0, 40.0, 30.0], [10.5, 3.25, 22.0, 50.0]])
    bidx = torch.zeros(2, dtype=torch.int64)
    rois = torch.cat([bidx[:, None].float(), boxes], 1)
    for aligned in (False, True):
        out = roi_pool([feat], boxes, bidx, [(64, 80)], 7, 2, aligned=aligned)
        ref = torchvision.ops.roi_align(feat, rois, 7, 0.25, 2, aligned)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    a = roi_pool([feat], boxes, bidx, [(64, 80)], 7, 2, aligned=True)
    assert not torch.allclose(a, roi_pool([feat], boxes, bidx, [(64, 80)], 7, 2))
