"""Anchors against torchvision's AnchorGenerator; the anchor cache."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from mrcnn.modeling.anchors import AnchorCache


def _grids(h: int, w: int) -> list[tuple[int, int]]:
    """Feature sizes of P2..P6 for a padded h x w batch (P6 = ceil(P5 / 2))."""
    sizes = [(-(-h // s), -(-w // s)) for s in (4, 8, 16, 32)]
    sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    return sizes


@pytest.mark.parametrize("hw", [(800, 1216), (320, 416), (96, 64)])
def test_anchors_equal_torchvision(hw):
    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    ours = AnchorCache([(s,) for s in sizes], ratios)(hw, _grids(*hw), torch.device("cpu"))
    tv = AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * 5)
    feats = [torch.zeros(1, 1, *g) for g in _grids(*hw)]
    expected = tv(ImageList(torch.zeros(1, 3, *hw), [hw]), feats)[0]
    assert torch.equal(torch.cat(ours), expected)


def test_anchor_cache_reuses_and_is_bounded():
    cache = AnchorCache([(32,)], (1.0,), max_entries=2)
    a = cache((64, 64), [(16, 16)], torch.device("cpu"))
    assert cache((64, 64), [(16, 16)], torch.device("cpu")) is a
    cache((64, 96), [(16, 24)], torch.device("cpu"))
    cache((96, 96), [(24, 24)], torch.device("cpu"))
    assert len(cache._cache) == 2
    with torch.inference_mode():
        b = cache((32, 32), [(8, 8)], torch.device("cpu"))
    assert not b[0].is_inference()  # usable by a later training step
