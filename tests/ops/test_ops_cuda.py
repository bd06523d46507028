"""The `ops` CUDA kernels agree with the CPU kernels (skipped without a GPU or a CUDA build).

The extension is compiled with --fmad=false, so the CUDA kernels round like the CPU ones: NMS,
IoU, RoIAlign forward, paste and polygon rasterisation are compared exactly. RoIAlign backward
accumulates with atomics in arbitrary order, and exp() may differ by an ulp: those are close.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

import ops
from ops import reference

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and ops.info()["cuda"]), reason="needs a GPU and a CUDA build"
)

DEV = "cuda"


def _boxes(g: torch.Generator, n: int, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 3
    return torch.round(torch.cat([xy, xy + wh], 1) * 8) / 8


@pytest.mark.parametrize("n", [0, 1, 70, 5000])
def test_nms_and_iou_match_cpu(n):
    g = torch.Generator().manual_seed(n)
    boxes = _boxes(g, n, 300.0)
    if n > 4:
        boxes[:3, 2:] = boxes[:3, :2]  # degenerate
    scores = torch.randint(0, 50, (n,), generator=g).float() / 50  # many ties
    idxs = torch.randint(0, 5, (n,), generator=g)
    for thr in (0.3, 0.7):
        assert torch.equal(
            ops.nms(boxes.to(DEV), scores.to(DEV), thr).cpu(), ops.nms(boxes, scores, thr)
        )
        assert torch.equal(
            ops.batched_nms(boxes.to(DEV), scores.to(DEV), idxs.to(DEV), thr).cpu(),
            ops.batched_nms(boxes, scores, idxs, thr),
        )
    torch.testing.assert_close(
        ops.box_iou(boxes.to(DEV), boxes[:50].to(DEV)).cpu(),
        ops.box_iou(boxes, boxes[:50]),
        rtol=0,
        atol=0,
        equal_nan=True,
    )
    assert torch.equal(
        torchvision.ops.nms(
            boxes.to(DEV), scores.to(DEV) + torch.arange(n, device=DEV) * 1e-3, 0.5
        ).cpu(),
        ops.nms(boxes, scores + torch.arange(n) * 1e-3, 0.5),
    )


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_align_matches_cpu(aligned, sampling_ratio, dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 20, 24, generator=g, dtype=dtype)
    rois = torch.cat(
        [torch.randint(0, 2, (200, 1), generator=g).to(dtype), _boxes(g, 200, 90.0).to(dtype)], 1
    )
    args = (7, 0.25, sampling_ratio, aligned)
    xc = x.clone().requires_grad_(True)
    xg = x.to(DEV).requires_grad_(True)
    out_c = ops.roi_align(xc, rois, *args)
    out_g = ops.roi_align(xg, rois.to(DEV), *args)
    assert torch.equal(out_g.cpu(), out_c.detach())
    grad = torch.randn(out_c.shape, generator=g, dtype=dtype)
    (gc,) = torch.autograd.grad(out_c, xc, grad)
    (gg,) = torch.autograd.grad(out_g, xg, grad.to(DEV))
    torch.testing.assert_close(gg.cpu(), gc)
    # torchvision's CUDA build contracts to FMAs: equal to rounding, not bit for bit.
    torch.testing.assert_close(
        torchvision.ops.roi_align(x.to(DEV), rois.to(DEV), *args).cpu(), out_c.detach()
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_roi_align_reduced_precision(dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 32, 16, 16, generator=g)
    rois = torch.cat([torch.zeros(64, 1), _boxes(g, 64, 60.0)], 1)
    want = ops.roi_align(x, rois, 7, 0.25, 2, True)
    xl = x.to(DEV, dtype).requires_grad_(True)
    got = ops.roi_align(xl, rois.to(DEV), 7, 0.25, 2, True)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float().cpu(), want, rtol=2e-2, atol=2e-2)
    (grad,) = torch.autograd.grad(got.float().sum(), xl)
    assert grad.dtype == dtype and torch.isfinite(grad.float()).all()


def test_masks_match_cpu():
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(30, 28, 28, generator=g)
    boxes = _boxes(g, 30, 150.0)
    boxes[0] = torch.tensor([-8.0, -3.0, 20.0, 30.0])
    assert torch.equal(
        ops.paste_masks(masks.to(DEV), boxes.to(DEV), 120, 160).cpu(),
        ops.paste_masks(masks, boxes, 120, 160),
    )
    coords = torch.tensor([2.0, 2, 12, 2, 12, 12, 2, 12, 30, 30, 40, 35, 32, 45, 1, 1])
    poly_offsets = torch.tensor([0, 8, 14, 16])  # square, triangle, 1-point polygon
    roi_offsets = torch.tensor([0, 2, 2, 3])
    rois = torch.tensor([[0.0, 0, 16, 16], [5.0, 5, 50, 50], [0.0, 0, 3, 3]])
    want = ops.polygons_to_masks(coords, poly_offsets, roi_offsets, rois, 14)
    got = ops.polygons_to_masks(
        coords.to(DEV), poly_offsets.to(DEV), roi_offsets.to(DEV), rois.to(DEV), 14
    )
    assert torch.equal(got.cpu(), want)
    assert torch.equal(
        want, reference.polygons_to_masks(coords, poly_offsets, roi_offsets, rois, 14)
    )


def test_box_coding_matches_cpu():
    g = torch.Generator().manual_seed(6)
    base = torch.randn(3, 4, generator=g) * 20
    assert torch.equal(
        ops.grid_anchors(base.to(DEV), 9, 11, 16).cpu(), ops.grid_anchors(base, 9, 11, 16)
    )
    deltas = torch.randn(100, 8, generator=g)
    boxes = _boxes(g, 100)
    torch.testing.assert_close(
        ops.decode_boxes(deltas.to(DEV), boxes.to(DEV), (10, 10, 5, 5)).cpu(),
        ops.decode_boxes(deltas, boxes, (10, 10, 5, 5)),
        rtol=2e-6,
        atol=0,
    )


def test_compile_on_cuda():
    g = torch.Generator().manual_seed(7)
    feat = torch.randn(1, 8, 20, 24, generator=g).to(DEV)
    boxes = _boxes(g, 60, 80.0).to(DEV)
    scores = torch.rand(60, generator=g).to(DEV)

    def head(feat, boxes, scores):
        keep = ops.nms(boxes, scores, 0.5)
        kept = boxes[keep]
        rois = torch.cat([torch.zeros_like(kept[:, :1]), kept], 1)
        return keep, ops.roi_align(feat, rois, 4, 0.25, 2, True) * 2 + 1

    keep, pooled = torch.compile(head, fullgraph=True)(feat, boxes, scores)
    want_keep, want_pooled = head(feat, boxes, scores)
    assert torch.equal(keep, want_keep)
    torch.testing.assert_close(pooled, want_pooled, rtol=0, atol=0)


def _grid_boxes(g: torch.Generator, shape: tuple[int, ...], cells: int = 6, step: float = 4.0):
    # Coarse grid: tied IoUs, repeated boxes, zero-area boxes (0/0 IoU = NaN).
    xy = torch.randint(0, cells, shape + (2,), generator=g).float() * step
    wh = torch.randint(0, cells, shape + (2,), generator=g).float() * step
    return torch.cat([xy, xy + wh], -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_match_boxes_matches_cpu(dtype):
    from mrcnn.modeling.matcher import match
    from mrcnn.modeling.targets import PaddedGT, _quality

    g = torch.Generator().manual_seed(8)
    # 300 gts span two shared-memory tiles; 70000 predictions several pass-1 chunks.
    for b, m, n in ((2, 6, 700), (1, 300, 2000), (3, 0, 50), (2, 4, 0), (2, 5, 70000)):
        for shared in (True, False):
            gt_boxes = _grid_boxes(g, (b, m), cells=12).to(dtype)
            gt_valid = torch.rand(b, m, generator=g) < 0.75
            boxes = _grid_boxes(g, (n,) if shared else (b, n), cells=12).to(dtype)
            for allow in (False, True):
                want = ops.match_boxes(gt_boxes, gt_valid, boxes, 0.7, 0.3, allow)
                got = ops.match_boxes(gt_boxes.to(DEV), gt_valid.to(DEV), boxes.to(DEV), 0.7,
                                      0.3, allow)
                assert torch.equal(got.cpu(), want), (b, m, n, shared, allow)
                if m and n:  # and the Python matcher on the CUDA IoU matrix
                    labels = torch.zeros(b, m, dtype=torch.int64, device=DEV)
                    gt = PaddedGT(gt_boxes.to(DEV), labels, gt_valid.to(DEV))
                    py = match(_quality(gt, boxes.to(DEV)), 0.7, 0.3, allow, gt.valid)
                    assert torch.equal(got, py)


def test_encode_boxes_matches_python_and_cpu():
    from torchvision.models.detection._utils import BoxCoder

    g = torch.Generator().manual_seed(9)
    t, r = _boxes(g, 5000), _boxes(g, 5000)
    r[:5, 2] = r[:5, 0]  # zero-width references: inf / NaN
    for w in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        got = ops.encode_boxes(t.to(DEV), r.to(DEV), w)
        # Bit for bit with torchvision on the same device (torch's own CUDA log).
        want = BoxCoder(w).encode_single(t.to(DEV), r.to(DEV))
        assert torch.equal(got.nan_to_num(), want.nan_to_num())
        assert torch.equal(got.isnan(), want.isnan())
        # CUDA's logf and the CPU's vectorised log may differ by an ulp.
        torch.testing.assert_close(got.cpu(), ops.encode_boxes(t, r, w), rtol=2e-6, atol=1e-6,
                                   equal_nan=True)


# multilevel_roi_align / rpn_decode_topk: the CUDA kernels against the per-level Python paths
# run on CUDA (exact) and against the CPU kernels.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_multilevel_roi_align_matches_per_level_and_cpu(dtype, aligned, channels_last):
    from tests.test_ops_multilevel import (
        IMAGE_SIZES,
        _level_boxes,
        _pyramid,
        _roi_pool_per_level,
        _scales,
    )

    g = torch.Generator().manual_seed(8)
    feats_c = _pyramid(g, 16, dtype=dtype, channels_last=channels_last)
    boxes, bidx = _level_boxes(g, 500, dtype=dtype)
    feats_g = [f.detach().to(DEV).requires_grad_(True) for f in feats_c]
    rois = torch.cat([bidx.to(dtype)[:, None], boxes], 1)
    scales = _scales(feats_c)
    got = ops.multilevel_roi_align(feats_g, rois.to(DEV), 7, scales, 2, aligned)
    want = _roi_pool_per_level(feats_g, boxes.to(DEV), bidx.to(DEV), IMAGE_SIZES, 7, 2, aligned)
    assert torch.equal(got, want)
    cpu = ops.multilevel_roi_align(feats_c, rois, 7, scales, 2, aligned)
    assert torch.equal(got.cpu(), cpu.detach())
    grad = torch.randn(cpu.shape, generator=g, dtype=dtype)
    gg = torch.autograd.grad(got, feats_g, grad.to(DEV))
    gc = torch.autograd.grad(cpu, feats_c, grad)
    for a, b in zip(gg, gc):  # atomics add in any order
        torch.testing.assert_close(a.cpu(), b)
    empty = ops.multilevel_roi_align(feats_g, rois[:0].to(DEV), 7, scales, 2, aligned)
    assert empty.shape == (0, 16, 7, 7)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_rpn_decode_topk_matches_python_path_and_cpu(tied, batch):
    from mrcnn.modeling import box_coder
    from tests.test_ops_multilevel import _rpn_inputs, _select_first_half

    g = torch.Generator().manual_seed(9)
    sizes = [9000, 2250, 560, 140, 35]
    image_sizes = [(250, 280), (0, 0), (180, 300)][:batch]
    obj, deltas, anchors, image_hw = _rpn_inputs(g, batch, sizes, image_sizes, tied)
    args = [t.to(DEV) for t in (obj, deltas, anchors)]
    got = ops.rpn_decode_topk(*args, sizes, 1000, image_hw.to(DEV),
                              clamp=box_coder.DEFAULT_SCALE_CLAMP, min_size=1e-3,
                              score_thresh=0.05)
    want = _select_first_half(*args, sizes, image_hw.to(DEV), 1000, 1e-3, 0.05)
    for o, w in zip(got, want):
        assert o.dtype == w.dtype and torch.equal(o, w)
    cpu = ops.rpn_decode_topk(obj, deltas, anchors, sizes, 1000, image_hw,
                              clamp=box_coder.DEFAULT_SCALE_CLAMP, min_size=1e-3,
                              score_thresh=0.05)
    assert torch.equal(got[2].cpu(), cpu[2])
    if not tied:  # tie order of torch.topk differs between CPU and CUDA
        # expf on the GPU and PyTorch's vectorised CPU exp may differ by an ulp.
        torch.testing.assert_close(got[0].cpu(), cpu[0], rtol=2e-6, atol=1e-5)
        torch.testing.assert_close(got[1].cpu(), cpu[1], rtol=2e-6, atol=0)


def test_multilevel_ops_compile_on_cuda():
    from tests.test_ops_multilevel import _level_boxes, _pyramid, _rpn_inputs, _scales

    g = torch.Generator().manual_seed(10)
    feats = [f.detach().to(DEV) for f in _pyramid(g, 4)]
    boxes, bidx = _level_boxes(g, 60)
    rois = torch.cat([bidx.float()[:, None], boxes], 1).to(DEV)
    scales = _scales(feats)
    rpn_in = _rpn_inputs(g, 2, [80, 20], [(60, 60)] * 2)
    obj, deltas, anchors, image_hw = (t.to(DEV) for t in rpn_in)

    def fn(feats, rois, obj, deltas, anchors, image_hw):
        pooled = ops.multilevel_roi_align(feats, rois, 4, scales, 2, True) * 2
        boxes, scores, _, valid = ops.rpn_decode_topk(obj, deltas, anchors, [80, 20], 10,
                                                      image_hw, min_size=0.1)
        return pooled, boxes * valid[..., None], scores

    got = torch.compile(fn, fullgraph=True)(feats, rois, obj, deltas, anchors, image_hw)
    for o, w in zip(got, fn(feats, rois, obj, deltas, anchors, image_hw)):
        assert torch.equal(o, w)
