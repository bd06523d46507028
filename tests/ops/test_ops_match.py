"""ops.match_boxes and ops.encode_boxes (CPU) against the Python paths they replace.

match_boxes must equal mrcnn.modeling.matcher.match on targets._quality (the IoU matrix of
boxes.pairwise_iou with padded gt rows at -1) exactly, and encode_boxes must equal
box_coder's / torchvision's BoxCoder encode exactly. Inputs are drawn fresh from seeded
generators on a coarse grid, so IoUs tie often (also at 0 and at the thresholds), gts repeat,
boxes are degenerate (zero width or height: 0/0 IoUs are NaN) and gt rows are padded.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

import ops
from mrcnn.modeling import box_coder, targets
from mrcnn.modeling.matcher import match
from mrcnn.modeling.targets import PaddedGT, _quality
from ops import reference

pytestmark = pytest.mark.skipif(not ops.info()["compiled"], reason="ops._C is not built")

THRESHOLDS = [(0.7, 0.3), (0.5, 0.5), (0.5, 0.25), (0.0, 0.0), (1.0, 0.0)]


def _grid_boxes(g: torch.Generator, shape: tuple[int, ...], cells: int = 6, step: float = 4.0):
    """xyxy boxes with corners and sides on a coarse grid; sides may be 0 (degenerate)."""
    xy = torch.randint(0, cells, shape + (2,), generator=g).float() * step
    wh = torch.randint(0, cells, shape + (2,), generator=g).float() * step
    return torch.cat([xy, xy + wh], -1)


def _case(g: torch.Generator, b: int, m: int, n: int, shared: bool):
    gt_boxes = _grid_boxes(g, (b, m))
    if m > 1:  # duplicated gts: equal IoUs, where the lowest index must win
        gt_boxes[:, m // 2 :] = gt_boxes[:, : m - m // 2].clone()
    gt_valid = torch.rand(b, m, generator=g) < 0.75
    boxes = _grid_boxes(g, (n,) if shared else (b, n))
    return gt_boxes, gt_valid, boxes


def _python(gt_boxes, gt_valid, boxes, high, low, allow):
    gt = PaddedGT(gt_boxes, torch.zeros(gt_valid.shape, dtype=torch.int64), gt_valid)
    return match(_quality(gt, boxes), high, low, allow, gt_valid=gt_valid)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_match_equals_python_path(shared, allow, seed):
    g = torch.Generator().manual_seed(seed)
    nan_seen = low_quality_seen = 0
    for trial in range(25):
        b = int(torch.randint(1, 4, (1,), generator=g))
        m = int(torch.randint(0, 7, (1,), generator=g)) if trial else 0
        n = int(torch.randint(0, 600, (1,), generator=g)) if trial != 1 else 0
        gt_boxes, gt_valid, boxes = _case(g, b, m, n, shared)
        for high, low in THRESHOLDS:
            want = _python(gt_boxes, gt_valid, boxes, high, low, allow)
            got = ops.match_boxes(gt_boxes, gt_valid, boxes, high, low, allow)
            assert got.dtype == torch.int64 and got.shape == (b, n)
            assert torch.equal(got, want), (trial, b, m, n, high, low)
            assert torch.equal(
                reference.match_boxes(gt_boxes, gt_valid, boxes, high, low, allow), want
            )
            if allow:
                plain = _python(gt_boxes, gt_valid, boxes, high, low, False)
                low_quality_seen += int((plain != want).sum())
        if m and n:
            gt = PaddedGT(gt_boxes, torch.zeros(b, m, dtype=torch.int64), gt_valid)
            nan_seen += int(torch.isnan(_quality(gt, boxes)).sum())
    # The cases do exercise what they are meant to.
    assert nan_seen > 0
    assert low_quality_seen > 0 or not allow


def test_match_empty_and_all_padded():
    g = torch.Generator().manual_seed(10)
    boxes = _grid_boxes(g, (50,))
    for m in (0, 3):
        gt_valid = torch.zeros(2, m, dtype=torch.bool)  # no valid gt at all
        out = ops.match_boxes(_grid_boxes(g, (2, m)), gt_valid, boxes, 0.7, 0.3, True)
        assert torch.equal(out, torch.full((2, 50), -1))
    out = ops.match_boxes(_grid_boxes(g, (2, 3)), torch.ones(2, 3, dtype=torch.bool),
                          boxes[:0], 0.7, 0.3, True)
    assert out.shape == (2, 0) and out.dtype == torch.int64
    out = ops.match_boxes(torch.zeros(0, 3, 4), torch.zeros(0, 3, dtype=torch.bool), boxes,
                          0.7, 0.3, True)
    assert out.shape == (0, 50)


def test_match_hand_made_case():
    # gt 0 and gt 1 identical, gt 2 padding; IoUs with gt 0: 1, 0.25, 0 (disjoint), 0.5.
    gt_boxes = torch.tensor([[[0.0, 0, 4, 4], [0, 0, 4, 4], [0, 0, 4, 4]]])
    gt_valid = torch.tensor([[True, True, False]])
    boxes = torch.tensor([[0.0, 0, 4, 4], [0, 0, 2, 2], [8, 8, 9, 9], [0, 0, 4, 2]])
    assert ops.match_boxes(gt_boxes, gt_valid, boxes, 0.5, 0.3, False).tolist() == [[0, -1, -1, 0]]
    assert ops.match_boxes(gt_boxes, gt_valid, boxes, 0.6, 0.25, False).tolist() == [
        [0, -2, -1, -2]
    ]
    # Low quality: only box 0 attains gt 0's (and gt 1's) highest IoU.
    assert ops.match_boxes(gt_boxes, gt_valid, boxes, 1.0, 1.0, True).tolist() == [
        [0, -1, -1, -1]
    ]
    # A gt that overlaps nothing has highest IoU 0: every box at 0 becomes a low-quality match.
    far = torch.tensor([[[100.0, 100, 104, 104]]])
    out = ops.match_boxes(far, torch.tensor([[True]]), boxes, 0.7, 0.3, True)
    assert out.tolist() == [[0, 0, 0, 0]]
    assert ops.match_boxes(far, torch.tensor([[True]]), boxes, 0.7, 0.3, False).tolist() == [
        [-1, -1, -1, -1]
    ]


def test_match_anchor_scale():
    # RPN-sized problem: ~20k anchors of real sizes, a few gts, two images, one padded.
    g = torch.Generator().manual_seed(11)
    xy = torch.rand(20000, 2, generator=g) * 600
    anchors = torch.cat([xy, xy + 16 + torch.rand(20000, 2, generator=g) * 200], 1)
    gxy = torch.rand(2, 9, 2, generator=g) * 500
    gt_boxes = torch.cat([gxy, gxy + 10 + torch.rand(2, 9, 2, generator=g) * 150], -1)
    gt_valid = torch.ones(2, 9, dtype=torch.bool)
    gt_valid[1, 5:] = False
    for allow in (False, True):
        want = _python(gt_boxes, gt_valid, anchors, 0.7, 0.3, allow)
        assert torch.equal(ops.match_boxes(gt_boxes, gt_valid, anchors, 0.7, 0.3, allow), want)
    assert (want >= 0).any() and (want == -2).any() and (want == -1).any()


def test_match_many_gts_and_strided_inputs():
    g = torch.Generator().manual_seed(13)
    xy = torch.rand(2, 1800, 2, generator=g) * 200
    boxes_all = torch.cat([xy, xy + 4 + torch.rand(2, 1800, 2, generator=g) * 40], -1)
    gt_boxes, boxes = boxes_all[:, :300].clone(), boxes_all[:, 300:]
    gt_boxes[:, 290:] = gt_boxes[:, 270:280]  # a few duplicates
    gt_valid = torch.ones(2, 300, dtype=torch.bool)
    gt_valid[:, 10:20] = False
    # Non-contiguous views: every other box, gt coordinates through a transpose.
    boxes_view = boxes[:, ::2]
    gt_view = gt_boxes.transpose(0, 1).contiguous().transpose(0, 1)
    assert not boxes_view.is_contiguous() and not gt_view.is_contiguous()
    for allow in (False, True):
        want = _python(gt_boxes, gt_valid, boxes_view.contiguous(), 0.5, 0.4, allow)
        assert torch.equal(ops.match_boxes(gt_view, gt_valid, boxes_view, 0.5, 0.4, allow), want)
        assert (want > 255).any()  # indices beyond the first 256 gts occur


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_match_other_dtypes(dtype):
    g = torch.Generator().manual_seed(12)
    for shared in (True, False):
        gt_boxes, gt_valid, boxes = _case(g, 2, 5, 300, shared)
        gt_boxes = gt_boxes + torch.rand(gt_boxes.shape, generator=g)  # off-grid rounding
        gt_boxes, boxes = gt_boxes.to(dtype), boxes.to(dtype)
        for allow in (False, True):
            want = _python(gt_boxes, gt_valid, boxes, 0.7, 0.3, allow)
            assert torch.equal(ops.match_boxes(gt_boxes, gt_valid, boxes, 0.7, 0.3, allow), want)


def test_match_thresholds_compare_in_tensor_dtype():
    # IoU = 0.7 rounded to float32 (just below 0.7): torch compares float32 tensors with a
    # Python float in float32, so this counts as >= 0.7.
    iou = torch.tensor(0.7, dtype=torch.float32)
    assert float(iou) < 0.7
    gt_boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    boxes = torch.tensor([[0.0, 0.0, 1.0, float(iou)]])  # IoU = height = float32(0.7)
    want = _python(gt_boxes, torch.tensor([[True]]), boxes, 0.7, 0.3, False)
    assert want.tolist() == [[0]]
    assert ops.match_boxes(gt_boxes, torch.tensor([[True]]), boxes, 0.7, 0.3, False).tolist() == [
        [0]
    ]


def test_match_bad_input():
    gt, valid, boxes = torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.zeros(5, 4)
    op = torch.ops.mrcnn.match_boxes
    with pytest.raises(RuntimeError, match="gt_boxes must be"):
        op(gt[0], valid, boxes, 0.7, 0.3, False)
    with pytest.raises(RuntimeError, match="gt_valid must be \\[B, M\\]"):
        op(gt, valid[:, :2], boxes, 0.7, 0.3, False)
    with pytest.raises(RuntimeError, match="gt_valid must be bool"):
        op(gt, valid.int(), boxes, 0.7, 0.3, False)
    with pytest.raises(RuntimeError, match="boxes must be"):
        op(gt, valid, torch.zeros(5, 5), 0.7, 0.3, False)
    with pytest.raises(RuntimeError, match="must have B = 2"):
        op(gt, valid, torch.zeros(3, 5, 4), 0.7, 0.3, False)
    with pytest.raises(RuntimeError, match="dtypes differ"):
        op(gt, valid, boxes.double(), 0.7, 0.3, False)
    with pytest.raises(RuntimeError, match="low_threshold 0.8 > high_threshold 0.7"):
        op(gt, valid, boxes, 0.7, 0.8, False)


def _encode_case(g: torch.Generator, n: int, dtype=torch.float32):
    t = torch.rand(n, 4, generator=g) * 300
    t[:, 2:] += t[:, :2] + torch.rand(n, 2, generator=g) * 200
    r = torch.rand(n, 4, generator=g) * 300
    r[:, 2:] += r[:, :2] + torch.rand(n, 2, generator=g) * 200
    r[:5, 2] = r[:5, 0]  # zero-width references: inf / NaN, as in Python
    t[5:10, 3] = t[5:10, 1]  # zero-height targets: log(0) = -inf
    return t.to(dtype), r.to(dtype)


@pytest.mark.parametrize(
    "weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (0.3, 1.7, 2.5, 0.1)]
)
def test_encode_equals_torchvision(weights):
    g = torch.Generator().manual_seed(20)
    t, r = _encode_case(g, 50000)
    want = BoxCoder(weights).encode_single(t, r)
    got = ops.encode_boxes(t, r, weights)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())  # bit for bit, inf included
    assert torch.equal(reference.encode_boxes(t, r, weights).nan_to_num(), want.nan_to_num())
    # The model's path (box_coder.encode, which calls the op) on [B, N, 4] too.
    ref = BoxCoder(weights).encode_single(t[:40000], r[:40000]).reshape(2, 20000, 4)
    assert torch.equal(box_coder.encode(t[:40000].reshape(2, -1, 4), r[:40000].reshape(2, -1, 4),
                                        weights).nan_to_num(), ref.nan_to_num())
    assert ops.encode_boxes(t[:0], r[:0], weights).shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_encode_other_dtypes(dtype):
    g = torch.Generator().manual_seed(21)
    t, r = _encode_case(g, 3000, dtype)
    want = reference.encode_boxes(t, r, (10.0, 10.0, 5.0, 5.0))
    got = ops.encode_boxes(t, r, (10.0, 10.0, 5.0, 5.0))
    assert got.dtype == dtype
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_encode_bad_input():
    op = torch.ops.mrcnn.encode_boxes
    t = torch.rand(4, 4)
    with pytest.raises(RuntimeError, match="targets must be \\[N, 4\\]"):
        op(t[:, :3], t[:, :3], [1.0] * 4)
    with pytest.raises(RuntimeError, match="reference must be \\[N, 4\\]"):
        op(t, t[:3], [1.0] * 4)
    with pytest.raises(RuntimeError, match="dtypes differ"):
        op(t, t.double(), [1.0] * 4)
    with pytest.raises(RuntimeError, match="weights must have 4 values"):
        op(t, t, [1.0] * 3)
    with pytest.raises(RuntimeError, match="floating point"):
        op(t.long(), t.long(), [1.0] * 4)


def test_opcheck():
    g = torch.Generator().manual_seed(30)
    gt_boxes, gt_valid, boxes = _case(g, 2, 4, 40, shared=True)
    _, _, batched = _case(g, 2, 4, 40, shared=False)
    for b in (boxes, batched):
        for allow in (False, True):
            torch.library.opcheck(
                torch.ops.mrcnn.match_boxes.default, (gt_boxes, gt_valid, b, 0.7, 0.3, allow)
            )
    t, r = _encode_case(g, 30)
    torch.library.opcheck(torch.ops.mrcnn.encode_boxes.default, (t, r, [10.0, 10.0, 5.0, 5.0]))


def test_model_targets_equal_python_path(monkeypatch):
    # rpn_targets / roi_targets with the kernels vs with ops.reference's matcher and encoder
    # (the path taken without compiled kernels for the device).
    g = torch.Generator().manual_seed(40)
    xy = torch.rand(3000, 2, generator=g) * 200
    anchors = torch.cat([xy, xy + 8 + torch.rand(3000, 2, generator=g) * 60], 1)
    gxy = torch.rand(3, 6, 2, generator=g) * 180
    gt = PaddedGT(
        torch.cat([gxy, gxy + 4 + torch.rand(3, 6, 2, generator=g) * 50], -1),
        torch.randint(1, 5, (3, 6), generator=g),
        torch.rand(3, 6, generator=g) < 0.7,
    )
    gt.valid[:, 0] = True
    props = anchors[torch.randint(0, 3000, (3, 500), generator=g)]
    props_valid = torch.rand(3, 500, generator=g) < 0.9

    def run():
        rpn = targets.rpn_targets(anchors, gt, 0.7, 0.3, (1.0, 1.0, 1.0, 1.0))
        roi = targets.roi_targets(props, props_valid, gt, 0.5, 0.5, 10**6, 0.25,
                                  (10.0, 10.0, 5.0, 5.0))
        return rpn, roi

    (labels, reg), roi = run()
    # Without kernels for the device: ops falls back to ops.reference (one image at a time).
    monkeypatch.setattr(ops, "_native", lambda *tensors: False)
    (labels_py, reg_py), roi_py = run()
    assert torch.equal(labels, labels_py) and (labels == 1).any()
    pos = labels == 1
    assert torch.equal(reg[pos], reg_py[pos])
    for f in ("boxes", "batch_idx", "labels", "matched_gt", "regression_targets"):
        assert torch.equal(getattr(roi, f), getattr(roi_py, f)), f


def test_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(50)
    gt_boxes, gt_valid, boxes = _case(g, 2, 4, 200, shared=True)
    t, r = _encode_case(g, 200)

    def step(gt_boxes, gt_valid, boxes, t, r):
        matched = ops.match_boxes(gt_boxes, gt_valid, boxes, 0.7, 0.3, True)
        return matched.clamp(min=0), ops.encode_boxes(t, r, (10.0, 10.0, 5.0, 5.0)) * 2

    got = torch.compile(step, fullgraph=True)(gt_boxes, gt_valid, boxes, t, r)
    want = step(gt_boxes, gt_valid, boxes, t, r)
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1].nan_to_num(), want[1].nan_to_num())
