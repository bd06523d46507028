"""The FPN against torchvision's FeaturePyramidNetwork with LastLevelMaxPool."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from mrcnn.modeling.fpn import FPN


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


def test_p6_slice_equals_torchvision_pooling_with_gradients_for_either_parity():
    """P6 = P5[..., ::2, ::2] (ours) vs max_pool2d(P5, 1, 2) (torchvision): same values, size
    and gradient for P5 sides odd or even, NCHW or channels_last."""
    pool = LastLevelMaxPool()
    g = torch.Generator().manual_seed(1)
    for h, w in ((5, 7), (4, 8), (5, 8), (1, 1)):
        for cl in (False, True):
            p5 = torch.randn(2, 3, h, w, generator=g)
            if cl:
                p5 = p5.contiguous(memory_format=torch.channels_last)
            a, b = p5.clone().requires_grad_(), p5.clone().requires_grad_()
            ours = FPN([3], 3)  # lateral and output convs set to the identity: out P5 = in
            ours.lateral[0].conv.weight.data.copy_(torch.eye(3).reshape(3, 3, 1, 1))
            ours.lateral[0].conv.bias.data.zero_()
            ours.output[0].conv.weight.data.zero_()
            ours.output[0].conv.weight.data[:, :, 1, 1] = torch.eye(3)
            ours.output[0].conv.bias.data.zero_()
            p6 = ours([a])[-1]
            levels, _ = pool([b], [b], ["p5"])  # [P5, P6]
            want = levels[-1]
            assert p6.shape == want.shape and torch.equal(p6, want)
            weight = torch.randn(want.shape, generator=g)
            (p6 * weight).sum().backward()
            (want * weight).sum().backward()
            assert torch.equal(a.grad, b.grad)
