"""Inductor on the mask branch of the exported program, in small: the AOTInductor package's
masks differed from eager (IoU ~0.75, every mask) while its boxes and scores matched.

The mask head's batch is the number of detections, a data-dependent (unbacked) size. Inductor's
layout optimisation gave its convolutions channels_last inputs; for a tensor with an unbacked
size it cannot decide the memory format the convolution returns, planned the next kernels for
a contiguous output, and the convolution returned channels_last. torch.compile's Python wrapper
catches that (an assert_size_stride error); the AOTInductor package checks no strides and read
scrambled features. mrcnn.export.aoti.INDUCTOR_CONFIGS turns the layout optimisation off; without
it both tests fail (the package's probabilities were off by up to 0.8).

And a bfloat16 program's rounding: aoti.BFLOAT16_CONFIGS make Inductor round where eager does.
"""

import os

import torch

from mrcnn.export import aoti
from mrcnn.modeling.mask_head import MaskHead, MaskPredictor


class MaskBranch(torch.nn.Module):
    """The exported program's mask branch at the shapes tiny model's sizes: RoI features of the
    kept detections -> per-detection mask probabilities [R, 28, 28]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = MaskHead(32, 4, 16)
        self.predictor = MaskPredictor(16, 16, 4)

    def forward(self, feats, labels, keep):
        idx = torch.nonzero(keep).squeeze(1)  # an unbacked number of RoIs, like the detections
        return self.predictor(self.head(feats[idx]), labels[idx]).sigmoid()


def _inputs(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn((n, 32, 14, 14), generator=g)
    labels = torch.randint(1, 4, (n,), generator=g)
    keep = torch.rand((n,), generator=g) > 0.3
    return feats, labels, keep


def test_inductor_mask_branch_with_unbacked_batch_matches_eager():
    branch = MaskBranch().eval()
    args = _inputs()
    torch._dynamo.reset()
    with torch.no_grad(), torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        want = branch(*args)
        got = torch.compile(branch, dynamic=True, fullgraph=True,
                            options=dict(aoti.INDUCTOR_CONFIGS))(*args)
    torch._dynamo.reset()
    # Only the float summation order may differ; scrambled features are off by ~0.5.
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# About 10 s (a 4-convolution graph), 35 s for the file without Inductor's caches: not slow.
def test_aoti_package_of_the_mask_branch_matches_eager(tmp_path):
    branch = MaskBranch().eval()
    args = _inputs()
    with torch.no_grad():
        n = torch.export.Dim("n", min=2, max=64)
        dims = {"feats": {0: n}, "labels": {0: n}, "keep": {0: n}}
        ep = torch.export.export(branch, args, dynamic_shapes=dims, strict=False)
        path = aoti.compile_package(ep, os.path.join(tmp_path, "branch.pt2"))
        run = aoti.load_package(path)
        for n, seed in ((12, 2), (5, 3)):  # another number of RoIs than the traced one
            a = _inputs(n, seed)
            out = run(*a)  # the runner returns one output as itself, several as a list
            out = out[0] if isinstance(out, (list, tuple)) else out
            torch.testing.assert_close(out, branch(*a), rtol=0, atol=1e-5)


class Bf16Block(torch.nn.Module):
    """conv -> FrozenBN -> ReLU -> conv under bf16 autocast, as a backbone block runs in a
    DeployModel(dtype="bfloat16"): eager rounds the conv's, the scale's and the shift's outputs
    to bf16 one by one, where Inductor fuses the norm into one float32 kernel."""

    def __init__(self):
        super().__init__()
        from mrcnn.modeling.norm import FrozenBatchNorm2d

        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.norm = FrozenBatchNorm2d(32)
        self.norm.weight.uniform_(0.5, 2.0)
        self.norm.bias.uniform_(-1.0, 1.0)
        self.conv2 = torch.nn.Conv2d(32, 8, 3, padding=1)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = self.conv2(torch.relu(self.norm(self.conv1(x))))
        return y.float()


def test_bfloat16_package_rounds_where_eager_rounds(tmp_path):
    """A bfloat16 package (aoti.BFLOAT16_CONFIGS) equals the eager bf16 block; compiled with
    Inductor's float32 intermediates it does not (on the tiny model's whole program: boxes and
    scores equal with them, 48 px and 8.9e-3 off without)."""
    block = Bf16Block().eval()
    x = torch.randn((2, 16, 24, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        b = torch.export.Dim("b", min=1, max=8)
        ep = torch.export.export(block, (x,), dynamic_shapes={"x": {0: b}}, strict=False)
        want = block(x)
        err = {}
        for dtype in ("bfloat16", "float32"):
            path = aoti.compile_package(ep, os.path.join(tmp_path, f"{dtype}.pt2"), dtype)
            out = aoti.load_package(path)(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            err[dtype] = (out - want).abs().max().item()
    assert err["bfloat16"] == 0.0  # measured: bit for bit
    assert err["float32"] > 1e-3  # one bf16 rounding step apart
