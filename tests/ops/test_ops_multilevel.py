"""ops.multilevel_roi_align and ops.rpn_decode_topk (CPU): one operator for all FPN levels.

Both replace Python loops over levels (poolers.roi_pool's sort + per-level roi_align, and the
first half of rpn.select_proposals); the old loops are kept here as the reference functions and
the operators must equal them bit for bit, including gradients, ties and empty inputs.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

import ops
from mrcnn.modeling import box_coder
from mrcnn.modeling.boxes import clip_boxes, nonempty
from mrcnn.modeling.poolers import CANONICAL_LEVEL, CANONICAL_SCALE, infer_scales, map_levels
from ops import reference

compiled = pytest.mark.skipif(not ops.info()["compiled"], reason="ops._C is not built")


# ---------------------------------------------------------------------------------------------
# The per-level Python paths the operators replace.


def _roi_pool_per_level(features, boxes, batch_idx, image_sizes, output_size, sampling_ratio,
                        aligned=False):
    """poolers.roi_pool before ops.multilevel_roi_align: sort by level, one roi_align per level."""
    scales = infer_scales([f.shape[-2:] for f in features], image_sizes)
    rois = torch.cat([batch_idx.to(boxes.dtype)[:, None], boxes], dim=1)
    size = (output_size, output_size)
    k_min = int(-math.log2(scales[0]))
    k_max = int(-math.log2(scales[-1]))
    levels = map_levels(boxes, k_min, k_max)
    order = torch.argsort(levels, stable=True)
    counts = torch.bincount(levels, minlength=len(features)).tolist()
    pooled = [
        ops.roi_align(f, r, size, scale, sampling_ratio, aligned)
        for f, r, scale, n in zip(features, rois[order].split(counts), scales, counts)
        if n
    ]
    feat = features[0]
    if not pooled:
        return feat.new_zeros((0, feat.shape[1], output_size, output_size))
    sorted_out = torch.cat([p.to(pooled[0].dtype) for p in pooled])
    out = torch.empty_like(sorted_out)
    return out.index_copy_(0, order, sorted_out)


def _select_first_half(objectness, deltas, anchors, level_sizes, image_hw, pre_nms_top_n,
                       min_size, score_thresh, weights=(1.0, 1.0, 1.0, 1.0)):
    """rpn.select_proposals up to its NMS, before ops.rpn_decode_topk."""
    tops, lvls = [], []
    offset = 0
    for level, n in enumerate(level_sizes):
        k = min(pre_nms_top_n, n)
        top = objectness[:, offset : offset + n].topk(k, dim=1).indices
        tops.append(top + offset)
        lvls.append(torch.full((k,), level, dtype=torch.int64, device=objectness.device))
        offset += n
    idx = torch.cat(tops, dim=1)
    lvl = torch.cat(lvls)
    scores = torch.sigmoid(torch.gather(objectness, 1, idx))
    d = torch.gather(deltas, 1, idx[..., None].expand(-1, -1, 4))
    boxes = box_coder.decode(d, anchors[idx], weights)
    boxes = clip_boxes(boxes, image_hw[:, 0:1], image_hw[:, 1:2])
    keep_mask = nonempty(boxes, min_size) & (scores >= score_thresh)
    return boxes, scores, lvl, keep_mask


# ---------------------------------------------------------------------------------------------
# multilevel_roi_align

IMAGE_SIZES = [(300, 420), (256, 400), (320, 416)]  # max (320, 420): maps 80x105 .. 10x14


def _pyramid(g, channels=8, batch=3, dtype=torch.float32, channels_last=False):
    feats = []
    for s in (4, 8, 16, 32):
        f = torch.randn(batch, channels, -(-320 // s), -(-420 // s), generator=g, dtype=dtype)
        if channels_last:
            f = f.contiguous(memory_format=torch.channels_last)
        feats.append(f.requires_grad_(True))
    return feats


def _level_boxes(g, n, batch=3, dtype=torch.float32):
    """Boxes of every size (all four levels), tiny and degenerate ones, boxes exactly on a level
    boundary (side 112, 224, 448), and RoIs over the image border; batch indices mixed."""
    xy = torch.rand(n, 2, generator=g) * 300
    side = torch.exp(torch.rand(n, 1, generator=g) * math.log(600.0)) + 0.5
    aspect = torch.exp((torch.rand(n, 1, generator=g) - 0.5) * 2)
    boxes = torch.cat([xy, xy + torch.cat([side * aspect, side / aspect], 1)], 1)
    boxes = torch.round(boxes * 8) / 8
    if n >= 8:
        boxes[0, 2:] = boxes[0, :2]  # zero area: log2(0) = -inf, the finest level
        boxes[1, 2:] = boxes[1, :2] + 0.125  # tiny
        boxes[2] = torch.tensor([10.0, 10.0, 122.0, 122.0])  # side 112: exactly level 3
        boxes[3] = torch.tensor([0.0, 0.0, 224.0, 224.0])  # side 224: exactly level 4
        boxes[4] = torch.tensor([-40.0, -40.0, 408.0, 408.0])  # side 448, over the border
        boxes[5] = torch.tensor([5.0, 7.0, 5.0, 90.0])  # zero width, tall
    bidx = torch.randint(0, batch, (n,), generator=g)
    return boxes.to(dtype), bidx


def _scales(feats):
    return infer_scales([f.shape[-2:] for f in feats], IMAGE_SIZES)


@compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("channels,n,channels_last", [(3, 50, False), (16, 400, True),
                                                      (24, 600, False)])
def test_multilevel_equals_per_level_path(dtype, aligned, sampling_ratio, channels, n,
                                          channels_last):
    g = torch.Generator().manual_seed(100 + n)
    feats = _pyramid(g, channels, dtype=dtype, channels_last=channels_last)
    boxes, bidx = _level_boxes(g, n, dtype=dtype)
    levels = map_levels(boxes, 2, 5)
    assert set(levels.tolist()) == {0, 1, 2, 3}
    want = _roi_pool_per_level(feats, boxes, bidx, IMAGE_SIZES, 7, sampling_ratio, aligned)
    rois = torch.cat([bidx.to(dtype)[:, None], boxes], 1)
    got = ops.multilevel_roi_align(feats, rois, 7, _scales(feats), sampling_ratio, aligned)
    assert got.dtype == dtype and torch.equal(got, want)
    grad_out = torch.randn(want.shape, generator=g, dtype=dtype)
    want_g = torch.autograd.grad(want, feats, grad_out, allow_unused=True)
    got_g = torch.autograd.grad(got, feats, grad_out)
    for w, o, f in zip(want_g, got_g, feats):
        assert o.shape == f.shape
        assert torch.equal(o, w if w is not None else torch.zeros_like(f))
    # The pure-PyTorch fallback computes the same.
    ref = reference.multilevel_roi_align(
        [f.detach() for f in feats], rois, _scales(feats), 7, 7, sampling_ratio, aligned
    )
    assert torch.equal(ref, want.detach())


@compiled
def test_multilevel_equals_torchvision_multiscale_roi_align():
    g = torch.Generator().manual_seed(101)
    feats = [f.detach() for f in _pyramid(g, 8)]
    boxes, bidx = _level_boxes(g, 300)
    order = torch.argsort(bidx, stable=True)  # torchvision takes per-image box lists
    boxes, bidx = boxes[order], bidx[order]
    tv = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    named = OrderedDict((str(i), f) for i, f in enumerate(feats))
    want = tv(named, [boxes[bidx == i] for i in range(3)], IMAGE_SIZES)
    rois = torch.cat([bidx.float()[:, None], boxes], 1)
    got = ops.multilevel_roi_align(feats, rois, 7, _scales(feats), 2)
    assert torch.equal(got, want)


@compiled
def test_multilevel_roi_pool_wiring_and_edge_cases():
    from mrcnn.modeling.poolers import roi_pool

    g = torch.Generator().manual_seed(102)
    feats = _pyramid(g, 4)
    boxes, bidx = _level_boxes(g, 80)
    assert torch.equal(roi_pool(feats, boxes, bidx, IMAGE_SIZES, 5, 2),
                       _roi_pool_per_level(feats, boxes, bidx, IMAGE_SIZES, 5, 2))
    # Empty: right shape, zero gradients for every level.
    out = roi_pool(feats, boxes[:0], bidx[:0], IMAGE_SIZES, 5, 2)
    assert out.shape == (0, 4, 5, 5)
    grads = torch.autograd.grad(out.sum(), feats)
    assert all(torch.equal(gr, torch.zeros_like(f)) for gr, f in zip(grads, feats))
    # All RoIs on one level (the coarsest: sides >= 448): the other levels get zero gradient.
    big = torch.tensor([[0.0, 0.0, 460.0, 470.0], [10.0, 5.0, 500.0, 480.0]])
    bi = torch.tensor([0, 2])
    got = roi_pool(feats, big, bi, IMAGE_SIZES, 5, 2)
    assert torch.equal(got, _roi_pool_per_level(feats, big, bi, IMAGE_SIZES, 5, 2))
    grads = torch.autograd.grad(got.sum(), feats)
    assert [bool(gr.abs().sum() > 0) for gr in grads] == [False, False, False, True]
    # One level only: plain roi_align, unchanged.
    assert torch.equal(roi_pool(feats[:1], boxes, bidx, IMAGE_SIZES, 5, 2),
                       ops.roi_align(feats[0], torch.cat([bidx.float()[:, None], boxes], 1), 5,
                                     0.25, 2))


@compiled
def test_multilevel_reversed_boxes_have_no_level():
    # Negative area: NaN level. torchvision's MultiScaleRoIAlign leaves such rows zero; so do we.
    g = torch.Generator().manual_seed(103)
    feats = _pyramid(g, 4)
    rois = torch.tensor([[0.0, 50.0, 50.0, 10.0, 90.0], [1.0, 10.0, 10.0, 60.0, 60.0]])
    out = ops.multilevel_roi_align(feats, rois, 3, _scales(feats), 2)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and out[1].abs().sum() > 0
    assert torch.equal(reference.multilevel_roi_align(
        [f.detach() for f in feats], rois, _scales(feats), 3, 3, 2, False), out.detach())
    assert reference.fpn_levels(rois[:, 1:], 2, 5).tolist() == [-1, 0]


@compiled
def test_outputs_are_fully_written_over_reused_memory():
    # The CPU kernels allocate their outputs without zeroing them (every bin is written);
    # rows that nothing writes (a RoI of no level) must still come out zero. Freed blocks of the
    # same size, filled with a marker, are what the allocator hands out next: a skipped row
    # would show the marker.
    g = torch.Generator().manual_seed(104)
    feats = _pyramid(g, 4)
    rois = torch.tensor([[0.0, 50.0, 50.0, 10.0, 90.0], [1.0, 10.0, 10.0, 60.0, 60.0],
                         [0.0, 5.0, 5.0, 200.0, 150.0]])
    want = reference.multilevel_roi_align([f.detach() for f in feats], rois, _scales(feats),
                                          3, 3, 2, False)
    c = feats[0].shape[1]
    for _ in range(5):
        for n in (1, 2, 3):
            dirty = torch.full((n, c, 3, 3), 7.0)
            del dirty
        got = ops.multilevel_roi_align(feats, rois, 3, _scales(feats), 2)
        assert torch.equal(got.detach(), want)
        dirty = torch.full((2, c, 3, 3), 7.0)
        del dirty
        one = ops.roi_align(feats[0].detach(), rois[1:], (3, 3), 0.25, 2, False)
        assert torch.equal(one, reference.roi_align(feats[0].detach(), rois[1:], 0.25, 3, 3,
                                                    2, False))


@compiled
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_multilevel_reduced_precision_accumulates_in_float(dtype):
    g = torch.Generator().manual_seed(104)
    feats = [f.detach() for f in _pyramid(g, 8)]
    boxes, bidx = _level_boxes(g, 120)
    rois = torch.cat([bidx.float()[:, None], boxes], 1)
    want = ops.multilevel_roi_align(feats, rois, 4, _scales(feats), 2, True)
    low = [f.to(dtype).requires_grad_(True) for f in feats]
    got = ops.multilevel_roi_align(low, rois, 4, _scales(feats), 2, True)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
    # Each level equals roi_align in that dtype on its RoIs.
    assert torch.equal(got, _roi_pool_per_level(low, boxes, bidx, IMAGE_SIZES, 4, 2, True))
    grads = torch.autograd.grad(got, low, torch.ones_like(got))
    assert all(gr.dtype == dtype for gr in grads)


@compiled
@pytest.mark.parametrize("aligned", [False, True])
def test_multilevel_gradcheck(aligned):
    g = torch.Generator().manual_seed(105)
    feats = [torch.randn(2, 2, s, s + 1, generator=g, dtype=torch.float64, requires_grad=True)
             for s in (16, 8, 4, 2)]
    rois = torch.tensor([[0, 1, 2, 20, 30], [1, 3, 3, 60, 50], [0, 0, 0, 63, 60],
                         [1, 4, 4, 5, 5], [0, 5, 6, 5, 6]], dtype=torch.float64)
    scales = [0.25, 0.125, 0.0625, 0.03125]

    def fn(*maps):
        return ops.multilevel_roi_align(list(maps), rois, (3, 2), scales, -1, aligned,
                                        canonical_scale=32.0)

    levels = reference.fpn_levels(rois[:, 1:], 2, 5, 4, 32.0)
    assert len(set(levels.tolist())) >= 3
    assert torch.autograd.gradcheck(fn, feats)
    assert torch.autograd.gradgradcheck(fn, feats)


@compiled
def test_multilevel_rejects_bad_input():
    g = torch.Generator().manual_seed(106)
    feats = [f.detach() for f in _pyramid(g, 4, batch=1)]
    rois = torch.tensor([[0.0, 1, 1, 50, 50]])
    scales = _scales(feats)
    with pytest.raises(RuntimeError, match="batch index"):
        ops.multilevel_roi_align(feats, torch.tensor([[1.0, 1, 1, 50, 50]]), 2, scales)
    with pytest.raises(RuntimeError, match="share batch size and channels"):
        ops.multilevel_roi_align([feats[0], feats[1][:, :2]] + feats[2:], rois, 2, scales)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.multilevel_roi_align(feats, rois.half(), 2, scales)
    with pytest.raises(RuntimeError, match="spatial_scales"):
        torch.ops.mrcnn.multilevel_roi_align(feats, rois, scales[:3], 2, 2, 2, False, 4, 224.0, 2)
    with pytest.raises(ValueError, match="octave"):
        ops.multilevel_roi_align(feats, rois, 2, [0.25, 0.25, 0.25, 0.25])


def _multilevel_args():
    g = torch.Generator().manual_seed(107)
    feats = [torch.randn(2, 3, s, s, generator=g, dtype=torch.float64) for s in (12, 6, 3)]
    rois = torch.tensor([[0, 1, 2, 20, 30], [1, 3, 3, 40, 45], [0, 0, 0, 47, 47],
                         [1, 4, 4, 5, 5]], dtype=torch.float64)
    fwd = (feats, rois, [0.25, 0.125, 0.0625], 3, 2, 2, True, 4, 32.0, 2)
    grad = torch.randn(4, 3, 3, 2, generator=g, dtype=torch.float64)
    bwd = (grad, rois, [0.25, 0.125, 0.0625], 3, 2, 2, 3, [12, 6, 3], [12, 6, 3], 2, True, 4,
           32.0, 2)
    return fwd, bwd


@compiled
def test_multilevel_opcheck():
    fwd, bwd = _multilevel_args()
    fwd[0][0].requires_grad_(True)
    torch.library.opcheck(torch.ops.mrcnn.multilevel_roi_align.default, fwd)
    torch.library.opcheck(torch.ops.mrcnn.multilevel_roi_align_backward.default, bwd)


@compiled
def test_multilevel_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(108)
    feats = [f.detach() for f in _pyramid(g, 4)]
    boxes, bidx = _level_boxes(g, 60)
    rois = torch.cat([bidx.float()[:, None], boxes], 1)
    scales = _scales(feats)

    def head(feats, rois):
        return ops.multilevel_roi_align(feats, rois, 4, scales, 2, True) * 2 + 1

    got = torch.compile(head, fullgraph=True)(feats, rois)
    assert torch.equal(got, head(feats, rois))
    # Training: the backward operator traced too, with dynamic shapes.
    maps = [f.clone().requires_grad_(True) for f in feats]

    def loss(maps, rois):
        return (ops.multilevel_roi_align(maps, rois, 4, scales, 2, True) ** 2).sum()

    got_g = torch.autograd.grad(torch.compile(loss, fullgraph=True, dynamic=True)(maps, rois), maps)
    want_g = torch.autograd.grad(loss(maps, rois), maps)
    assert all(torch.equal(a, b) for a, b in zip(got_g, want_g))


# ---------------------------------------------------------------------------------------------
# rpn_decode_topk


def _rpn_inputs(g, batch, level_sizes, image_sizes, tied=False):
    n = sum(level_sizes)
    if tied:  # few distinct logits: many ties inside and across levels
        obj = torch.randint(-6, 7, (batch, n), generator=g).float() / 4
    else:
        obj = torch.randn(batch, n, generator=g) * 2
    deltas = torch.randn(batch, n, 4, generator=g) * 0.5
    deltas[:, :7, 2:] = 9.0  # beyond the clamp
    xy = torch.rand(n, 2, generator=g) * 300 - 20
    wh = torch.rand(n, 2, generator=g) * 200 + 0.5
    anchors = torch.round(torch.cat([xy, xy + wh], 1) * 2) / 2
    image_hw = torch.tensor(image_sizes, dtype=torch.float32)
    return obj, deltas, anchors, image_hw


RPN_CASES = [
    # batch, level sizes, pre_nms_top_n, image sizes (0 x 0: an empty image, nothing valid)
    (1, [300, 120, 40, 9, 3], 50, [(250, 280)]),
    (3, [600, 150, 60, 15, 0], 100, [(250, 280), (0, 0), (180, 300)]),
    (3, [6000, 1500, 375], 1000, [(250, 280), (200, 260), (180, 300)]),
    (2, [12000, 4000, 900], 4000, [(250, 280), (260, 210)]),  # B*K > 32768: threaded exp
]


@compiled
@pytest.mark.parametrize("case", range(len(RPN_CASES)))
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("min_size,score_thresh", [(1e-3, 0.0), (4.0, 0.6)])
def test_rpn_decode_topk_equals_python_path(case, tied, min_size, score_thresh):
    batch, sizes, pre, image_sizes = RPN_CASES[case]
    g = torch.Generator().manual_seed(200 + case)
    obj, deltas, anchors, image_hw = _rpn_inputs(g, batch, sizes, image_sizes, tied)
    want = _select_first_half(obj, deltas, anchors, sizes, image_hw, pre, min_size, score_thresh)
    got = ops.rpn_decode_topk(obj, deltas, anchors, sizes, pre, image_hw,
                              clamp=box_coder.DEFAULT_SCALE_CLAMP, min_size=min_size,
                              score_thresh=score_thresh)
    ref = reference.rpn_decode_topk(obj, deltas, anchors, sizes, pre, image_hw,
                                    clamp=box_coder.DEFAULT_SCALE_CLAMP, min_size=min_size,
                                    score_thresh=score_thresh)
    k = sum(min(pre, n) for n in sizes)
    for name, w, o, r in zip(("boxes", "scores", "levels", "valid"), want, got, ref):
        assert o.dtype == w.dtype and o.shape == w.shape, name
        assert torch.equal(o, w), name
        assert torch.equal(r, w), name
    assert got[0].shape == (batch, k, 4)
    for i, (h, w) in enumerate(image_sizes):
        if h == 0:
            assert not got[3][i].any()
    assert got[3].any()


@compiled
def test_rpn_decode_topk_weights_double_and_empty():
    g = torch.Generator().manual_seed(210)
    sizes = [50, 20, 5]
    obj, deltas, anchors, image_hw = _rpn_inputs(g, 2, sizes, [(120, 100), (90, 140)])
    weights = (10.0, 10.0, 5.0, 5.0)
    want = _select_first_half(obj.double(), deltas.double(), anchors, sizes, image_hw.double(),
                              10, 0.5, 0.2, weights)
    got = ops.rpn_decode_topk(obj.double(), deltas.double(), anchors, sizes, 10, image_hw,
                              weights, box_coder.DEFAULT_SCALE_CLAMP, 0.5, 0.2)
    assert got[0].dtype == torch.float64
    for w, o in zip(want, got):
        assert torch.equal(o, w)
    # No images.
    out = ops.rpn_decode_topk(obj[:0], deltas[:0], anchors, sizes, 10, image_hw[:0])
    assert [tuple(t.shape) for t in out] == [(0, 25, 4), (0, 25), (25,), (0, 25)]


@compiled
def test_rpn_decode_topk_rejects_bad_input():
    g = torch.Generator().manual_seed(211)
    obj, deltas, anchors, image_hw = _rpn_inputs(g, 2, [30, 10], [(50, 50), (60, 60)])
    with pytest.raises(RuntimeError, match="level_sizes add up to 39"):
        ops.rpn_decode_topk(obj, deltas, anchors, [30, 9], 5, image_hw)
    with pytest.raises(RuntimeError, match="deltas must be"):
        ops.rpn_decode_topk(obj, deltas[:, :, :3], anchors, [30, 10], 5, image_hw)
    with pytest.raises(RuntimeError, match="image_hw must be"):
        ops.rpn_decode_topk(obj, deltas, anchors, [30, 10], 5, image_hw[:1])
    with pytest.raises(RuntimeError, match="pre_nms_top_n"):
        ops.rpn_decode_topk(obj, deltas, anchors, [30, 10], -1, image_hw)


@compiled
def test_rpn_decode_topk_opcheck_and_compile():
    g = torch.Generator().manual_seed(212)
    sizes = [40, 12, 3]
    obj, deltas, anchors, image_hw = _rpn_inputs(g, 2, sizes, [(60, 70), (50, 80)])
    args = (obj, deltas, anchors, sizes, 8, image_hw, [1.0, 1.0, 1.0, 1.0], 4.135, 0.1, 0.3)
    torch.library.opcheck(torch.ops.mrcnn.rpn_decode_topk.default, args)

    def fn(obj, deltas, anchors, image_hw):
        boxes, scores, lvl, valid = ops.rpn_decode_topk(obj, deltas, anchors, sizes, 8, image_hw,
                                                        min_size=0.1, score_thresh=0.3)
        return boxes * valid[..., None], scores, lvl

    got = torch.compile(fn, fullgraph=True)(obj, deltas, anchors, image_hw)
    for w, o in zip(fn(obj, deltas, anchors, image_hw), got):
        assert torch.equal(o, w)
