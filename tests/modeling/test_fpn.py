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
