"""The model's pure functions, each against its torchvision counterpart, with edge cases."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from mrcnn.modeling.anchors import AnchorCache
from mrcnn.modeling.fpn import FPN
from mrcnn.modeling.poolers import roi_pool
from mrcnn.modeling.postprocess import box_detections, detections_to_original
from mrcnn.modeling.rpn import flatten_outputs, select_proposals
from mrcnn.structures import Detections


def _grids(h: int, w: int) -> list[tuple[int, int]]:
    """Feature sizes of P2..P6 for a padded h x w batch (P6 = ceil(P5 / 2))."""
    sizes = [(-(-h // s), -(-w // s)) for s in (4, 8, 16, 32)]
    sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    return sizes


@pytest.mark.parametrize("hw", [(800, 1216), (320, 416), (96, 64)])
def test_anchors_equal_torchvision(hw):
    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    ours = AnchorCache([(s,) for s in sizes], ratios)(hw, _grids(*hw), torch.device("cpu"))
    tv = AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * 5)
    feats = [torch.zeros(1, 1, *g) for g in _grids(*hw)]
    expected = tv(ImageList(torch.zeros(1, 3, *hw), [hw]), feats)[0]
    assert torch.equal(torch.cat(ours), expected)


def test_anchor_cache_reuses_and_is_bounded():
    cache = AnchorCache([(32,)], (1.0,), max_entries=2)
    a = cache((64, 64), [(16, 16)], torch.device("cpu"))
    assert cache((64, 64), [(16, 16)], torch.device("cpu")) is a
    cache((64, 96), [(16, 24)], torch.device("cpu"))
    cache((96, 96), [(24, 24)], torch.device("cpu"))
    assert len(cache._cache) == 2
    with torch.inference_mode():
        b = cache((32, 32), [(8, 8)], torch.device("cpu"))
    assert not b[0].is_inference()  # usable by a later training step


def test_fpn_equals_torchvision():
    torch.manual_seed(0)
    ours = FPN([8, 16, 32, 64], 16)
    tv = FeaturePyramidNetwork([8, 16, 32, 64], 16, extra_blocks=LastLevelMaxPool())
    sd = {}
    for i in range(4):
        for p in ("weight", "bias"):
            sd[f"inner_blocks.{i}.0.{p}"] = getattr(ours.lateral[i].conv, p)
            sd[f"layer_blocks.{i}.0.{p}"] = getattr(ours.output[i].conv, p)
    tv.load_state_dict(sd)
    feats = [torch.randn(2, c, s, s + 1) for c, s in zip([8, 16, 32, 64], [25, 13, 7, 4])]
    out = ours(feats)
    expected = list(tv(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())
    assert len(out) == 5
    for a, b in zip(out, expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize("score_thresh", [0.0, 0.6])
def test_select_proposals_equals_torchvision(score_thresh):
    g = torch.Generator().manual_seed(0)
    hw = (96, 128)
    image_sizes = [(96, 128), (70, 90)]
    grids = _grids(*hw)
    anchors = AnchorCache([(s,) for s in (16, 32, 64, 128, 256)], (0.5, 1.0, 2.0))(
        hw, grids, torch.device("cpu")
    )
    logits = [torch.randn(2, 3, *gr, generator=g) for gr in grids]
    deltas = [torch.randn(2, 12, *gr, generator=g) * 0.3 for gr in grids]
    obj, reg, level_sizes = flatten_outputs(logits, deltas)
    boxes, scores, valid = select_proposals(
        obj, reg, torch.cat(anchors), level_sizes,
        torch.tensor(image_sizes, dtype=torch.float32),
        pre_nms_top_n=60, post_nms_top_n=100, nms_thresh=0.7, min_size=1e-3,
        score_thresh=score_thresh,
    )
    tv_rpn = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5,
                                   {"testing": 60}, {"testing": 100}, 0.7, score_thresh)
    tv_rpn.eval()
    tv_obj, tv_reg = concat_box_prediction_layers(logits, deltas)
    assert torch.equal(obj.reshape(-1, 1), tv_obj) and torch.equal(reg.reshape(-1, 4), tv_reg)
    proposals = tv_rpn.box_coder.decode(tv_reg, [torch.cat(anchors)] * 2).view(2, -1, 4)
    tv_boxes, tv_scores = tv_rpn.filter_proposals(proposals, tv_obj, image_sizes, level_sizes)
    for i in range(2):
        n = int(valid[i].sum())
        assert valid[i, :n].all() and not valid[i, n:].any()  # valid ones first
        assert n == len(tv_boxes[i]) > 0
        assert torch.equal(boxes[i, :n], tv_boxes[i])
        assert torch.equal(scores[i, :n], tv_scores[i])


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


def test_box_detections_equal_torchvision():
    g = torch.Generator().manual_seed(2)
    image_sizes = [(96, 128), (80, 100)]
    props = [torch.rand(60, 2, generator=g) * 60, torch.rand(40, 2, generator=g) * 50]
    props = [torch.cat([p, p + 10 + torch.rand(len(p), 2, generator=g) * 30], 1) for p in props]
    c = 5
    logits = torch.randn(100, c, generator=g) * 2
    regression = torch.randn(100, c * 4, generator=g)
    heads = tv_roi_heads.RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 20)
    tv_boxes, tv_scores, tv_labels = heads.postprocess_detections(
        logits, regression, props, image_sizes
    )
    boxes, scores, labels, img = box_detections(
        logits, regression, torch.cat(props), torch.tensor([0] * 60 + [1] * 40),
        torch.tensor(image_sizes, dtype=torch.float32),
        score_thresh=0.05, nms_thresh=0.5, detections_per_img=20, weights=(10.0, 10.0, 5.0, 5.0),
    )
    for i in range(2):
        sel = img == i
        assert int(sel.sum()) == len(tv_boxes[i]) == 20
        assert torch.equal(boxes[sel], tv_boxes[i])
        assert torch.equal(scores[sel], tv_scores[i])
        assert torch.equal(labels[sel], tv_labels[i])
    # nothing above the threshold: empty, well-typed
    out = box_detections(
        torch.full((3, c), -10.0).index_fill_(1, torch.tensor([0]), 10.0), regression[:3],
        torch.cat(props)[:3], torch.zeros(3, dtype=torch.int64),
        torch.tensor(image_sizes, dtype=torch.float32),
        score_thresh=0.05, nms_thresh=0.5, detections_per_img=20, weights=(10.0, 10.0, 5.0, 5.0),
    )
    assert [t.shape[0] for t in out] == [0, 0, 0, 0] and out[2].dtype == torch.int64


def test_detections_to_original_equals_torchvision_postprocess():
    g = torch.Generator().manual_seed(3)
    size, orig = (100, 133), (375, 500)
    xy = torch.rand(6, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 5 + torch.rand(6, 2, generator=g) * 40], 1)
    masks = torch.rand(6, 1, 28, 28, generator=g)
    det = Detections(boxes, torch.rand(6, generator=g), torch.arange(1, 7), masks)
    out = detections_to_original(det, size, orig)
    transform = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3).eval()
    expected = transform.postprocess([{"boxes": boxes, "masks": masks}], [size], [orig])[0]
    assert torch.equal(out.boxes, expected["boxes"])
    assert out.masks.dtype == torch.uint8 and out.masks.shape == (6, *orig)
    assert torch.equal(out.masks.bool(), expected["masks"][:, 0] > 0.5)
    none = Detections(boxes[:0], boxes[:0, 0], torch.zeros(0, dtype=torch.int64), masks[:0])
    empty = detections_to_original(none, size, orig)
    assert empty.masks.shape == (0, *orig) and empty.masks.dtype == torch.uint8
    no_masks = detections_to_original(Detections(boxes, det.scores, det.labels), size, orig)
    assert no_masks.masks is None


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
