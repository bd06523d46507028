"""The `ops` operators (CPU): equal to torchvision and to the pure-PyTorch reference.

Inputs are drawn fresh from seeded generators; each test also covers empty, degenerate
(zero-area) and tied inputs. Where the kernels are exact (NMS, IoU, RoIAlign forward and
backward, anchors) the comparisons are exact; documented tolerances elsewhere.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import paste_masks_in_image

import ops
from ops import reference

compiled = pytest.mark.skipif(not ops.info()["compiled"], reason="ops._C is not built")


def _boxes(g: torch.Generator, n: int, size: float = 100.0, dtype=torch.float32) -> torch.Tensor:
    """Random xyxy boxes; coordinates on a 1/8 px grid so coordinate offsets stay exact."""
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 3
    b = torch.cat([xy, xy + wh], 1)
    return (torch.round(b * 8) / 8).to(dtype)


def _with_edge_cases(g: torch.Generator, boxes: torch.Tensor, scores: torch.Tensor):
    """Appends duplicates, zero-area boxes and tied scores."""
    n = boxes.shape[0]
    dup = boxes[: n // 4].clone()
    flat = boxes[: n // 8].clone()
    flat[:, 2] = flat[:, 0]  # zero width
    point = boxes[:4].clone()
    point[:, 2:] = point[:, :2]  # zero area, a point
    tied = scores[: n // 4].clone()  # duplicates with exactly their original's score
    s_flat = torch.rand(flat.shape[0], generator=g, dtype=scores.dtype)
    s_point = torch.full((4,), 0.5, dtype=scores.dtype)
    boxes = torch.cat([boxes, dup, flat, point])
    scores = torch.cat([scores, tied, s_flat, s_point])
    perm = torch.randperm(boxes.shape[0], generator=g)
    return boxes[perm], scores[perm]


# ---------------------------------------------------------------------------------------------
# build and fallback


def test_info_reports_build():
    info = ops.info()
    assert set(info) >= {"compiled", "cuda", "cuda_archs", "torch_version", "threads"}
    assert info["threads"] == torch.get_num_threads()
    if info["compiled"]:
        assert info["torch_version"] == torch.__version__
        assert isinstance(info["cuda_archs"], list)
        assert info["cuda"] == bool(info["cuda_archs"])
        assert hasattr(torch.ops.mrcnn, "roi_align")


def test_extension_built_in_ci():
    if os.environ.get("CI") == "true":
        assert ops.info()["compiled"], f"ops._C failed to load: {ops.info()['load_error']}"


def test_fallback_to_reference_warns_once(monkeypatch):
    g = torch.Generator().manual_seed(1)
    boxes, scores = _boxes(g, 50), torch.rand(50, generator=g)
    monkeypatch.setattr(ops, "_C", None)
    monkeypatch.setattr(ops, "_LOAD_ERROR", "not built (test)")
    monkeypatch.setattr(ops, "_warned", False)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference"):
        keep = ops.nms(boxes, scores, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.box_iou(boxes, boxes)  # second use: no new warning
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))


# ---------------------------------------------------------------------------------------------
# box_iou


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_equals_torchvision(dtype):
    g = torch.Generator().manual_seed(2)
    a = _boxes(g, 37, dtype=dtype)
    b = _boxes(g, 53, dtype=dtype)
    b[:5, 2:] = b[:5, :2]  # degenerate: NaN against degenerate, 0 otherwise
    a[:3] = b[:3]
    want = torchvision.ops.box_iou(a, b)
    for got in (ops.box_iou(a, b), reference.box_iou(a, b)):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert ops.box_iou(a[:0], b).shape == (0, 53)
    assert ops.box_iou(a, b[:0]).shape == (37, 0)


# ---------------------------------------------------------------------------------------------
# nms / batched_nms


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.7, 1.0])
def test_nms_equals_torchvision(dtype, thr):
    g = torch.Generator().manual_seed(3)
    for n in (1, 17, 700):
        boxes, scores = _with_edge_cases(
            g, _boxes(g, n, dtype=dtype), torch.rand(n, generator=g, dtype=dtype)
        )
        want = torchvision.ops.nms(boxes, scores, thr)
        assert torch.equal(ops.nms(boxes, scores, thr), want)
        assert torch.equal(reference.nms(boxes, scores, thr), want)


def test_nms_ties_keep_input_order_and_empty():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60.0]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 3]
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [0, 3]
    empty = ops.nms(boxes[:0], scores[:0], 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)


def test_nms_threaded_sweep(monkeypatch):
    # Several blocks of boxes; the threaded sweep, normally kept for huge inputs, forced on.
    monkeypatch.setenv("MRCNN_NMS_MIN_PARALLEL_WORK", "1")
    g = torch.Generator().manual_seed(4)
    boxes = _boxes(g, 3000, size=400.0)
    scores = torch.rand(3000, generator=g)
    assert torch.equal(ops.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("n,classes", [(200, 3), (3000, 40), (1500, 1), (5400, 3)])
def test_batched_nms_equals_torchvision(n, classes):
    # torchvision: n <= 1000 uses the coordinate offset, larger n a per-class loop. Ours: one
    # thread for little work (200, 3000), categories in parallel (5400 / 3), one category (1500).
    g = torch.Generator().manual_seed(5)
    boxes = _boxes(g, n, size=300.0)
    # Distinct scores: torchvision's per-class path orders ties arbitrarily (unstable sort).
    scores = torch.randperm(n, generator=g).float() / n
    idxs = torch.randint(0, classes, (n,), generator=g) * 7 - 3  # arbitrary, negative ids too
    want = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5), want)
    if n // classes <= 1000:  # the reference loops in Python once per kept box
        assert torch.equal(reference.batched_nms(boxes, scores, idxs, 0.5), want)


def test_batched_nms_tied_scores():
    g = torch.Generator().manual_seed(6)
    boxes = _boxes(g, 300, size=120.0)
    scores = torch.randint(0, 4, (300,), generator=g).float() / 4  # many exact ties
    idxs = torch.randint(0, 3, (300,), generator=g)
    got = ops.batched_nms(boxes, scores, idxs, 0.4)
    assert torch.equal(got, reference.batched_nms(boxes, scores, idxs, 0.4))
    want = torchvision.ops.batched_nms(boxes, scores, idxs, 0.4)
    # Same kept set; ours orders ties by index (stable), torchvision's offset path agrees.
    assert sorted(got.tolist()) == sorted(want.tolist())
    assert torch.equal(scores[got], scores[want])
    assert ops.batched_nms(boxes[:0], scores[:0], idxs[:0], 0.5).shape == (0,)


# ---------------------------------------------------------------------------------------------
# roi_align


def _rois(g: torch.Generator, k: int, batch: int, size: float, dtype=torch.float32):
    b = _boxes(g, k, size=size, dtype=dtype)
    if k >= 4:
        b[0, 2:] = b[0, :2]  # zero-size RoI
        b[1] = torch.tensor([-20.0, -20.0, -5.0, -3.0])  # outside the map
        b[2] = torch.tensor([size * 0.9, size * 0.5, size * 1.4, size * 1.2])  # over the edge
        b[3, 2:] = b[3, :2] - 2  # reversed corners
    idx = torch.randint(0, batch, (k, 1), generator=g).to(dtype)
    return torch.cat([idx, b], 1)


# (channels, rois, channels_last): C < 8 takes the planar kernels, the others the sliced ones;
# the first two cases are too small for threads, the other two are threaded.
LAYOUTS = [(3, 40, False), (16, 30, True), (4, 500, False), (24, 300, False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2, 3])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_roi_align_equals_torchvision(dtype, aligned, sampling_ratio, layout):
    channels, k, channels_last = layout
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, channels, 13, 17, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    rois = _rois(g, k, 2, 60.0, dtype)
    args = ((5, 4), 0.25, sampling_ratio, aligned)
    want = torchvision.ops.roi_align(x, rois, *args)
    got = ops.roi_align(x, rois, *args)
    assert torch.equal(got, want)
    assert torch.equal(
        reference.roi_align(x.detach(), rois, 0.25, 5, 4, sampling_ratio, aligned), want.detach()
    )
    grad_out = torch.randn(want.shape, generator=g, dtype=dtype)
    (gw,) = torch.autograd.grad(want, x, grad_out)
    (gg,) = torch.autograd.grad(got, x, grad_out)
    assert torch.equal(gg, gw)  # same additions in the same order


def test_roi_align_box_list_and_empty():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 4, 10, 10, generator=g, requires_grad=True)
    boxes = [
        _boxes(g, 3, 40.0),
        _boxes(g, 0, 40.0),
    ]
    boxes = [boxes[0], boxes[1][:0], _boxes(g, 2, 40.0)]
    x3 = torch.randn(3, 4, 10, 10, generator=g)
    got = ops.roi_align(x3, boxes, 3, 0.25, 2, True)
    assert torch.equal(got, torchvision.ops.roi_align(x3, boxes, 3, 0.25, 2, True))
    out = ops.roi_align(x, torch.zeros(0, 5), (2, 3))
    assert out.shape == (0, 4, 2, 3)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.zeros_like(x))


def test_roi_align_rejects_bad_batch_index():
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(RuntimeError, match="batch index"):
        ops.roi_align(x, torch.tensor([[1.0, 0, 0, 2, 2]]), 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_roi_align_reduced_precision_accumulates_in_float(dtype):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 16, 12, 12, generator=g)
    rois = _rois(g, 50, 1, 48.0)
    want = ops.roi_align(x, rois, 4, 0.25, 2, True)
    xl = x.to(dtype).requires_grad_(True)
    got = ops.roi_align(xl, rois, 4, 0.25, 2, True)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
    (gl,) = torch.autograd.grad(got, xl, torch.ones_like(got))
    xf = x.clone().requires_grad_(True)
    (gf,) = torch.autograd.grad(
        ops.roi_align(xf, rois, 4, 0.25, 2, True), xf, torch.ones_like(want)
    )
    torch.testing.assert_close(gl.float(), gf, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_gradcheck(aligned):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    rois = _rois(g, 5, 2, 24.0, torch.float64)

    def fn(inp):
        return ops.roi_align(inp, rois, (3, 2), 0.25, -1, aligned)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


# ---------------------------------------------------------------------------------------------
# paste_masks


def _paste_case(g: torch.Generator, k: int, h: int, w: int, m: int = 28):
    masks = torch.rand(k, m, m, generator=g)
    xy = torch.rand(k, 2, generator=g) * torch.tensor([w, h])
    wh = 1 + torch.rand(k, 2, generator=g) * torch.tensor([w, h]) / 2
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([3.2, 4.7, 3.9, 5.1])  # smaller than a pixel
    boxes[1] = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0])  # the whole image
    boxes[2] = torch.tensor([w - 5.5, h - 7.5, w + 20.0, h + 30.0])  # over the far edges
    boxes[3] = torch.tensor([-6.0, -2.0, 8.0, 9.0])  # over the near edges
    return masks, boxes


@pytest.mark.parametrize("padding", [1, 0, 2])
def test_paste_masks_equals_torchvision(padding):
    g = torch.Generator().manual_seed(11)
    h, w = 61, 83
    masks, boxes = _paste_case(g, 40, h, w)
    got = ops.paste_masks(masks, boxes, h, w, 0.5, padding)
    assert got.dtype == torch.bool and got.shape == (40, h, w)
    want = paste_masks_in_image(masks[:, None], boxes, (h, w), padding)[:, 0] > 0.5
    same = (got == want).flatten(1).all(1)
    inter = (got & want).flatten(1).sum(1).float()
    union = (got | want).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    # Same arithmetic as F.interpolate, so differences can only come from rounding at > 0.5.
    assert same.float().mean() >= 0.9 and iou.min() >= 0.99
    assert torch.equal(got, reference.paste_masks(masks, boxes, h, w, 0.5, padding))


def test_paste_masks_threshold_empty_and_4d():
    g = torch.Generator().manual_seed(12)
    masks, boxes = _paste_case(g, 6, 30, 40)
    for thr in (0.0, 0.9):
        assert torch.equal(
            ops.paste_masks(masks, boxes, 30, 40, thr),
            reference.paste_masks(masks, boxes, 30, 40, thr),
        )
    assert torch.equal(
        ops.paste_masks(masks[:, None], boxes, 30, 40), ops.paste_masks(masks, boxes, 30, 40)
    )
    assert ops.paste_masks(masks[:0], boxes[:0], 30, 40).shape == (0, 30, 40)
    far = torch.tensor([[100.0, 100.0, 120.0, 130.0]])  # entirely outside the image
    assert not ops.paste_masks(masks[:1], far, 30, 40).any()


# ---------------------------------------------------------------------------------------------
# polygons_to_masks


def _polygon_case(g: torch.Generator, n_rois: int):
    coords, poly_offsets, roi_offsets, rois = [], [0], [0], []
    for r in range(n_rois):
        cx, cy = (torch.rand(2, generator=g) * 80 + 20).tolist()
        size = float(torch.rand(1, generator=g) * 30 + 8)
        k = 0 if r == 0 else int(torch.randint(1, 4, (1,), generator=g))  # RoI 0: no polygon
        for p in range(k):
            pts = 2 if (r == 1 and p == 0) else int(torch.randint(3, 12, (1,), generator=g))
            ang = torch.sort(torch.rand(pts, generator=g) * 6.2832)[0]
            rad = size * (0.4 + 0.6 * torch.rand(pts, generator=g))
            ox, oy = ((torch.rand(2, generator=g) - 0.5) * size).tolist()
            poly = torch.stack([cx + ox + rad * torch.cos(ang), cy + oy + rad * torch.sin(ang)], 1)
            coords.append(poly.reshape(-1))
            poly_offsets.append(poly_offsets[-1] + 2 * pts)
        roi_offsets.append(roi_offsets[-1] + k)
        jitter = ((torch.rand(4, generator=g) - 0.5) * size * 0.5).tolist()
        rois.append(
            [
                cx - size + jitter[0],
                cy - size + jitter[1],
                cx + size + jitter[2],
                cy + size + jitter[3],
            ]
        )
    rois[2] = [rois[2][0], rois[2][1], rois[2][0], rois[2][1] + 0.5]  # degenerate RoI
    return (
        torch.cat(coords).float(),
        torch.tensor(poly_offsets),
        torch.tensor(roi_offsets),
        torch.tensor(rois, dtype=torch.float32),
    )


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a * b).flatten(1).sum(1)
    union = ((a + b) > 0).flatten(1).sum(1)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def test_polygons_to_masks_equals_reference_and_edge_cases():
    g = torch.Generator().manual_seed(13)
    args = _polygon_case(g, 60)
    got = ops.polygons_to_masks(*args, 28)
    assert got.dtype == torch.float32 and got.shape == (60, 28, 28)
    assert torch.equal(got, reference.polygons_to_masks(*args, 28))
    assert not got[0].any()  # no polygons
    assert set(got.unique().tolist()) <= {0.0, 1.0}
    square = (
        torch.tensor([2.0, 2, 12, 2, 12, 12, 2, 12]),
        torch.tensor([0, 8]),
        torch.tensor([0, 1]),
        torch.tensor([[0.0, 0, 16, 16]]),
    )
    m = ops.polygons_to_masks(*square, 8)  # pixels 1..5 of 8 (centres 1.5..5.5 in [1, 6])
    want = torch.zeros(8, 8)
    want[1:6, 1:6] = 1
    assert torch.equal(m[0], want)
    assert ops.polygons_to_masks(args[0], args[1], torch.tensor([0]), args[3][:0], 28).shape == (
        0,
        28,
        28,
    )


def _distance_to_edges(points: torch.Tensor, polygons: list[torch.Tensor]) -> torch.Tensor:
    """Distance of each (x, y) point [P, 2] to the nearest edge of the polygons."""
    segs = [torch.stack([p, torch.roll(p, -1, 0)], 1) for p in polygons if p.shape[0] >= 3]
    s = torch.cat(segs).double()
    a, ab = s[:, 0], s[:, 1] - s[:, 0]
    t = ((points[:, None] - a[None]) * ab[None]).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-12)
    foot = a[None] + t.clamp(0, 1)[..., None] * ab[None]
    return (points[:, None] - foot).norm(dim=-1).min(1).values


def test_polygons_to_masks_matches_pycocotools():
    # pycocotools scan-converts at 1/5 pixel, so it can only disagree with pixel-centre sampling
    # on pixels whose centre lies within a fraction of a pixel of the polygon's boundary.
    # Tolerance: every differing pixel centre within 0.5 px of an edge (measured: 0.21), and
    # mean IoU > 0.95 over masks of some area (measured: 0.98; thin slivers are all boundary).
    g = torch.Generator().manual_seed(14)
    args = _polygon_case(g, 80)
    got = ops.polygons_to_masks(*args, 28)
    coco = reference.polygons_to_masks_pycocotools(*args, 28)
    polygons = reference._crop_scale_polygons(*args, 28)
    for r in range(got.shape[0]):
        diff = torch.nonzero(got[r] != coco[r]).double()
        if len(diff):
            centres = diff[:, [1, 0]] + 0.5
            assert _distance_to_edges(centres, polygons[r]).max() < 0.5
    real = coco.flatten(1).sum(1) >= 20
    assert _iou(got, coco)[real].mean() > 0.95


def test_polygons_to_masks_matches_full_image_roi_align():
    # torchvision's way: rasterise the whole instance with pycocotools, then RoIAlign it to MxM
    # and threshold at 0.5. Bilinear resampling blurs edges, so the tolerance is looser:
    # mean IoU > 0.9, every mask with area > 0.7.
    from pycocotools import mask as mask_utils

    g = torch.Generator().manual_seed(15)
    coords, poly_offsets, roi_offsets, rois = _polygon_case(g, 40)
    got = ops.polygons_to_masks(coords, poly_offsets, roi_offsets, rois, 28)
    full = []
    for r in range(rois.shape[0]):
        polys = [
            coords[poly_offsets[p] : poly_offsets[p + 1]].double().tolist()
            for p in range(int(roi_offsets[r]), int(roi_offsets[r + 1]))
            if poly_offsets[p + 1] - poly_offsets[p] >= 6
        ]
        if polys:
            m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, 140, 140)))
        else:
            m = torch.zeros(140, 140).numpy()
        full.append(torch.from_numpy(m).float())
    full = torch.stack(full)[:, None]
    idx = torch.arange(rois.shape[0], dtype=torch.float32)[:, None]
    ra = torchvision.ops.roi_align(full, torch.cat([idx, rois], 1), 28, 1.0, 0, True)[:, 0] > 0.5
    real = (ra.flatten(1).sum(1) >= 20) & ((rois[:, 2] - rois[:, 0]) > 4)
    iou = _iou(got, ra.float())[real]
    assert iou.mean() > 0.9 and iou.min() > 0.7


# ---------------------------------------------------------------------------------------------
# grid_anchors / decode_boxes


def test_grid_anchors_equals_torchvision():
    gen = AnchorGenerator(((32, 64),), ((0.5, 1.0, 2.0),))
    base = gen.cell_anchors[0]
    for h, w, s in ((5, 7, 8), (1, 1, 4), (0, 3, 16)):
        want = gen.grid_anchors([(h, w)], [[torch.tensor(s), torch.tensor(s)]])[0]
        assert torch.equal(ops.grid_anchors(base, h, w, s), want)
        assert torch.equal(reference.grid_anchors(base, h, w, s), want)
    got = ops.grid_anchors(base.double(), 3, 4, (8, 16))
    assert got.dtype == torch.float64
    assert torch.equal(got, reference.grid_anchors(base.double(), 3, 4, (8, 16)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_boxes_equals_torchvision(dtype):
    g = torch.Generator().manual_seed(16)
    boxes = _boxes(g, 300, dtype=dtype)
    boxes[:3, 2:] = boxes[:3, :2]  # zero-size proposals
    deltas = torch.randn(300, 8, generator=g, dtype=dtype)
    deltas[:5, 2:4] = 50.0  # beyond the clamp
    weights = (10.0, 10.0, 5.0, 5.0)
    want = BoxCoder(weights).decode_single(deltas, boxes)
    got = ops.decode_boxes(deltas, boxes, weights)
    # exp() may differ by an ulp between libm and PyTorch's vectorised exp.
    torch.testing.assert_close(got, want, rtol=2e-6 if dtype == torch.float32 else 1e-12, atol=0)
    torch.testing.assert_close(reference.decode_boxes(deltas, boxes, weights), want, rtol=0, atol=0)
    assert ops.decode_boxes(deltas[:0], boxes[:0]).shape == (0, 8)


# ---------------------------------------------------------------------------------------------
# torch.library integration


def _small_inputs():
    g = torch.Generator().manual_seed(17)
    boxes = _boxes(g, 30)
    scores = torch.rand(30, generator=g)
    x = torch.randn(2, 3, 8, 9, generator=g, dtype=torch.float64, requires_grad=True)
    rois = _rois(g, 6, 2, 32.0, torch.float64)
    coords, po, rpo, prois = _polygon_case(g, 5)
    return {
        "nms": (boxes, scores, 0.5),
        "batched_nms": (boxes, scores, torch.randint(0, 3, (30,), generator=g), 0.5),
        "box_iou": (boxes, boxes[:7]),
        "roi_align": (x, rois, 0.5, 3, 2, -1, False),
        "roi_align_backward": (
            torch.randn(6, 3, 3, 2, generator=g, dtype=torch.float64),
            rois,
            0.5,
            3,
            2,
            2,
            3,
            8,
            9,
            2,
            True,
        ),
        "paste_masks": (torch.rand(4, 7, 7, generator=g), _boxes(g, 4, 20.0), 25, 30, 0.5, 1),
        "polygons_to_masks": (coords, po, rpo, prois, 14),
        "grid_anchors": (torch.randn(3, 4, generator=g), 4, 5, 8, 8),
        "decode_boxes": (
            torch.randn(7, 8, generator=g),
            _boxes(g, 7),
            [10.0, 10.0, 5.0, 5.0],
            4.135,
        ),
    }


@compiled
@pytest.mark.parametrize("name", list(_small_inputs()))
def test_opcheck(name):
    args = _small_inputs()[name]
    torch.library.opcheck(getattr(torch.ops.mrcnn, name).default, args)


@compiled
def test_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(18)
    feat = torch.randn(1, 8, 20, 24, generator=g)
    boxes = _boxes(g, 60, size=80.0)
    scores = torch.rand(60, generator=g)

    def head(feat, boxes, scores):
        keep = ops.nms(boxes, scores, 0.5)
        kept = boxes[keep]
        rois = torch.cat([torch.zeros_like(kept[:, :1]), kept], 1)
        return keep, ops.roi_align(feat, rois, 4, 0.25, 2, True) * 2 + 1

    compiled_head = torch.compile(head, fullgraph=True)
    keep, pooled = compiled_head(feat, boxes, scores)
    want_keep, want_pooled = head(feat, boxes, scores)
    assert torch.equal(keep, want_keep)
    torch.testing.assert_close(pooled, want_pooled, rtol=0, atol=0)
