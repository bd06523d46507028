"""The losses against torchvision's on the same targets (RPN, box head, mask head), with
their gradients; empty and non-finite edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.rpn import RegionProposalNetwork

from mrcnn.modeling.losses import fastrcnn_loss, mask_loss, rpn_loss
from mrcnn.modeling.mask_head import select_class
from mrcnn.modeling.mask_targets import mask_targets
from mrcnn.modeling.sampling import sample_pos_neg
from mrcnn.modeling.targets import pad_gt, roi_targets, rpn_targets
from mrcnn.structures import InstanceMasks, Targets


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
    # Fixed-size slots: the used ones, image by image, are torchvision's samples in its order.
    used = s.valid
    assert s.labels.shape[0] == 2 * s.per_image and s.per_image == p + max(num_gt)
    assert not used.all()  # the shorter image has unused slots (its padding)
    assert torch.equal(s.boxes[used], torch.cat(tv_props))
    assert torch.equal(s.labels[used], torch.cat(tv_labels))
    assert torch.equal(s.batch_idx[used], torch.cat([torch.full((len(x),), i)
                                                     for i, x in enumerate(tv_props)]))
    pos = s.labels[used] > 0
    assert pos.any()
    assert torch.equal(s.matched_gt[used][pos], torch.cat(tv_matched)[pos])
    assert torch.equal(s.regression_targets[used][pos], torch.cat(tv_reg)[pos])
    assert torch.isfinite(s.regression_targets).all()  # unused slots hold zeros

    # The loss over all slots (unused ones masked) is torchvision's over its samples alone,
    # and the unused slots get no gradient.
    r, c = s.labels.shape[0], 6
    logits = torch.randn(r, c, generator=g, requires_grad=True)
    regression = torch.randn(r, c * 4, generator=g, requires_grad=True)
    cls, box = fastrcnn_loss(logits, regression, s.labels, s.regression_targets, 1 / 9)
    tv_cls, tv_box = tv_roi_heads.fastrcnn_loss(
        logits[used], regression[used], tv_labels, tv_reg
    )
    torch.testing.assert_close(cls, tv_cls, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(box, tv_box, rtol=1e-6, atol=1e-7)
    ga = torch.autograd.grad(cls + box, (logits, regression))
    gt = torch.autograd.grad(tv_cls + tv_box, (logits, regression))
    for a, t in zip(ga, gt):
        torch.testing.assert_close(a, t, rtol=1e-5, atol=1e-8)
        assert not a[~used].any()


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


def test_masked_losses_equal_torchvision_on_the_used_rows():
    """Unused slots (fastrcnn labels -1, mask rows not valid) count nowhere: the losses and
    gradients are torchvision's on the used rows alone; all unused: 0 with a gradient."""
    g = torch.Generator().manual_seed(8)
    labels = torch.tensor([2, 0, -1, 1, -1, 0, 3])
    used = labels >= 0
    logits = torch.randn(7, 4, generator=g, requires_grad=True)
    reg = torch.randn(7, 16, generator=g, requires_grad=True)
    tgt = torch.randn(7, 4, generator=g)
    tgt[~used] = math.nan  # never read
    cls, box = fastrcnn_loss(logits, reg, labels, tgt)
    tv_cls, tv_box = tv_roi_heads.fastrcnn_loss(logits[used], reg[used], [labels[used]],
                                                [tgt[used]])
    torch.testing.assert_close(cls, tv_cls, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(box, tv_box, rtol=1e-6, atol=1e-7)
    grad = torch.autograd.grad(cls + box, logits)[0]
    assert torch.isfinite(grad).all() and not grad[~used].any()

    mlogits = torch.randn(5, 14, 14, generator=g, requires_grad=True)
    mt = torch.rand(5, 14, 14, generator=g)
    valid = torch.tensor([True, False, True, True, False])
    ours = mask_loss(mlogits, mt, valid)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(mlogits[valid], mt[valid])
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    assert not torch.autograd.grad(ours, mlogits)[0][~valid].any()

    none = torch.full((3,), -1)
    cls, box = fastrcnn_loss(logits[:3], reg[:3], none, tgt[:3])
    loss = mask_loss(mlogits[:2], mt[:2], torch.zeros(2, dtype=torch.bool))
    assert cls.item() == box.item() == loss.item() == 0
    assert torch.autograd.grad(cls + box + loss, logits)[0].abs().sum() == 0
