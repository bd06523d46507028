"""RPN and RoI training targets: padded ground truth, chunked matching, fixed-size sampling."""

from __future__ import annotations

import pytest
import torch

from mrcnn.modeling.sampling import sample_pos_neg
from mrcnn.modeling.targets import first_k, pad_gt, roi_targets, rpn_targets
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


def test_first_k_keeps_order_and_pads():
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(4, 30, generator=g) < 0.3
    mask[1] = False  # nothing selected
    mask[2] = True  # more than k: the first k
    idx, valid = first_k(mask, 12)
    assert idx.shape == valid.shape == (4, 12)
    for b in range(4):
        want = torch.nonzero(mask[b]).squeeze(1)[:12]
        assert torch.equal(idx[b][valid[b]], want)  # selected first, in increasing order
        assert not valid[b, len(want):].any() and valid[b, : len(want)].all()
        assert len(set(idx[b].tolist())) == 12  # padding points at distinct unselected slots
    idx, valid = first_k(mask[:, :5], 12)  # k capped at N
    assert idx.shape == (4, 5)
    assert first_k(torch.zeros(2, 0, dtype=torch.bool), 3)[0].shape == (2, 0)


@pytest.mark.parametrize("batch", [16, 48, 10**6])
def test_roi_targets_slots_hold_the_sampled_candidates(batch):
    """The fixed-size slots hold exactly the candidates the sampler drew (compacted in order),
    whatever the quota: fixed-size sampling changes the layout, not the distribution."""
    g = torch.Generator().manual_seed(9)
    targets = [Targets(random_boxes(n, 200, g, 20), torch.randint(1, 5, (n,), generator=g))
               for n in (5, 0, 2)]
    props = torch.cat([random_boxes(80, 200, g, 4)[None] for _ in range(3)])
    props[0, :5] = targets[0].boxes + torch.randn(5, 4, generator=g)
    valid = torch.rand(3, 80, generator=g) < 0.8
    gt = pad_gt(targets, torch.device("cpu"))
    s = roi_targets(props, valid, gt, 0.5, 0.5, batch, 0.25, (10, 10, 5, 5),
                    torch.Generator().manual_seed(3))
    # The reference draw: the same labels and generator through the sampler, then nonzero.
    boxes = torch.cat([props, gt.boxes], 1)
    ref_g = torch.Generator().manual_seed(3)
    labels = torch.where(torch.cat([valid, gt.valid], 1), _candidate_labels(boxes, gt), -1)
    pos, neg = sample_pos_neg(labels, batch, 0.25, ref_g)
    b, q = torch.nonzero(pos | neg, as_tuple=True)
    used = s.valid
    assert s.per_image == min(batch, boxes.shape[1]) and s.labels.shape == (3 * s.per_image,)
    assert torch.equal(s.batch_idx[used], b) and torch.equal(s.boxes[used], boxes[b, q])
    assert torch.equal(s.labels[used], labels[b, q])
    assert not s.regression_targets[~used].any() and not s.matched_gt[~used].any()


def _candidate_labels(boxes, gt):
    """Labels of all candidates as roi_targets assigns them (before the validity mask), from
    the matcher on the IoU matrix: torchvision's rules at fg = bg = 0.5."""
    from mrcnn.modeling.boxes import pairwise_iou
    from mrcnn.modeling.matcher import match

    iou = torch.where(gt.valid[..., None], pairwise_iou(gt.boxes, boxes), -1.0)
    m = match(iou, 0.5, 0.5, gt_valid=gt.valid)
    lab = torch.gather(gt.labels, 1, m.clamp(min=0))
    return torch.where(m < 0, torch.zeros_like(lab), lab)
