"""Targets and losses against torchvision's on identical inputs; matcher and sampler alone."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.rpn import RegionProposalNetwork

from mrcnn.modeling import box_coder
from mrcnn.modeling.boxes import pairwise_iou
from mrcnn.modeling.losses import fastrcnn_loss, mask_loss, rpn_loss
from mrcnn.modeling.mask_head import MaskPredictor, select_class
from mrcnn.modeling.mask_targets import mask_targets
from mrcnn.modeling.matcher import match
from mrcnn.modeling.sampling import sample_pos_neg
from mrcnn.modeling.targets import pad_gt, roi_targets, rpn_targets
from mrcnn.structures import InstanceMasks, Targets


def random_boxes(n: int, size: float, g: torch.Generator, min_side: float = 2.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = torch.rand(n, 2, generator=g) * size * 0.5 + min_side
    return torch.cat([xy, xy + wh], dim=1)


# ----------------------------------------------------------------------------- matcher


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


# ----------------------------------------------------------------------------- sampler


def test_sampler_counts_and_membership():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(-1, 4, (3, 1000), generator=g)
    labels[1, :] = torch.where(labels[1] > 0, torch.zeros_like(labels[1]), labels[1])  # no pos
    labels[2, :10] = 1  # few negatives below
    labels[2, 10:] = -1
    pos, neg = sample_pos_neg(labels, 256, 0.25, g)
    assert not (pos & neg).any()
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()
    n_pos, n_neg = pos.sum(1).tolist(), neg.sum(1).tolist()
    n_pos_avail = (labels >= 1).sum(1).tolist()
    n_neg_avail = (labels == 0).sum(1).tolist()
    for i in range(3):
        exp_pos = min(n_pos_avail[i], 64)
        assert n_pos[i] == exp_pos
        assert n_neg[i] == min(n_neg_avail[i], 256 - exp_pos)
    assert n_pos[1] == 0 and n_neg[1] == 256  # all negatives fill the batch
    assert n_pos[2] == 10 and n_neg[2] == 0


def test_sampler_all_ignored_and_empty():
    pos, neg = sample_pos_neg(torch.full((2, 50), -1), 16, 0.5)
    assert not pos.any() and not neg.any()
    pos, neg = sample_pos_neg(torch.zeros((2, 0), dtype=torch.int64), 16, 0.5)
    assert pos.shape == (2, 0) and neg.shape == (2, 0)


def test_sampler_uniform_and_reproducible():
    labels = torch.ones(1, 20, dtype=torch.int64)
    counts = torch.zeros(20)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        pos, _ = sample_pos_neg(labels, 10, 0.5, g)  # 5 of 20
        counts += pos[0].float()
    # each element drawn with probability 1/4: 100 expected of 400, sd ~8.7
    assert (counts - 100).abs().max() < 40
    a = sample_pos_neg(labels, 10, 0.5, torch.Generator().manual_seed(7))
    b = sample_pos_neg(labels, 10, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------- box coding


def test_box_coder_equals_torchvision_and_roundtrips():
    g = torch.Generator().manual_seed(0)
    ref = random_boxes(200, 300, g)
    tgt = random_boxes(200, 300, g)
    w = (10.0, 10.0, 5.0, 5.0)
    tv = tv_utils.BoxCoder(w)
    enc = box_coder.encode(tgt, ref, w)
    assert torch.equal(enc, tv.encode_single(tgt, ref))
    deltas = torch.randn(200, 3 * 4, generator=g)
    assert torch.equal(box_coder.decode(deltas, ref, w), tv.decode_single(deltas, ref))
    torch.testing.assert_close(box_coder.decode(enc, ref, w), tgt, rtol=0, atol=1e-3)
    # the clamp keeps huge predicted sizes finite
    huge = torch.tensor([[0.0, 0.0, 1e4, 1e4]])
    out = box_coder.decode(huge, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), (1, 1, 1, 1))
    assert torch.isfinite(out).all()
    assert out[0, 2] - out[0, 0] == pytest.approx(10 * 1000 / 16, rel=1e-4)


# ----------------------------------------------------------------------------- RPN


def _rpn_case(seed: int, num_gt: tuple[int, ...]):
    g = torch.Generator().manual_seed(seed)
    anchors = random_boxes(500, 200, g, min_side=8)
    targets = [
        Targets(random_boxes(n, 200, g, 8), torch.randint(1, 5, (n,), generator=g)) for n in num_gt
    ]
    return g, anchors, targets


@pytest.mark.parametrize("num_gt", [(3, 5), (0, 4), (0, 0)])
def test_rpn_targets_and_loss_equal_torchvision(num_gt):
    g, anchors, targets = _rpn_case(1, num_gt)
    b = len(targets)
    tv_rpn = RegionProposalNetwork(None, None, 0.7, 0.3, 64, 0.5, {}, {}, 0.7)
    tv_labels, tv_matched = tv_rpn.assign_targets_to_anchors(
        [anchors] * b, [{"boxes": t.boxes} for t in targets]
    )
    tv_reg = tv_rpn.box_coder.encode(tv_matched, [anchors] * b)
    labels, reg = rpn_targets(anchors, pad_gt(targets, torch.device("cpu")), 0.7, 0.3, (1, 1, 1, 1))
    assert torch.equal(labels.float(), torch.stack(tv_labels))
    pos_rows = labels > 0
    assert torch.equal(reg[pos_rows], torch.stack(tv_reg)[pos_rows])

    pos, neg = sample_pos_neg(labels, 64, 0.5, g)
    # torchvision's loss on the very same sample: its sampler replaced by ours.
    tv_rpn.fg_bg_sampler = lambda _: (list(pos.to(torch.uint8)), list(neg.to(torch.uint8)))
    objectness = torch.randn(b * 500, 1, generator=g, requires_grad=True)
    deltas = torch.randn(b * 500, 4, generator=g, requires_grad=True)
    tv_obj, tv_box = tv_rpn.compute_loss(objectness, deltas, list(labels.float()), list(tv_reg))
    obj, box = rpn_loss(
        objectness.view(b, 500), deltas.view(b, 500, 4), reg, pos, neg, beta=1 / 9
    )
    torch.testing.assert_close(obj, tv_obj, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(box, tv_box, rtol=1e-6, atol=1e-7)
    grads = torch.autograd.grad(obj + box, (objectness, deltas))
    tv_grads = torch.autograd.grad(tv_obj + tv_box, (objectness, deltas))
    for a, t in zip(grads, tv_grads):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, t, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- RoI heads


def _tv_roi_heads(batch: int, fraction: float):
    return tv_roi_heads.RoIHeads(
        None, None, None, 0.5, 0.5, batch, fraction, (10.0, 10.0, 5.0, 5.0), 0.05, 0.5, 100
    )


@pytest.mark.parametrize("num_gt", [(2, 6), (0, 3)])
def test_roi_targets_and_fastrcnn_loss_equal_torchvision(num_gt):
    g = torch.Generator().manual_seed(2)
    targets = [
        Targets(random_boxes(n, 200, g, 8), torch.randint(1, 6, (n,), generator=g)) for n in num_gt
    ]
    props = [random_boxes(k, 200, g, 4) for k in (300, 250)]
    # near-duplicates of the gts so that there are positives
    props[0][:2] = targets[0].boxes[:2] + 1.0 if num_gt[0] else props[0][:2]
    p = max(len(x) for x in props)
    padded = torch.zeros(2, p, 4)
    valid = torch.zeros(2, p, dtype=torch.bool)
    for i, x in enumerate(props):
        padded[i, : len(x)] = x
        valid[i, : len(x)] = True
    # A batch larger than the candidates: no randomness, torchvision takes every proposal.
    s = roi_targets(padded, valid, pad_gt(targets, torch.device("cpu")), 0.5, 0.5, 10**6, 0.25,
                    (10.0, 10.0, 5.0, 5.0))
    heads = _tv_roi_heads(10**6, 0.25)
    tv_props, tv_matched, tv_labels, tv_reg = heads.select_training_samples(
        [x.clone() for x in props], [{"boxes": t.boxes, "labels": t.labels} for t in targets]
    )
    assert torch.equal(s.boxes, torch.cat(tv_props))
    assert torch.equal(s.labels, torch.cat(tv_labels))
    pos = s.labels > 0
    assert pos.any()
    assert torch.equal(s.matched_gt[pos], torch.cat(tv_matched)[pos])
    assert torch.equal(s.regression_targets[pos], torch.cat(tv_reg)[pos])

    r, c = s.labels.shape[0], 6
    logits = torch.randn(r, c, generator=g, requires_grad=True)
    regression = torch.randn(r, c * 4, generator=g, requires_grad=True)
    cls, box = fastrcnn_loss(logits, regression, s.labels, s.regression_targets, 1 / 9)
    tv_cls, tv_box = tv_roi_heads.fastrcnn_loss(logits, regression, tv_labels, tv_reg)
    torch.testing.assert_close(cls, tv_cls, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(box, tv_box, rtol=1e-6, atol=1e-7)
    ga = torch.autograd.grad(cls + box, (logits, regression))
    gt = torch.autograd.grad(tv_cls + tv_box, (logits, regression))
    for a, t in zip(ga, gt):
        torch.testing.assert_close(a, t, rtol=1e-5, atol=1e-8)


def test_roi_sampling_respects_quota():
    g = torch.Generator().manual_seed(4)
    targets = [Targets(random_boxes(4, 200, g, 30), torch.tensor([1, 2, 3, 4]))]
    props = torch.cat([targets[0].boxes + torch.randn(4, 4, generator=g)] * 50)[None]
    props = torch.cat([props, random_boxes(800, 200, g, 4)[None]], dim=1)
    s = roi_targets(props, torch.ones(props.shape[:2], dtype=torch.bool),
                    pad_gt(targets, torch.device("cpu")), 0.5, 0.5, 64, 0.25, (10, 10, 5, 5), g)
    assert (s.labels > 0).sum() == 16 and s.labels.shape[0] == 64
    assert (s.labels >= 0).all()


def test_fastrcnn_loss_empty_and_nonfinite_unused_targets():
    cls, box = fastrcnn_loss(
        torch.zeros(0, 3, requires_grad=True),
        torch.zeros(0, 12),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, 4),
    )
    assert cls.item() == 0 and box.item() == 0
    # a background row with an infinite target must not poison the loss or the gradient
    logits = torch.randn(2, 3, requires_grad=True)
    reg = torch.randn(2, 12, requires_grad=True)
    tgt = torch.tensor([[0.1, 0.2, 0.0, 0.0], [math.inf, -math.inf, math.nan, 0.0]])
    cls, box = fastrcnn_loss(logits, reg, torch.tensor([2, 0]), tgt)
    (cls + box).backward()
    assert torch.isfinite(box) and torch.isfinite(reg.grad).all()


# ----------------------------------------------------------------------------- masks


def _square_poly(x0, y0, x1, y1):
    return torch.tensor([x0, y0, x1, y0, x1, y1, x0, y1], dtype=torch.float32)


def _raster(poly: torch.Tensor, h: int, w: int) -> torch.Tensor:
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects([poly.tolist()], h, w)
    return torch.from_numpy(mask_utils.decode(mask_utils.merge(rle))).to(torch.uint8)


def test_mask_loss_equals_torchvision_with_bitmask_targets():
    g = torch.Generator().manual_seed(5)
    h, w = 64, 80
    gt_masks = [(torch.rand(3, h, w, generator=g) > 0.5).to(torch.uint8),
                (torch.rand(2, h, w, generator=g) > 0.3).to(torch.uint8)]
    gt_labels = [torch.tensor([1, 2, 3]), torch.tensor([3, 1])]
    props = [random_boxes(5, 60, g, 4), random_boxes(4, 60, g, 4)]
    matched = [torch.randint(0, 3, (5,), generator=g), torch.randint(0, 2, (4,), generator=g)]
    logits = torch.randn(9, 4, 28, 28, generator=g, requires_grad=True)
    tv = tv_roi_heads.maskrcnn_loss(logits, props, gt_masks, gt_labels, matched)
    masks = [InstanceMasks([[] for _ in range(len(m))], m) for m in gt_masks]
    bidx = torch.tensor([0] * 5 + [1] * 4)
    mt = mask_targets(torch.cat(props), bidx, torch.cat(matched), masks, 28)
    labels = torch.cat([lab[i] for lab, i in zip(gt_labels, matched)])
    ours = mask_loss(select_class(logits, labels), mt)
    torch.testing.assert_close(ours, tv, rtol=1e-5, atol=1e-6)
    ga, = torch.autograd.grad(ours, logits)
    gt, = torch.autograd.grad(tv, logits)
    torch.testing.assert_close(ga, gt, rtol=1e-4, atol=1e-8)


def test_mask_loss_no_positives_has_gradient():
    logits = torch.randn(0, 28, 28, requires_grad=True)
    loss = mask_loss(logits, torch.zeros(0, 28, 28))
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None


def test_polygon_targets_match_bitmask_targets():
    """The same instances as polygons and as rasterized bitmasks give nearly the same targets
    (polygons are rasterized at the RoI's resolution, bitmasks resampled: IoU tolerance)."""
    g = torch.Generator().manual_seed(6)
    h, w = 120, 160
    polys = [
        [_square_poly(10, 12, 70, 90)],
        [torch.tensor([80.0, 20, 150, 30, 120, 110], dtype=torch.float32)],  # a triangle
        [_square_poly(20, 60, 50, 100), _square_poly(40, 80, 90, 115)],  # two parts, overlapping
    ]
    bitmasks = torch.stack(
        [torch.stack([_raster(p, h, w) for p in inst]).amax(0) for inst in polys]
    )
    gt_boxes = torch.tensor([[10.0, 12, 70, 90], [80, 20, 150, 110], [20, 60, 90, 115]])
    rois = torch.cat([gt_boxes, gt_boxes + torch.randn(3, 4, generator=g) * 3])
    matched = torch.tensor([0, 1, 2, 0, 1, 2])
    bidx = torch.zeros(6, dtype=torch.int64)
    t_poly = mask_targets(rois, bidx, matched, [InstanceMasks(polys)], 28)
    t_bit = mask_targets(rois, bidx, matched, [InstanceMasks([[]] * 3, bitmasks)], 28)
    assert set(t_poly.unique().tolist()) <= {0.0, 1.0}
    a, b = t_poly > 0.5, t_bit > 0.5
    iou = (a & b).sum((1, 2)).float() / (a | b).sum((1, 2)).float()
    assert iou.min() > 0.9, iou
    # mixed: image 0 polygons, image 1 RLE, in one call
    mixed = mask_targets(
        torch.cat([rois[:3], rois[:3]]),
        torch.tensor([0, 0, 0, 1, 1, 1]),
        torch.tensor([0, 1, 2, 0, 1, 2]),
        [InstanceMasks(polys), InstanceMasks([[]] * 3, bitmasks)],
        28,
    )
    torch.testing.assert_close(mixed[:3], t_poly[:3])
    torch.testing.assert_close(mixed[3:], t_bit[:3])


def test_mask_targets_none_and_empty():
    out = mask_targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                       torch.zeros(0, dtype=torch.int64), [None], 14)
    assert out.shape == (0, 14, 14)
    with pytest.raises(ValueError):
        one = torch.tensor([0])
        mask_targets(torch.tensor([[0.0, 0, 5, 5]]), one, one, [None], 14)


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


def test_mask_predictor_selected_class_equals_full_logits():
    torch.manual_seed(0)
    pred = MaskPredictor(16, 8, 5)
    x = torch.randn(6, 16, 7, 7, requires_grad=True)
    labels = torch.tensor([1, 4, 4, 0, 2, 3])
    full = select_class(pred(x), labels)
    sel = pred(x, labels)
    assert sel.shape == (6, 14, 14)
    torch.testing.assert_close(sel, full, rtol=1e-5, atol=1e-6)
    g_full = torch.autograd.grad(full.sum(), (x, pred.logits.weight))
    g_sel = torch.autograd.grad(sel.sum(), (x, pred.logits.weight))
    for a, b in zip(g_sel, g_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert pred(x[:0], labels[:0]).shape == (0, 14, 14)
