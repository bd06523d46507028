"""`ops` where torchvision's own test-suite found it differing: dtypes and empty shapes of
box_iou / nms / batched_nms / roi_align, AssertionError on malformed boxes, torch.fx leaf,
TorchScript. Each case is compared with torchvision.ops on the same inputs."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

import ops

compiled = pytest.mark.skipif(not ops.info()["compiled"], reason="ops._C is not built")


def _boxes(g: torch.Generator, n: int, size: float) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * size
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * size / 2 + 1], 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_box_iou_half_precision_computes_in_float32(dtype):
    # Boxes over ~256 x 256 px: their areas overflow float16 (max 65504) and were NaN here.
    g = torch.Generator().manual_seed(0)
    a, b = _boxes(g, 20, 900.0).to(dtype), _boxes(g, 30, 900.0).to(dtype)
    got = ops.box_iou(a, b)
    want = torchvision.ops.box_iou(a, b)
    assert got.dtype == want.dtype == torch.float32
    assert torch.isfinite(got).all()
    # torchvision rounds the corner differences to `dtype` before upcasting; we upcast first.
    torch.testing.assert_close(got, want, rtol=0, atol=1e-2)
    torch.testing.assert_close(got, ops.box_iou(a.float(), b.float()), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int64])
def test_box_iou_integer_boxes(dtype):
    g = torch.Generator().manual_seed(1)
    a = _boxes(g, 15, 200.0).round().to(dtype)
    b = _boxes(g, 9, 200.0).round().to(dtype)
    a[0] = b[0]  # identical pair: IoU exactly 1
    got = ops.box_iou(a, b)
    want = torchvision.ops.box_iou(a, b)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert got[0, 0] == 1.0


def test_box_iou_mixed_dtypes_and_float64():
    a = torch.tensor([[0, 0, 4, 4]])
    b = torch.tensor([[2.0, 2.0, 6.0, 6.0]], dtype=torch.float64)
    assert ops.box_iou(a, b).dtype == torchvision.ops.box_iou(a, b).dtype == torch.float64
    assert ops.box_iou(a, b).item() == pytest.approx(4 / 28)


EMPTY_SHAPES = [(0, 4), (0,), (0, 5), (4, 0), (0, 0)]


def _outcome(fn):
    try:
        out = fn()
    except (RuntimeError, IndexError, AssertionError, TypeError):
        return "error"
    return (tuple(out.shape), out.dtype)


@pytest.mark.parametrize("shape", EMPTY_SHAPES)
def test_empty_shapes_as_torchvision(shape):
    # Accepted where torchvision accepts them, with its shapes and dtypes; refused where it
    # refuses (the error classes may differ).
    boxes = torch.empty(shape)
    scores = torch.empty(shape[:1])
    idxs = torch.empty(shape[:1], dtype=torch.int64)
    other = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3]])
    calls = [
        lambda m: m.nms(boxes, scores, 0.5),
        lambda m: m.batched_nms(boxes, scores, idxs, 0.5),
        lambda m: m.box_iou(boxes, other),
        lambda m: m.box_iou(other, boxes),
        lambda m: m.box_iou(boxes, boxes),
    ]
    for call in calls:
        assert _outcome(lambda: call(ops)) == _outcome(lambda: call(torchvision.ops))


def test_batched_nms_empty_ignores_other_arguments():
    # torchvision's own test: batched_nms(empty, None, None, None) -> empty int64.
    got = ops.batched_nms(torch.empty((0,)), None, None, None)
    assert got.dtype == torch.int64 and got.shape == (0,)


def test_roi_align_empty_inputs_as_torchvision():
    x = torch.rand(2, 3, 8, 8)
    one = torch.tensor([[0.0, 0, 0, 4, 4]])
    cases = [
        (x, torch.empty(0, 5)),
        (x, [torch.empty(0, 4), torch.empty(0, 4)]),
        (torch.empty(0, 3, 8, 8), torch.empty(0, 5)),
        (torch.empty(2, 0, 8, 8), one),
    ]
    for inp, rois in cases:
        got = ops.roi_align(inp, rois, (2, 3))
        want = torchvision.ops.roi_align(inp, rois, (2, 3))
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want)
    # A zero-height map (torchvision's CPU kernel crashes the process here): zeros.
    assert torch.equal(ops.roi_align(torch.empty(2, 3, 0, 8), one, 2), torch.zeros(1, 3, 2, 2))


def test_roi_align_malformed_boxes_raise_assertion_error():
    a = torch.rand(1, 1, 8, 8)
    with pytest.raises(AssertionError):
        ops.roi_align(a, torch.tensor([[0.0, 0, 3, 3]]), (2, 2))  # a [K, 4] tensor
    with pytest.raises(AssertionError):
        ops.roi_align(a, [torch.tensor([[0.0, 0, 3]])], (2, 2))  # a list of [L, 3]


class _Pool(torch.nn.Module):
    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return ops.roi_align(x, rois, 2, 0.5, 2, False)


@compiled
def test_roi_align_is_a_torch_fx_leaf():
    gm = torch.fx.symbolic_trace(_Pool())
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert len(calls) == 1 and calls[0].target is ops.roi_align
    x, rois = torch.rand(2, 3, 8, 8), torch.tensor([[1.0, 0, 0, 9, 9], [0, 2, 2, 6, 6]])
    assert torch.equal(gm(x, rois), _Pool()(x, rois))


@compiled
def test_torchscript_of_roi_align_box_iou_nms():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated
        roi_align = torch.jit.script(ops.roi_align)
        box_iou = torch.jit.script(ops.box_iou)
        nms = torch.jit.script(ops.nms)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 4, 10, 10, generator=g)
    b = _boxes(g, 6, 8.0)
    rois = torch.cat([torch.tensor([0.0, 1, 0, 1, 0, 1])[:, None], b], 1)
    assert torch.equal(roi_align(x, rois, [3, 3], 1.0, -1, False), ops.roi_align(x, rois, 3))
    assert torch.equal(roi_align(x, [b[:2], b[2:]], [3, 3], 1.0, 2, True),
                       ops.roi_align(x, [b[:2], b[2:]], 3, 1.0, 2, True))
    ib = b.round().to(torch.int32)
    assert torch.equal(box_iou(ib, ib), ops.box_iou(ib, ib))
    s = torch.rand(6, generator=g)
    assert torch.equal(nms(b, s, 0.3), torchvision.ops.nms(b, s, 0.3))
