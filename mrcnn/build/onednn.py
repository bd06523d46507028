"""oneDNN for float32 CPU work (`perf.onednn`): prepacked convolutions, FrozenBN folded into
them, and the box head's first FC layer as a convolution.

Prepacked convolutions (work without autograd). An eager `F.conv2d` on the CPU hands oneDNN a plain-layout weight and lets it reorder the weight
into its blocked layout on every call. Here each `nn.Conv2d` keeps its weight reordered once
(`torch.ops.mkldnn._reorder_convolution_weight`, as TorchInductor's CPU backend does) and runs
`torch.ops.mkldnn._convolution_pointwise` on it: the same oneDNN kernel on the same numbers, so
outputs equal eager ones to float rounding (oneDNN may sum in another order than the kernel
eager picks; tested). R50-FPN inference at 512 px on 2 cores took 25% less time in an
interleaved A/B against eager (channels_last, float32).

The packed path is taken only when it cannot change anything autograd sees: CPU, float32, no
autocast, and no gradient wanted (inference, the frozen stem/res2 while training, the RPN's dense
head under `rpn.sparse_grad`). Otherwise the module's ordinary forward runs. A packed weight is
rebuilt when the parameter changes (its version counter or storage), so optimizer steps and
`load_state_dict` are seen. A switched module becomes an instance of a subclass of its own class
(`OneDNNConv2d`, `OneDNNBottleneck`, ...: visible in `print(model)`), with the same parameters and
state-dict keys; `unpack_convolutions` gives every module its class back.

ResNet blocks and stems whose norms are all FrozenBN (`fuse_frozen_blocks`): without autograd,
each conv + FrozenBN (+ ReLU) is one packed convolution, the norm folded into the weight and
bias and the ReLU a oneDNN post-op; two to three passes over every activation are saved. The
block's residual sum and ReLU are post-ops of its last convolution (`_conv_norm_add_relu`),
written into the shortcut's output where there is one, never into the block's input. With
autograd (the trained stages) the norm is folded per call into the weight that `conv2d` gets
(`W * s`, bias `t`): the gradient reaches W through that product, and the activation is not
scaled and shifted forward nor scaled backward.

The box head's fc6 (`MLPHead.fc.0`, 256*7*7 -> 1024 on every sampled RoI, ~1/6 of an R50-FPN
training step) can run as a 7x7 "valid" convolution of the pooled [R, 256, 7, 7] features with
the weight viewed as [1024, 256, 7, 7] (`perf.fc6`). Torch runs Linear through the BLAS
(MKL), and which of the two is faster depends on the CPU, not only on its vendor: fwd+bwd of
1024 RoIs, 2 cores, convolution vs Linear: 334 vs 432 ms on the AMD CPU of the 2026-11
measurements, 407 vs 289 ms on an Intel Xeon (Sapphire Rapids, 2026-12-03), 7939 vs 768 ms on
an AMD EPYC (Zen 3, AVX2 only, 2026-12-03; forward alone 2074 vs 218 ms for 1000 RoIs). A
guess by vendor is 10x wrong somewhere, so "auto" measures: `fc6_timings` runs both on 128
RoIs of the configured shape once per process, and the convolution is taken only when it is
at least 10% faster (with `deterministic=True`, no timing: Linear). Same function, summed in
another order: equal to rounding. With autograd.
"""

from __future__ import annotations

import functools
import logging
import time

import torch
from torch import Tensor, nn
from torch.nn import functional as F

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether this torch build has oneDNN and the pointwise convolution operators."""
    return bool(
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
    )


def _eligible(conv: nn.Conv2d) -> bool:
    return (
        (type(conv) is nn.Conv2d or type(conv).__dict__.get("_onednn_base") is nn.Conv2d)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
    )


def _uses_packed(conv: nn.Conv2d, x: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and x.dim() == 4
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
    )


def _packed_weight(conv: nn.Conv2d, x: Tensor, norm: nn.Module | None = None):
    """(oneDNN-packed weight, bias) of `conv` (with `norm`, a FrozenBatchNorm2d, folded in),
    rebuilt when a parameter changed (version counter or storage)."""
    w = conv.weight
    key = (w._version, w.data_ptr(), tuple(w.shape))
    if norm is not None:
        key += (norm.weight._version, norm.weight.data_ptr(), norm.bias._version,
                norm.bias.data_ptr())
    slot = "_onednn_packed" if norm is None else "_onednn_folded"
    cached = conv.__dict__.get(slot)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            weight, bias = w.detach(), None if conv.bias is None else conv.bias.detach()
            if norm is not None:  # conv then x * s + t  ==  conv with W * s, bias b * s + t
                scale, shift = norm.weight.detach(), norm.bias.detach()
                weight = weight * scale.reshape(-1, 1, 1, 1)
                bias = shift if bias is None else bias * scale + shift
                weight = weight.contiguous(memory_format=torch.channels_last
                                           if w.is_contiguous(memory_format=torch.channels_last)
                                           else torch.contiguous_format)
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight, list(conv.padding), list(conv.stride), list(conv.dilation), 1,
                list(x.shape),
            )
        cached = (key, packed, bias)
        conv.__dict__[slot] = cached
    return cached[1], cached[2]


def _packed_conv(conv: nn.Conv2d, x: Tensor, norm: nn.Module | None = None,
                 attr: str = "none") -> Tensor:
    """conv (then `norm`, a FrozenBatchNorm2d folded into the packed weight and bias; then
    `attr` "relu" fused) on the packed path; the caller has checked _uses_packed."""
    packed, bias = _packed_weight(conv, x, norm)
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed, bias, list(conv.padding), list(conv.stride), list(conv.dilation), 1,
        attr, [], "",
    )


def _conv_norm_add_relu(conv: nn.Conv2d, x: Tensor, norm: nn.Module, identity: Tensor,
                        into_identity: bool) -> Tensor:
    """relu(norm(conv(x)) + identity), a residual block's last step. On the packed path the
    sum and the ReLU are post-ops of the convolution (one pass over the block's output instead
    of three); `into_identity`: the result may overwrite `identity` (a shortcut's output that
    nothing else holds), which also saves allocating the output. Else the separate ops."""
    fmt = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
           and not x.is_contiguous() else torch.contiguous_format)
    if (_uses_packed(conv, x) and identity.dtype == torch.float32
            and identity.is_contiguous(memory_format=fmt)):
        packed, bias = _packed_weight(conv, x, norm)
        args = (packed, bias, list(conv.padding), list(conv.stride), list(conv.dilation), 1,
                "add", None, "relu", [], "")
        if into_identity:
            return torch.ops.mkldnn._convolution_pointwise_.binary(identity, x, *args)
        return torch.ops.mkldnn._convolution_pointwise.binary(x, identity, *args)
    y = _conv_norm(conv, x, norm, False)
    return F.relu_(y.add_(identity))


def _packed_forward(self: nn.Conv2d, x: Tensor) -> Tensor:
    if not _uses_packed(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, 1)
    return _packed_conv(self, x)


def _frozen(norm: nn.Module) -> bool:
    from mrcnn.modeling.norm import FrozenBatchNorm2d

    return isinstance(norm, FrozenBatchNorm2d)


def _foldable(conv: nn.Conv2d, x: Tensor) -> bool:
    """With autograd: CPU float32 without autocast, the conditions of the packed path but for
    the gradient."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and conv.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"))


def _conv_norm(conv: nn.Conv2d, x: Tensor, norm: nn.Module, relu: bool) -> Tensor:
    """conv -> FrozenBN (-> ReLU) as one convolution: packed without autograd; with autograd
    `conv2d(x, W * s, t)`, the norm folded into the weight per call (a pass over a weight
    instead of two passes over the activation forward and one backward; the gradient reaches
    W through the product). Else the separate ops."""
    if _uses_packed(conv, x):
        return _packed_conv(conv, x, norm, "relu" if relu else "none")
    if _foldable(conv, x):
        scale = norm.weight.reshape(-1, 1, 1, 1)
        w = conv.weight * scale  # keeps the weight's memory format (channels_last or not)
        b = norm.bias if conv.bias is None else conv.bias * norm.weight + norm.bias
        y = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    else:
        y = norm(conv(x))
    return F.relu_(y) if relu else y


def _bottleneck_forward(self: nn.Module, x: Tensor) -> Tensor:
    y = _conv_norm(self.conv1, x, self.norm1, True)
    y = _conv_norm(self.conv2, y, self.norm2, True)
    s = self.shortcut
    identity = x if s is None else _conv_norm(s.conv, x, s.norm, False)
    # The block's input is the caller's tensor: never overwritten; a shortcut's output may be.
    return _conv_norm_add_relu(self.conv3, y, self.norm3, identity, s is not None)


def _basic_block_forward(self: nn.Module, x: Tensor) -> Tensor:
    y = _conv_norm(self.conv1, x, self.norm1, True)
    s = self.shortcut
    identity = x if s is None else _conv_norm(s.conv, x, s.norm, False)
    return _conv_norm_add_relu(self.conv2, y, self.norm2, identity, s is not None)


def _stem_forward(self: nn.Module, x: Tensor) -> Tensor:
    y = _conv_norm(self.conv, x, self.norm, True)
    return F.max_pool2d(y, kernel_size=3, stride=2, padding=1)


_SUBCLASSES: dict[type, type] = {}


def _switch(module: nn.Module, forward) -> None:
    """Makes `module` an instance of a subclass of its class whose forward is `forward` (the
    subclass adds no state: parameters, buffers and state-dict keys stay as they are)."""
    base = type(module)
    sub = _SUBCLASSES.get(base)
    if sub is None:
        sub = type("OneDNN" + base.__name__, (base,), {
            "forward": forward, "_onednn_base": base,
            "__doc__": f"{base.__name__} on oneDNN's packed path (mrcnn.build.onednn)."})
        _SUBCLASSES[base] = sub
    module.__class__ = sub


def _switched(module: nn.Module) -> bool:
    return "_onednn_base" in type(module).__dict__


def fuse_frozen_blocks(model: nn.Module) -> int:
    """ResNet blocks and stems whose norms are all FrozenBN: each conv + norm (+ ReLU) runs as
    one convolution (`_conv_norm`: packed without autograd, the norm folded into the weight
    with it). Equal to the unfused blocks up to rounding, gradients included. Returns how many
    modules were switched."""
    from mrcnn.modeling.backbone import BasicBlock, Bottleneck, Stem

    n = 0
    for m in model.modules():
        if _switched(m):
            continue
        if isinstance(m, Bottleneck):
            norms = [m.norm1, m.norm2, m.norm3]
            forward = _bottleneck_forward
        elif isinstance(m, BasicBlock):
            norms = [m.norm1, m.norm2]
            forward = _basic_block_forward
        elif isinstance(m, Stem):
            norms, forward = [m.norm], _stem_forward
        else:
            continue
        shortcut = getattr(m, "shortcut", None)
        if shortcut is not None:
            norms.append(shortcut.norm)
        if not all(_frozen(nm) for nm in norms):
            continue
        if not all(_eligible(c) for c in m.modules() if isinstance(c, nn.Conv2d)):
            continue
        _switch(m, forward)
        n += 1
    return n


def _fc_as_conv_forward(self: nn.Module, x: Tensor) -> Tensor:
    fc0 = self.fc[0]
    if not (x.device.type == "cpu" and x.dim() == 4 and x.dtype == torch.float32
            and fc0.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")):
        return self._onednn_base.forward(self, x)
    r, c, h, w = x.shape
    y = F.conv2d(x, fc0.weight.view(fc0.out_features, c, h, w), fc0.bias).flatten(1)
    y = F.relu_(y)
    for fc in self.fc[1:]:
        y = F.relu_(fc(y))
    return y


FC6_CHOICES = ("auto", "conv", "linear")
FC6_PROBE_ROIS = 128
FC6_CONV_MARGIN = 0.9  # the convolution must take < 90% of Linear's time to be chosen


@functools.lru_cache(maxsize=None)
def fc6_timings(channels: int, resolution: int, out_features: int,
                rois: int = FC6_PROBE_ROIS) -> tuple[float, float]:
    """Seconds of one forward + backward of fc6 on `rois` pooled RoIs ([rois, channels,
    resolution, resolution] -> out_features), (as a convolution, as Linear): the better of two
    timed calls after a warm-up. When the convolution's warm-up alone takes 3x Linear's time,
    that is its figure (the slow case costs one call, not three). Cached per shape, so every
    build of this process decides alike."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rois, channels, resolution, resolution, generator=gen).requires_grad_(True)
    w = (torch.randn(out_features, channels * resolution * resolution, generator=gen)
         * 0.01).requires_grad_(True)
    b = torch.zeros(out_features, requires_grad=True)

    def conv():
        F.conv2d(x, w.view(out_features, channels, resolution, resolution), b).sum().backward()

    def linear():
        F.linear(x.flatten(1), w, b).sum().backward()

    def seconds(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    with torch.enable_grad():
        seconds(linear)
        t_linear = min(seconds(linear), seconds(linear))
        t_conv = seconds(conv)
        if t_conv < 3 * t_linear:
            t_conv = min(seconds(conv), seconds(conv))
    return t_conv, t_linear


def fc6_as_conv(setting: str, shape: tuple[int, int, int] | None = None) -> bool:
    """perf.fc6 -> whether fc6 runs as a convolution: "conv" / "linear" as given; "auto": the
    convolution when `fc6_timings(*shape)` finds it at least 10% faster (shape: fc6's input
    channels, pooled resolution, output features); Linear without a shape."""
    if setting not in FC6_CHOICES:
        raise ValueError(f"perf.fc6={setting!r}: expected one of {FC6_CHOICES}")
    if setting != "auto":
        return setting == "conv"
    if shape is None:
        return False
    t_conv, t_linear = fc6_timings(*shape)
    choice = t_conv < FC6_CONV_MARGIN * t_linear
    log.info("perf.fc6='auto': fc6 %s on %d RoIs, fwd+bwd %.1f ms as a convolution, %.1f ms "
             "as Linear: %s", "x".join(map(str, shape)), FC6_PROBE_ROIS, 1e3 * t_conv,
             1e3 * t_linear, "convolution" if choice else "Linear")
    return choice


def use_onednn(model: nn.Module, fc6_conv: bool = True) -> tuple[int, int]:
    """perf.onednn: prepacked convolutions everywhere, fused FrozenBN blocks, and (`fc6_conv`)
    fc6 of every MLP box head as a convolution. Returns (convolutions switched, box heads
    switched); (0, 0) without oneDNN."""
    from mrcnn.modeling.box_head import MLPHead

    if not available():
        log.warning("perf.onednn: this torch has no oneDNN pointwise convolution; off")
        return 0, 0
    convs = prepack_convolutions(model)
    fuse_frozen_blocks(model)
    heads = 0
    for m in model.modules():
        if fc6_conv and isinstance(m, MLPHead) and not _switched(m):
            _switch(m, _fc_as_conv_forward)
            heads += 1
    return convs, heads


def prepack_convolutions(model: nn.Module) -> int:
    """Routes every plain `nn.Conv2d` of `model` through the packed path (see the module doc).
    Returns how many convolutions were switched; 0 when oneDNN is missing."""
    if not available():
        log.warning("perf.onednn: this torch has no oneDNN pointwise convolution; off")
        return 0
    n = 0
    for m in model.modules():
        if _eligible(m) and not _switched(m):
            _switch(m, _packed_forward)
            n += 1
    return n


def unpack_convolutions(model: nn.Module) -> None:
    """Undoes prepack_convolutions and use_onednn (original classes, packed weights dropped)."""
    for m in model.modules():
        if _switched(m):
            m.__class__ = type(m)._onednn_base
        m.__dict__.pop("_onednn_packed", None)
        m.__dict__.pop("_onednn_folded", None)
