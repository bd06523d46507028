"""RoIAlign in reduced precision: sums in float32 (forward and backward, single and multi-level,
CPU and CUDA), outputs and gradients in the input's dtype, under autocast as torchvision's rule
gives; batch indices validated. CUDA tests skip without a GPU and a CUDA build."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision

import ops

compiled = pytest.mark.skipif(not ops.info()["compiled"], reason="ops._C is not built")
cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and ops.info()["cuda"]), reason="needs a GPU and a CUDA build"
)


def _rois(g: torch.Generator, k: int, batch: int, size: float) -> torch.Tensor:
    xy = torch.rand(k, 2, generator=g) * size * 0.6
    wh = torch.rand(k, 2, generator=g) * size * 0.4 + 1
    idx = torch.randint(0, batch, (k, 1), generator=g).float()
    return torch.cat([idx, xy, xy + wh], 1)


def _crowded(g: torch.Generator, device: str):
    # 3000 RoIs over one small region: every pixel of it sums thousands of gradient terms, far
    # past where a float16 / bfloat16 running sum stops absorbing terms of ~1e-2.
    x = torch.randn(2, 8, 16, 16, generator=g)
    rois = _rois(g, 3000, 2, 24.0)
    return x.to(device), rois.to(device)


def _grad(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    out = fn(x)
    (gx,) = torch.autograd.grad(out, x, torch.ones_like(out))
    return out, gx


def _levels(g: torch.Generator, device: str):
    feats = [torch.randn(2, 8, s, s, generator=g).to(device) for s in (32, 16, 8, 4)]
    rois = _rois(g, 2500, 2, 96.0).to(device)
    return feats, rois


def _multi(feats, rois):
    return ops.multilevel_roi_align(feats, rois, 3, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2, False)


def _check_float32_sums(device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(21)
    x, rois = _crowded(g, device)

    def single(z):
        return ops.roi_align(z, rois, 4, 0.5, 2, True)

    xl = x.to(dtype)
    out_l, grad_l = _grad(single, xl)
    out_f, grad_f = _grad(single, xl.float())  # the same values, summed in float32
    assert out_l.dtype == grad_l.dtype == dtype
    # One rounding of the float32 result, not a low-precision running sum: exactly equal on the
    # CPU; on CUDA atomics add in any order, so within one ulp of `dtype`.
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    tol = {"rtol": 0, "atol": 0} if device == "cpu" else {"rtol": ulp, "atol": 1e-3}
    torch.testing.assert_close(out_l, out_f.to(dtype), **tol)
    torch.testing.assert_close(grad_l, grad_f.to(dtype), **tol)
    assert torch.isfinite(grad_l).all()

    feats, rois = _levels(g, device)
    low = [f.to(dtype).requires_grad_(True) for f in feats]
    full = [f.to(dtype).float().requires_grad_(True) for f in feats]
    out_l, out_f = _multi(low, rois), _multi(full, rois)
    gl = torch.autograd.grad(out_l, low, torch.ones_like(out_l))
    gf = torch.autograd.grad(out_f, full, torch.ones_like(out_f))
    torch.testing.assert_close(out_l, out_f.to(dtype), **tol)
    for a, b in zip(gl, gf):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b.to(dtype), **tol)


@compiled
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_sums_in_float32(dtype):
    _check_float32_sums("cpu", dtype)


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_sums_in_float32(dtype):
    _check_float32_sums("cuda", dtype)


def _autocast_case(device: str, x_dtype, rois_dtype, amp_dtype):
    g = torch.Generator().manual_seed(22)
    x = torch.rand(2, 6, 10, 10, generator=g).to(device, x_dtype)
    rois = torch.tensor([[0, 0, 0, 9, 9], [0, 0, 5, 4, 9], [0, 5, 5, 9, 9], [1, 0, 0, 9, 9]])
    rois = rois.to(device, rois_dtype)
    with torch.autocast(device, dtype=amp_dtype):
        got = ops.roi_align(x, rois, 5, 1.0, -1, False)
        want = torchvision.ops.roi_align(x, rois, 5, 1.0, -1, False)
    # torchvision's autocast rule: computed in float32, returned in the input's dtype.
    assert got.dtype == want.dtype == x_dtype
    torch.testing.assert_close(got, want, rtol=4e-3, atol=4e-3)


@compiled
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rois_dtype", [torch.float32, torch.bfloat16])
def test_cpu_autocast_dtype_rule(x_dtype, rois_dtype):
    _autocast_case("cpu", x_dtype, rois_dtype, torch.bfloat16)


@cuda
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rois_dtype", [torch.float32, torch.float16])
def test_cuda_autocast_dtype_rule(x_dtype, rois_dtype):
    _autocast_case("cuda", x_dtype, rois_dtype, torch.float16)


@compiled
@pytest.mark.parametrize("bad", [-1.0, 2.0, float("nan")])
def test_cpu_refuses_bad_batch_index(bad):
    x = torch.rand(2, 3, 8, 8)
    rois = torch.tensor([[0.0, 0, 0, 4, 4], [bad, 1, 1, 5, 5]])
    with pytest.raises(RuntimeError, match="batch index"):
        ops.roi_align(x, rois, 2)
    with pytest.raises(RuntimeError, match="batch index"):
        ops.multilevel_roi_align([x, x[:, :, ::2, ::2]], rois, 2, [1.0, 0.5])


@cuda
@pytest.mark.parametrize("op", ["roi_align", "multilevel_roi_align", "backward"])
def test_cuda_refuses_bad_batch_index(op):
    # A device-side assert poisons the CUDA context: run it in a child process.
    code = textwrap.dedent(f"""
        import torch, ops
        x = torch.rand(2, 3, 8, 8, device="cuda", requires_grad=True)
        rois = torch.tensor([[0.0, 0, 0, 4, 4], [2.0, 1, 1, 5, 5]], device="cuda")
        if "{op}" == "roi_align":
            y = ops.roi_align(x, rois, 2)
        elif "{op}" == "multilevel_roi_align":
            y = ops.multilevel_roi_align([x, x[:, :, ::2, ::2]], rois, 2, [1.0, 0.5])
        else:
            y = torch.ops.mrcnn.roi_align_backward(
                torch.ones(2, 3, 2, 2, device="cuda"), rois, 1.0, 2, 2, 2, 3, 8, 8, -1, False)
        torch.cuda.synchronize()
        print("NO ERROR")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "NO ERROR" not in res.stdout
    assert res.returncode != 0 and "assert" in res.stderr.lower()


@cuda
def test_cuda_batched_nms_memory_is_bounded_by_segments():
    # 300k boxes in 600 (image, class) groups: one mask over all of them would be ~11 GB.
    g = torch.Generator().manual_seed(23)
    n = 300_000
    xy = torch.rand(n, 2, generator=g) * 800
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60 + 1], 1).cuda()
    scores = torch.rand(n, generator=g).cuda()
    groups = torch.randint(0, 600, (n,), generator=g).cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    keep = ops.batched_nms(boxes, scores, groups, 0.5)
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 256 << 20, f"peak {peak / 2**20:.0f} MiB"
    assert torch.equal(keep.cpu(), ops.batched_nms(boxes.cpu(), scores.cpu(), groups.cpu(), 0.5))
