"""`perf.onednn`: packed oneDNN convolutions and fc6 as a convolution compute what the eager
modules do (to float rounding: oneDNN may sum in another order than eager's kernel); packed
convolutions are skipped whenever autograd or autocast is involved and follow weight updates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from configs import r50_fpn_1x
from mrcnn.build import onednn
from mrcnn.engine.bench import synthetic_inputs
from mrcnn.modeling import build_model

pytestmark = pytest.mark.skipif(not onednn.available(), reason="torch built without oneDNN")


@pytest.mark.parametrize(
    "c_in,c_out,k,stride,padding,dilation,bias",
    [(16, 32, 3, 1, 1, 1, True), (24, 8, 1, 2, 0, 1, False), (8, 8, 3, 2, 1, 1, False),
     (3, 16, 7, 2, 3, 1, False), (8, 12, 3, 1, 2, 2, True)],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_packed_conv_equals_eager(c_in, c_out, k, stride, padding, dilation, bias,
                                      channels_last):
    g = torch.Generator().manual_seed(c_in * k + stride)
    conv = nn.Conv2d(c_in, c_out, k, stride, padding, dilation, bias=bias)
    x = torch.randn(2, c_in, 23, 31, generator=g)
    if channels_last:
        conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = conv(x)
        assert onednn.prepack_convolutions(conv) == 1
        got = conv(x)
        # Another input size reuses the packed weight.
        x2 = torch.randn(1, c_in, 17, 9, generator=g)
        got2 = conv(x2)
        onednn.unpack_convolutions(conv)
        expected2 = conv(x2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got2, expected2, rtol=1e-5, atol=1e-5)


def test_packed_conv_follows_weight_updates_and_skips_autograd_and_autocast():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    onednn.prepack_convolutions(conv)
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        before = conv(x)
        conv.weight.mul_(2.0)  # an optimizer step: the packed copy must be rebuilt
        after = conv(x)
        onednn.unpack_convolutions(conv)
        expected = conv(x)
        onednn.prepack_convolutions(conv)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    # With autograd the ordinary path runs and gradients flow.
    y = conv(x.requires_grad_(True))
    assert y.requires_grad and type(conv).__name__ == "OneDNNConv2d" and "_onednn_packed" not in conv.__dict__
    y.sum().backward()
    assert conv.weight.grad is not None and x.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16


def _tiny_cfg():
    cfg = r50_fpn_1x.get_config()
    cfg.model.num_classes = 4
    cfg.model.backbone.depth = 18
    cfg.model.backbone.width = 8
    cfg.model.backbone.fpn_channels = 16
    cfg.model.box_head.fc_dim = 32
    cfg.model.mask_head.conv_dim = 16
    cfg.model.roi_heads.score_thresh = 0.0
    return cfg


def test_model_detections_and_training_step_unchanged():
    cfg = _tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg.model)
    _, images, targets, _ = synthetic_inputs(cfg, 2, 96, 128, torch.device("cpu"))
    model.eval()
    with torch.inference_mode():
        expected = model(images)
        convs, heads = onednn.use_onednn(model)
        assert convs > 10 and heads == 1
        got = model(images)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.boxes.shape[0] > 0 and torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.boxes, b.boxes, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.masks, b.masks, rtol=1e-4, atol=1e-5)  # probabilities

    # Training: frozen convs take the packed path, trained ones the ordinary one; same numbers.
    def step():
        model.train()
        model.sampling_generator = torch.Generator().manual_seed(1)
        model.zero_grad(set_to_none=True)
        losses = model(images, targets)
        sum(losses.values()).backward()
        return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    packed_losses, packed_grads = step()
    # The frozen stem ran fused (FrozenBN folded into a packed convolution).
    assert "_onednn_folded" in model.backbone.body.stem.conv.__dict__
    onednn.unpack_convolutions(model)
    losses, grads = step()
    for k in losses:
        torch.testing.assert_close(packed_losses[k], losses[k], rtol=1e-4, atol=1e-6, msg=k)
    assert packed_grads.keys() == grads.keys()
    for n in grads:
        scale = float(grads[n].abs().max())
        torch.testing.assert_close(packed_grads[n], grads[n], rtol=1e-3, atol=1e-4 * scale, msg=n)


def test_perf_switch_installs_packed_convolutions_unless_compiled():
    from mrcnn.build.fast_paths import apply, fast_paths

    cfg = _tiny_cfg()
    model = build_model(cfg.model)
    cfg.perf.onednn = False
    apply(model, fast_paths(cfg, "cpu", "eval"))
    assert all(type(m) is nn.Conv2d for m in model.modules() if isinstance(m, nn.Conv2d))
    cfg.perf.onednn = True
    apply(model, fast_paths(cfg, "cpu", "eval"))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m).__name__ == "OneDNNConv2d" for m in convs)
    keys = model.state_dict().keys()
    onednn.unpack_convolutions(model)  # every module gets its own class back
    assert all(type(m) is nn.Conv2d for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.state_dict().keys() == keys
    cfg.perf.compile = True  # Inductor packs its own weights: oneDNN's path is not taken
    assert not fast_paths(cfg, "cpu", "eval").onednn


@pytest.mark.parametrize("channels_last", [False, True])
def test_fc6_as_convolution_equals_linear_with_gradients(channels_last):
    from mrcnn.modeling.box_head import MLPHead

    torch.manual_seed(0)
    head = MLPHead(16, 7, 2, 32)
    x = torch.randn(50, 16, 7, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    expected = head(x)
    (gx, gw) = torch.autograd.grad(expected.square().sum(), (x, head.fc[0].weight))
    assert onednn.use_onednn(head) == (0, 1)  # no convolutions in it, one box head
    got = head(x)
    (hx, hw) = torch.autograd.grad(got.square().sum(), (x, head.fc[0].weight))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hx, gx, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hw, gw, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the ordinary path
        assert head(x).dtype == torch.bfloat16
    onednn.unpack_convolutions(head)
    assert not type(head).__name__.startswith("OneDNN")


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_frozen_blocks_equal_unfused(depth, channels_last):
    from mrcnn.modeling.backbone import ResNet

    torch.manual_seed(depth)
    body = ResNet(depth=depth, width=8, norm="FrozenBN", freeze_at=2)
    for name, buf in body.named_buffers():  # non-trivial frozen statistics
        buf.copy_(torch.rand_like(buf) + 0.5 if name.endswith("weight") else torch.randn_like(buf))
    x = torch.randn(2, 3, 61, 77)
    if channels_last:
        body.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = body(x)
        assert onednn.fuse_frozen_blocks(body) == 1 + sum(len(getattr(body, n)) for n in
                                                          body.stage_names)
        got = body(x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    assert "_onednn_folded" in body.res5[0].conv1.__dict__
    # The residual sum + ReLU are post-ops of the last convolution; a block's input (the
    # caller's tensor, also a stage output the FPN reads) is never overwritten.
    kept, changed = {}, []
    blocks = [b for n in body.stage_names for b in getattr(body, n)]
    hooks = [b.register_forward_pre_hook(lambda m, a: kept.__setitem__(m, a[0].clone()))
             for b in blocks]
    hooks += [b.register_forward_hook(lambda m, a, o: changed.append(
        not torch.equal(a[0], kept[m]))) for b in blocks]
    with torch.no_grad():
        again = body(x)
    for h in hooks:
        h.remove()
    assert len(changed) == len(blocks) and not any(changed)
    assert all(torch.equal(a, b) for a, b in zip(again, got))
    # With autograd the trained stages fold the norm into the weight per call (no FrozenBN
    # forward runs): gradients equal the unfused ones to rounding.
    from mrcnn.modeling.norm import FrozenBatchNorm2d

    calls = []
    real = FrozenBatchNorm2d.forward
    FrozenBatchNorm2d.forward = lambda self, t: calls.append(1) or real(self, t)
    try:
        body.zero_grad()
        body(x)[-1].sum().backward()
    finally:
        FrozenBatchNorm2d.forward = real
    assert calls == []
    fused_grad = body.res5[0].conv1.weight.grad.clone()
    onednn.unpack_convolutions(body)
    assert not any(type(m).__name__.startswith("OneDNN") for m in body.modules())
    body.zero_grad()
    body(x)[-1].sum().backward()
    g = body.res5[0].conv1.weight.grad
    torch.testing.assert_close(fused_grad, g, rtol=1e-3, atol=1e-4 * float(g.abs().max()))


def test_fc6_as_conv_auto_follows_the_timing(monkeypatch):
    from mrcnn.build.fast_paths import apply, fast_paths
    from mrcnn.modeling.box_head import MLPHead

    timings = {}
    monkeypatch.setattr(onednn, "fc6_timings", lambda *shape: timings[shape])
    shape = (256, 7, 1024)
    timings[shape] = (0.30, 0.40)  # the convolution 25% faster
    assert onednn.fc6_as_conv("auto", shape) is True
    timings[shape] = (0.38, 0.40)  # within the 10% margin: Linear
    assert onednn.fc6_as_conv("auto", shape) is False
    timings[shape] = (7.9, 0.77)
    assert onednn.fc6_as_conv("auto", shape) is False
    assert onednn.fc6_as_conv("conv", shape) is True
    assert onednn.fc6_as_conv("linear", shape) is False
    assert onednn.fc6_as_conv("auto") is False  # no shape, nothing timed
    with pytest.raises(ValueError, match="perf.fc6"):
        onednn.fc6_as_conv("fast")
    cfg = _tiny_cfg()
    m = cfg.model
    tiny_shape = (m.backbone.fpn_channels, m.box_head.pooler_resolution, m.box_head.fc_dim)
    for t, setting, want in (((0.1, 0.2), "auto", True), ((0.2, 0.1), "auto", False),
                             ((0.1, 0.2), "linear", False), ((0.2, 0.1), "conv", True)):
        timings[tiny_shape] = t
        cfg.perf.fc6 = setting
        fast = fast_paths(cfg, "cpu", "train")
        assert fast.fc6_as_conv is want
        assert all(fast_paths(cfg, "cpu", p).fc6_as_conv is want
                   for p in ("eval", "predict", "bench"))
        model = apply(build_model(cfg.model), fast)
        heads = [h for h in model.modules() if isinstance(h, MLPHead)]
        assert heads and all(onednn._switched(h) is want for h in heads)
    cfg.perf.onednn = False  # fc6 as a convolution is part of the oneDNN path
    cfg.perf.fc6 = "conv"
    assert not fast_paths(cfg, "cpu", "train").fc6_as_conv
    cfg.perf.onednn = True
    cfg.model.box_head.num_conv = 1  # a ConvFCHead: no MLPHead fc6 to switch
    assert not fast_paths(cfg, "cpu", "train").fc6_as_conv


def test_fc6_timings_measure_both_forms_once_per_shape(monkeypatch):
    onednn.fc6_timings.cache_clear()
    calls = []
    real_conv2d = onednn.F.conv2d
    monkeypatch.setattr(onednn.F, "conv2d", lambda *a, **k: calls.append(a[0].shape)
                        or real_conv2d(*a, **k))
    t_conv, t_linear = onednn.fc6_timings(8, 7, 16, rois=4)
    assert t_conv > 0 and t_linear > 0
    assert calls and all(tuple(c) == (4, 8, 7, 7) for c in calls)
    n = len(calls)
    assert onednn.fc6_timings(8, 7, 16, rois=4) == (t_conv, t_linear)  # cached
    assert len(calls) == n
    onednn.fc6_timings.cache_clear()


def test_deterministic_runs_time_no_fc6(monkeypatch):
    """A resumed deterministic run must take the paths of the first process: no timing."""
    from mrcnn.build.fast_paths import fast_paths

    def boom(*a, **k):
        raise AssertionError("timed in a deterministic run")

    monkeypatch.setattr(onednn, "fc6_timings", boom)
    cfg = _tiny_cfg()
    cfg.perf.fc6 = "auto"
    cfg.deterministic = True
    assert fast_paths(cfg, "cpu", "train").fc6_as_conv is False
    cfg.deterministic = False
    with pytest.raises(AssertionError, match="timed"):
        fast_paths(cfg, "cpu", "train")
