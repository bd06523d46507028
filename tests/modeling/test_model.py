"""Every model variant the config can describe builds, trains (finite losses, gradients exactly
on the trainable parameters) and infers (well-formed detections), at tiny sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mrcnn.modeling.mask_rcnn as mask_rcnn_module
from configs import shapes
from mrcnn.modeling import build_model
from mrcnn.modeling.norm import FrozenBatchNorm2d
from mrcnn.structures import Detections, ImageBatch, InstanceMasks, Targets

LOSS_NAMES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
NUM_CLASSES = 4


def tiny_config(**changes):
    """The shapes config (R18, width 32, GN, FPN) shrunk further; `changes` are dotted keys."""
    c = shapes.get_config().model
    c.num_classes = NUM_CLASSES
    c.backbone.width = 16
    c.backbone.fpn_channels = 32
    c.backbone.gn_groups = 8
    c.rpn.pre_nms_top_n_train = 100
    c.rpn.post_nms_top_n_train = 50
    c.rpn.pre_nms_top_n_test = 50
    c.rpn.post_nms_top_n_test = 30
    c.rpn.batch_size_per_image = 64
    c.roi_heads.batch_size_per_image = 32
    c.roi_heads.detections_per_img = 10
    c.box_head.fc_dim = 32
    c.mask_head.conv_dim = 16
    c.mask_head.num_conv = 2
    for key, value in changes.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


VARIANTS = {
    "fpn_r18_gn": {},
    "fpn_r50_frozenbn": {
        "backbone.depth": 50, "backbone.norm": "FrozenBN", "backbone.freeze_at": 2,
    },
    "fpn_r50_bn_gn_heads": {
        "backbone.depth": 50, "backbone.norm": "BN", "backbone.freeze_at": 1,
        "backbone.fpn_norm": "GN", "mask_head.norm": "GN",
    },
    "c4_r50_frozenbn": {
        "backbone.depth": 50, "backbone.norm": "FrozenBN", "backbone.fpn": False,
        "backbone.freeze_at": 2, "anchor.sizes": (16, 32, 64), "box_head.pooler_resolution": 14,
    },
    "c4_r18_bn_aligned": {
        "backbone.norm": "BN", "backbone.fpn": False, "backbone.freeze_at": 0,
        "anchor.sizes": (16, 32, 64), "box_head.pooler_resolution": 8,
        "mask_head.pooler_resolution": 12, "roi_heads.aligned": True,
    },
    "fpn_r50_syncbn_msra_aligned_boxonly": {
        "backbone.depth": 50, "backbone.width": 8, "backbone.norm": "SyncBN",
        "backbone.stride_in_1x1": True, "backbone.freeze_at": 3, "roi_heads.aligned": True,
        "mask_on": False,
    },
    "fpn_r34_gn": {"backbone.depth": 34, "backbone.width": 8, "backbone.freeze_at": 5},
}


def _square(x0, y0, x1, y1):
    return torch.tensor([x0, y0, x1, y0, x1, y1, x0, y1], dtype=torch.float32)


def make_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sizes = [(96, 128), (80, 100)]
    x = torch.randn(2, 3, 96, 128, generator=g)
    x[1, :, 80:, :] = 0
    x[1, :, :, 100:] = 0
    bit = torch.zeros(2, 80, 100, dtype=torch.uint8)
    bit[0, 10:40, 20:70] = 1
    bit[1, 50:75, 5:30] = 1
    targets = [
        # polygons
        Targets(
            torch.tensor([[10.0, 12, 60, 70], [64, 30, 120, 90], [5, 70, 30, 94]]),
            torch.tensor([1, 2, 3]),
            InstanceMasks([[_square(10, 12, 60, 70)], [_square(64, 30, 120, 90)],
                           [_square(5, 70, 18, 94), _square(15, 72, 30, 90)]]),
        ),
        # RLE bitmasks
        Targets(
            torch.tensor([[20.0, 10, 70, 40], [5, 50, 30, 75]]),
            torch.tensor([2, 1]),
            InstanceMasks([[], []], bit),
        ),
    ]
    return ImageBatch(x, sizes), targets


def _params_by_grad(model: nn.Module):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return trainable, frozen


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_trains_and_infers(name):
    torch.manual_seed(0)
    cfg = tiny_config(**VARIANTS[name])
    model = build_model(cfg)
    images, targets = make_batch()

    model.train()
    losses = model(images, targets)
    expected = LOSS_NAMES if cfg.mask_on else LOSS_NAMES - {"loss_mask"}
    assert set(losses) == expected
    for k, v in losses.items():
        assert v.dtype == torch.float32 and v.dim() == 0 and torch.isfinite(v), (k, v)
    sum(losses.values()).backward()
    trainable, frozen = _params_by_grad(model)
    params = dict(model.named_parameters())
    no_grad = sorted(n for n in trainable if params[n].grad is None)
    assert not no_grad, f"trainable parameters without gradient: {no_grad}"
    assert all(torch.isfinite(params[n].grad).all() for n in trainable)
    assert all(params[n].grad is None for n in frozen)

    model.eval()
    with torch.no_grad():
        dets = model(images)
    check_detections(dets, images, cfg, model)


def check_detections(dets, images, cfg, model):
    assert isinstance(dets, list) and len(dets) == len(images)
    for det, (h, w) in zip(dets, images.image_sizes):
        assert isinstance(det, Detections)
        k = len(det)
        assert k <= cfg.roi_heads.detections_per_img
        assert det.boxes.shape == (k, 4) and det.boxes.dtype == torch.float32
        assert det.scores.shape == (k,) and det.labels.shape == (k,)
        assert det.labels.dtype == torch.int64
        if k:
            assert (det.labels >= 1).all() and (det.labels < cfg.num_classes).all()
            assert (det.scores > cfg.roi_heads.score_thresh).all()
            assert (det.scores[:-1] >= det.scores[1:]).all()
            assert (det.boxes[:, 0::2] >= 0).all() and (det.boxes[:, 0::2] <= w).all()
            assert (det.boxes[:, 1::2] >= 0).all() and (det.boxes[:, 1::2] <= h).all()
        if cfg.mask_on:
            m = model.mask_resolution
            assert det.masks.shape == (k, 1, m, m)
            assert ((det.masks >= 0) & (det.masks <= 1)).all()
        else:
            assert det.masks is None


def test_inference_with_an_image_without_detections(monkeypatch):
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg).eval()
    images, _ = make_batch(1)
    real = mask_rcnn_module.box_detections

    def drop_first_image(*args, **kwargs):
        boxes, scores, labels, img = real(*args, **kwargs)
        keep = img != 0
        return boxes[keep], scores[keep], labels[keep], img[keep]

    monkeypatch.setattr(mask_rcnn_module, "box_detections", drop_first_image)
    with torch.no_grad():
        dets = model(images)
    assert len(dets[0]) == 0 and len(dets[1]) > 0
    assert dets[0].masks.shape == (0, 1, 28, 28)
    check_detections(dets, images, cfg, model)


def test_inference_without_any_detection():
    cfg = tiny_config(**{"roi_heads.score_thresh": 1.0})
    model = build_model(cfg).eval()
    images, _ = make_batch()
    with torch.no_grad():
        dets = model(images)
    assert [len(d) for d in dets] == [0, 0]
    assert dets[0].masks.shape == (0, 1, 28, 28)


def test_training_without_gt_and_with_autocast():
    torch.manual_seed(0)
    model = build_model(tiny_config()).train()
    images, targets = make_batch()
    empty = Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), InstanceMasks([]))
    losses = model(images, [targets[0], empty])
    assert all(torch.isfinite(v) for v in losses.values())
    losses = model(images, [empty, empty])
    assert losses["loss_mask"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    # Every trainable parameter still gets a (zero) gradient: DistributedDataParallel without
    # find_unused_parameters needs that on a rank whose batch has no object.
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_train_mode_needs_targets():
    model = build_model(tiny_config()).train()
    images, _ = make_batch()
    with pytest.raises(ValueError, match="targets"):
        model(images)


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at(freeze_at):
    model = build_model(tiny_config(**{"backbone.norm": "BN", "backbone.freeze_at": freeze_at}))
    body = model.backbone.body
    parts = [body.stem, body.res2, body.res3, body.res4, body.res5]
    for i, part in enumerate(parts):
        frozen = freeze_at >= i + 1
        assert all(p.requires_grad != frozen for p in part.parameters()), (i, freeze_at)
        norms = [m for m in part.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert norms and all(isinstance(m, FrozenBatchNorm2d) == frozen for m in norms)
    # heads are never frozen
    assert all(p.requires_grad for p in model.rpn.parameters())
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())


def test_c4_stride_must_match():
    with pytest.raises(ValueError, match="c4_stride"):
        build_model(tiny_config(**{"backbone.fpn": False, "anchor.c4_stride": 8}))


def test_channels_last_gives_same_detections():
    torch.manual_seed(0)
    model = build_model(tiny_config(**{"backbone.norm": "FrozenBN"})).eval()
    images, _ = make_batch()
    with torch.no_grad():
        a = model(images)
        model.to(memory_format=torch.channels_last)
        images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        b = model(images)
    assert sum(len(x) for x in a) > 0
    for x, y in zip(a, b):
        assert len(x) == len(y)
        torch.testing.assert_close(x.boxes, y.boxes, rtol=0, atol=1e-3)
        torch.testing.assert_close(x.scores, y.scores, rtol=0, atol=1e-4)


def test_ground_truth_without_masks_is_refused():
    model = build_model(tiny_config()).train()
    images, targets = make_batch()
    no_masks = Targets(targets[0].boxes, targets[0].labels, None)
    with pytest.raises(ValueError, match="no masks"):
        model(images, [no_masks, targets[1]])


def test_fixed_slots_give_the_losses_and_gradients_of_the_compacted_samples(monkeypatch):
    """The RoI heads over every sampling slot with the unused ones masked (the sync-free
    path) against the heads over the compacted samples (the path taken with BatchNorm in a
    head, and on the CPU): the same losses and gradients."""
    cfg = tiny_config(**{"roi_heads.batch_size_per_image": 512})  # more slots than samples
    images, targets = make_batch()
    results = []
    for coupled in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg).double().train()
        monkeypatch.setattr(type(model), "_compact_rois", lambda self, device, c=coupled: c)
        model.sampling_generator = torch.Generator().manual_seed(4)
        images.tensor = images.tensor.double()
        losses = model(images, targets)
        sum(losses.values()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((losses, grads))
    (la, ga), (lb, gb) = results
    assert la.keys() == lb.keys() and ga.keys() == gb.keys()
    # The losses are reduced in float32 (sum / count here, mean there): float32 tolerances.
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-6, atol=1e-7, msg=k)
    for n in ga:
        scale = float(gb[n].abs().max()) + 1e-30
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-5, atol=1e-6 * scale, msg=n)
