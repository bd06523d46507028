"""Inductor on the mask branch of the exported program, in small: the AOTInductor package's
masks differed from eager (IoU ~0.75, every mask) while its boxes and scores matched.

The mask head's batch is the number of detections, a data-dependent (unbacked) size. Inductor's
layout optimisation gave its convolutions channels_last inputs; for a tensor with an unbacked
size it cannot decide the memory format the convolution returns, planned the next kernels for
a contiguous output, and the convolution returned channels_last. torch.compile's Python wrapper
catches that (an assert_size_stride error); the AOTInductor package checks no strides and read
scrambled features. mrcnn.export.aoti.INDUCTOR_CONFIGS turns the layout optimisation off; without
it both tests fail (the package's probabilities were off by up to 0.8).
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
