"""box_coder.encode / decode against torchvision's BoxCoder, round trip and the size clamp."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils

from mrcnn.modeling import box_coder


def random_boxes(n: int, size: float, g: torch.Generator, min_side: float = 2.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = torch.rand(n, 2, generator=g) * size * 0.5 + min_side
    return torch.cat([xy, xy + wh], dim=1)


def test_box_coder_equals_torchvision_and_roundtrips():
    g = torch.Generator().manual_seed(0)
    ref = random_boxes(200, 300, g)
    tgt = random_boxes(200, 300, g)
    w = (10.0, 10.0, 5.0, 5.0)
    tv = tv_utils.BoxCoder(w)
    enc = box_coder.encode(tgt, ref, w)
    assert torch.equal(enc, tv.encode_single(tgt, ref))
    deltas = torch.randn(200, 3 * 4, generator=g)
    assert torch.equal(box_coder.decode(deltas, ref, w), tv.decode_single(deltas, ref))
    torch.testing.assert_close(box_coder.decode(enc, ref, w), tgt, rtol=0, atol=1e-3)
    # the clamp keeps huge predicted sizes finite
    huge = torch.tensor([[0.0, 0.0, 1e4, 1e4]])
    out = box_coder.decode(huge, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), (1, 1, 1, 1))
    assert torch.isfinite(out).all()
    assert out[0, 2] - out[0, 0] == pytest.approx(10 * 1000 / 16, rel=1e-4)
