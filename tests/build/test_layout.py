"""perf.train_layout: the layout of the convolutions under autograd, decided by a timing."""

from __future__ import annotations

import pytest
import torch

from configs import shapes
from mrcnn.build import layout, onednn
from mrcnn.build.fast_paths import apply, fast_paths
from mrcnn.modeling.mask_rcnn import MaskRCNN


def _cfg():
    c = shapes.get_config("tiny")
    c.perf.channels_last, c.perf.onednn = True, True
    return c


def test_auto_takes_nchw_only_when_it_is_10_percent_faster(monkeypatch):
    t = {}
    monkeypatch.setattr(layout, "timings", lambda channels: t[channels])
    t[64] = (0.30, 0.20)  # NCHW 33% faster
    assert layout.train_channels_last("auto", "cpu", "float32", True, 64) is False
    t[64] = (0.30, 0.28)  # within the margin: channels_last
    assert layout.train_channels_last("auto", "cpu", "float32", True, 64) is True
    t[64] = (0.20, 0.30)
    assert layout.train_channels_last("auto", "cpu", "float32", True, 64) is True
    t[64] = (0.30, 0.20)
    # Not timed: CUDA, bfloat16 autocast, deterministic runs; forced settings; NHWC off.
    assert layout.train_channels_last("auto", "cuda", "float32", True, 64) is True
    assert layout.train_channels_last("auto", "cpu", "bfloat16", True, 64) is True
    assert layout.train_channels_last("auto", "cpu", "float32", True, 64, timed=False) is True
    assert layout.train_channels_last("channels_last", "cpu", "float32", True, 64) is True
    assert layout.train_channels_last("nchw", "cuda", "float32", True, 64) is False
    assert layout.train_channels_last("channels_last", "cpu", "float32", False, 64) is False
    with pytest.raises(ValueError, match="perf.train_layout"):
        layout.train_channels_last("nhwc", "cpu", "float32", True, 64)


def test_timings_measure_both_layouts_once():
    layout.timings.cache_clear()
    t_cl, t_nchw = layout.timings(8, size=16)
    assert t_cl > 0 and t_nchw > 0
    assert layout.timings(8, size=16) == (t_cl, t_nchw)
    layout.timings.cache_clear()


@pytest.mark.parametrize("train_layout", ["nchw", "channels_last"])
def test_training_runs_in_the_chosen_layout(train_layout, monkeypatch):
    """Every image-level convolution with a gradient sees the training layout, also downstream
    of the frozen (packed) layers, whose oneDNN output is NHWC; NCHW training has no NHWC
    convolution at all; weights follow the layout; the switches are the same for every
    purpose."""
    cfg = _cfg()
    cfg.perf.train_layout = train_layout
    cfg.model.backbone.freeze_at = 2  # stem + res2 frozen: packed convolutions in training
    cfg.model.backbone.norm = "FrozenBN"
    fast = fast_paths(cfg, "cpu", "train")
    want = train_layout == "channels_last"
    assert fast.channels_last and fast.train_channels_last is want
    assert all(fast_paths(cfg, "cpu", p) == fast for p in ("eval", "predict", "bench"))
    torch.manual_seed(0)
    model = apply(MaskRCNN(cfg.model), fast)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) is want
               for c in convs if c.weight.shape[-1] > 1 and c.weight.shape[1] > 1)
    seen = []
    real = torch.nn.functional.conv2d

    def spy(x, w, *a, **k):
        if x.requires_grad or w.requires_grad:
            seen.append((x.is_contiguous(memory_format=torch.channels_last)
                         and not x.is_contiguous(), tuple(x.shape)))
        return real(x, w, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    monkeypatch.setattr(onednn.F, "conv2d", spy)
    from mrcnn.engine.bench import synthetic_inputs

    _, images, targets, _ = synthetic_inputs(cfg, 2, 64, 64, torch.device("cpu"))
    if want:
        images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
    model.train()
    losses = model(images, targets)
    sum(losses.values()).backward()
    # The backbone, FPN and RPN (batch 2); the RoI heads start from RoIAlign's NCHW output.
    image_level = [cl for cl, shape in seen if shape[0] == 2]
    assert len(image_level) > 5 and all(cl is want for cl in image_level), seen
    if not want:
        assert not any(cl for cl, _ in seen), seen


def test_deterministic_runs_time_nothing(monkeypatch):
    """A resumed deterministic run must take the paths of the first process: no timing."""
    def boom(*a, **k):
        raise AssertionError("timed in a deterministic run")

    monkeypatch.setattr(layout, "timings", boom)
    monkeypatch.setattr(onednn, "fc6_timings", boom)
    cfg = _cfg()
    cfg.deterministic = True
    fast = fast_paths(cfg, "cpu", "train")
    assert fast.train_channels_last and not fast.fc6_as_conv
    cfg.deterministic = False
    with pytest.raises(AssertionError, match="timed"):
        fast_paths(cfg, "cpu", "train")
