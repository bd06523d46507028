"""Fast-path switches give the same results as the plain model on the CPU, and every mode gets the
same switches from one decision (`mrcnn.build.fast_paths`)."""

import copy

import pytest
import torch

from configs import shapes
from mrcnn.modeling import build_model
from mrcnn.build.fast_paths import apply, fast_paths
from mrcnn.structures import ImageBatch


def _tiny():
    c = shapes.get_config("runlocal")
    c.model.backbone.width = 8
    c.model.backbone.fpn_channels = 16
    c.model.box_head.fc_dim = 32
    c.model.mask_head.conv_dim = 8
    c.model.mask_head.num_conv = 1
    return c


def _images():
    g = torch.Generator().manual_seed(0)
    return ImageBatch(torch.randn(2, 3, 64, 64, generator=g), [(64, 64), (64, 48)])


@pytest.mark.parametrize("switch", ["channels_last", "compile"])
def test_switch_keeps_backbone_features_and_state_dict_keys(switch):
    c = _tiny()
    torch.manual_seed(0)
    ref = build_model(c.model).eval()
    fast = copy.deepcopy(ref)
    c.perf[switch] = True
    apply(fast, fast_paths(c, "cpu", "eval"))
    assert fast.state_dict().keys() == ref.state_dict().keys()
    x = _images().tensor
    if switch == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a = ref.backbone(_images().tensor)
        b = fast.backbone(x)
    for fa, fb in zip(a, b):
        torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-4)


def test_bfloat16_autocast_inference_runs_and_is_close_in_boxes():
    c = _tiny()
    torch.manual_seed(0)
    model = build_model(c.model).eval()
    with torch.no_grad():
        ref = model(_images())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(_images())
    assert len(out) == len(ref)
    for d in out:
        assert d.boxes.dtype == torch.float32 or d.boxes.dtype == torch.bfloat16
        assert torch.isfinite(d.boxes.float()).all()
