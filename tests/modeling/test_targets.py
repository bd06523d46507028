"""RPN and RoI training targets: padded ground truth, chunked matching, fixed-size sampling."""

from __future__ import annotations

import torch

from mrcnn.modeling.targets import pad_gt, roi_targets, rpn_targets
from mrcnn.structures import Targets


def random_boxes(n: int, size: float, g: torch.Generator, min_side: float = 2.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = torch.rand(n, 2, generator=g) * size * 0.5 + min_side
    return torch.cat([xy, xy + wh], dim=1)


def _rpn_case(seed: int, num_gt: tuple[int, ...]):
    g = torch.Generator().manual_seed(seed)
    anchors = random_boxes(500, 200, g, min_side=8)
    targets = [
        Targets(random_boxes(n, 200, g, 8), torch.randint(1, 5, (n,), generator=g)) for n in num_gt
    ]
    return g, anchors, targets


def test_roi_sampling_respects_quota():
    g = torch.Generator().manual_seed(4)
    targets = [Targets(random_boxes(4, 200, g, 30), torch.tensor([1, 2, 3, 4]))]
    props = torch.cat([targets[0].boxes + torch.randn(4, 4, generator=g)] * 50)[None]
    props = torch.cat([props, random_boxes(800, 200, g, 4)[None]], dim=1)
    s = roi_targets(props, torch.ones(props.shape[:2], dtype=torch.bool),
                    pad_gt(targets, torch.device("cpu")), 0.5, 0.5, 64, 0.25, (10, 10, 5, 5), g)
    assert (s.labels > 0).sum() == 16 and s.labels.shape[0] == 64
    assert (s.labels >= 0).all()


def test_rpn_targets_chunked_equals_whole(monkeypatch):
    import mrcnn.modeling.targets as targets_module

    _, anchors, targets = _rpn_case(3, (2, 5, 0))
    gt = pad_gt(targets, torch.device("cpu"))
    whole = rpn_targets(anchors, gt, 0.7, 0.3, (1, 1, 1, 1))
    monkeypatch.setattr(targets_module, "MAX_IOU_ENTRIES", 1)  # one image per chunk
    chunked = rpn_targets(anchors, gt, 0.7, 0.3, (1, 1, 1, 1))
    assert torch.equal(whole[0], chunked[0])
    pos = whole[0] > 0
    assert torch.equal(whole[1][pos], chunked[1][pos])
