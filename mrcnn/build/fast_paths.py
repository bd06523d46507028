"""Which fast paths a run uses (`config.perf`), decided once, and applying them to a model.

`fast_paths(config, device, purpose)` is a function of the config and the device (and, for
`perf.fc6="auto"`, of one timing cached for the process; none with `deterministic=True`, whose
resume must take the same paths): train, eval, predict and bench therefore run the same model
with the same switches; only export asks
for the plain model (a deployed artifact must not depend on this process's oneDNN packing or
graphs). `perf.exact=True` turns off every switch that changes float rounding, so that outputs
are bit-identical to torchvision's model on the same weights (the equivalence tests set it).

- `perf.channels_last`: NHWC weights and images: faster convolutions on tensor cores and in
  oneDNN on CPUs.
- `perf.onednn` (CPU float32 only): prepacked oneDNN convolutions with FrozenBN folded in, and
  the box head's fc6 as a convolution where a timing at start-up finds that faster (`perf.fc6`,
  mrcnn/build/onednn.py).
- `perf.compile`: `torch.compile` of the backbone (+FPN), the RPN head and the box/mask heads, in
  place (`nn.Module.compile`), so state_dict keys and checkpoints stay the same; with
  `perf.compile_fullgraph` a graph break is an error instead of a silent slow path.
- `perf.pad_to` (H, W): every batch padded to (H, W) or (W, H) by orientation
  (mrcnn/data/collate.py), so the fixed-shape part sees two shapes only.
- `perf.cuda_graphs` (CUDA): backbone + FPN + RPN head as CUDA graphs (mrcnn/build/cuda_graphs.py).
- `perf.prefetch`: batches are copied to the GPU on a side stream (mrcnn/data/prefetch.py).
"""

from __future__ import annotations

import dataclasses
import logging

import ml_collections
import torch
from torch import nn

from mrcnn import precision
from mrcnn.build import onednn

log = logging.getLogger(__name__)

PURPOSES = ("train", "eval", "predict", "bench", "export")
COMPILED_PARTS = ("backbone", "rpn", "box_head", "box_predictor", "mask_head", "mask_predictor")


@dataclasses.dataclass(frozen=True)
class FastPaths:
    """The switches in force for one run; the model ones are applied by `apply`, the data ones
    (pad_to, prefetch, channels_last images, dtype) are read by the loops."""

    channels_last: bool = False
    onednn: bool = False
    fc6_as_conv: bool = False  # with onednn: the box head's fc6 as a 7x7 convolution
    compile: bool = False
    compile_fullgraph: bool = True
    cuda_graphs: bool = False
    pad_to: tuple[int, ...] = ()
    prefetch: bool = True
    dtype: str = "float32"  # `config.dtype` with "auto" resolved (mrcnn.precision.resolve)

    def describe(self) -> str:
        """The switches in force, as the logs and the bench report name them ("eager": none)."""
        parts = [k for k in ("channels_last", "onednn", "compile", "cuda_graphs")
                 if getattr(self, k)]
        if self.pad_to:
            parts.append("pad_to=%dx%d" % tuple(self.pad_to))
        return "+".join(parts) or "eager"


def fast_paths(config: ml_collections.ConfigDict, device: torch.device | str,
               purpose: str) -> FastPaths:
    """The switches of `config.perf` that apply on `device` for `purpose` (one of PURPOSES)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose {purpose!r}: expected one of {PURPOSES}")
    device_type = device if isinstance(device, str) else device.type
    p = config.perf
    dtype = precision.resolve(str(config.dtype), device_type)
    if purpose == "export":
        return FastPaths(dtype=dtype, prefetch=False)
    exact = bool(p.exact)
    cpu_float32 = device_type == "cpu" and dtype == "float32"
    # oneDNN's packed path is float32-CPU only, and torch.compile does its own packing.
    use_onednn = (bool(p.onednn) and cpu_float32 and not exact and not p.compile
                  and onednn.available())
    return FastPaths(
        channels_last=bool(p.channels_last) and not exact,
        onednn=use_onednn,
        fc6_as_conv=use_onednn and _fc6_as_conv(config),
        compile=bool(p.compile),
        compile_fullgraph=bool(p.compile_fullgraph),
        cuda_graphs=bool(p.cuda_graphs) and device_type == "cuda",
        pad_to=tuple(int(v) for v in p.pad_to),
        prefetch=bool(p.prefetch),
        dtype=dtype,
    )


def _fc6_as_conv(config: ml_collections.ConfigDict) -> bool:
    """perf.fc6 for the model `config.model` describes: only the FPN box head without
    convolutions (MLPHead) has an fc6 on pooled features; "auto" times both forms on its shape."""
    m = config.model
    if not m.backbone.fpn or m.box_head.num_conv != 0:
        return False
    shape = (int(m.backbone.fpn_channels), int(m.box_head.pooler_resolution),
             int(m.box_head.fc_dim))
    # deterministic=True promises a bit-exact resume: a timing could decide otherwise in the
    # resumed process, so "auto" is then Linear without timing.
    return onednn.fc6_as_conv(str(config.perf.get("fc6", "auto")),
                              None if config.deterministic else shape)


def apply(model: nn.Module, fast: FastPaths) -> nn.Module:
    """channels_last, oneDNN and torch.compile on `model`, in place (state-dict keys unchanged).
    CUDA graphs are installed by `mrcnn.build.build` (they need the final device and mode)."""
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    if fast.onednn:
        convs, heads = onednn.use_onednn(model, fast.fc6_as_conv)
        log.info("oneDNN: %d prepacked convolutions, %d box heads' fc6 as a convolution "
                 "(perf.fc6)", convs, heads)
    if fast.compile:
        parts = []
        for name in COMPILED_PARTS:
            module = getattr(model, name, None)
            if isinstance(module, nn.Module):
                module.compile(dynamic=None, fullgraph=fast.compile_fullgraph)
                parts.append(name)
        log.info("torch.compile (fullgraph=%s): %s", fast.compile_fullgraph, ", ".join(parts))
    return model
