"""`perf.train_layout`: the memory layout of the convolutions that run with autograd.

NHWC (channels_last) is the faster layout for oneDNN's forward convolutions on every CPU
measured here, but its weight gradient is not: on an AMD EPYC (Zen 3, AVX2 only, 2 cores,
2026-12-03) a 3x3 256->256 convolution on [2, 256, 128, 128] took 1444 ms for the weight
gradient in NHWC and 410 ms in NCHW (forward 236 vs 297 ms), and R-50-FPN training at 512 px
ran at 0.747 of torchvision's time in NHWC against 0.617 in NCHW. So the layout of training is
decided apart from the layout of inference (`perf.channels_last`):

- "channels_last" / "nchw": as given;
- "auto": on a CPU in float32, `timings` runs one 3x3 convolution forward and backward in both
  layouts on the model's FPN width, once per process, and NCHW is taken when it is at least 10%
  faster; elsewhere (CUDA, bfloat16 autocast) and with `deterministic=True` (a resumed run
  must take the same path, a timing might not) the layout of `perf.channels_last`.

With NCHW training the weights stay NCHW; inference still gets NHWC images and oneDNN's packed
weights (mrcnn/build/onednn.py converts a packed convolution's output back to NCHW under
autograd, so the trained layers downstream of the frozen ones see NCHW).
"""

from __future__ import annotations

import functools
import logging
import time

import torch
from torch.nn import functional as F

log = logging.getLogger(__name__)

CHOICES = ("auto", "channels_last", "nchw")
PROBE_SIZE = 64  # the probe's spatial size: large enough that the weight gradient dominates
NCHW_MARGIN = 0.9  # NCHW must take < 90% of channels_last's time to be chosen


@functools.lru_cache(maxsize=None)
def timings(channels: int, size: int = PROBE_SIZE) -> tuple[float, float]:
    """Seconds of one forward + backward (input and weight gradients) of a 3x3 convolution
    `channels` -> `channels` on [1, channels, size, size], (channels_last, NCHW): the better
    of two timed calls after a warm-up. Cached, so every build of this process decides alike."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, channels, size, size, generator=gen)
    w0 = torch.randn(channels, channels, 3, 3, generator=gen) * 0.01

    def run(fmt) -> float:
        x = x0.contiguous(memory_format=fmt).requires_grad_(True)
        w = w0.contiguous(memory_format=fmt).requires_grad_(True)
        t0 = time.perf_counter()
        F.conv2d(x, w, padding=1).sum().backward()
        return time.perf_counter() - t0

    with torch.enable_grad():
        out = []
        for fmt in (torch.channels_last, torch.contiguous_format):
            run(fmt)
            out.append(min(run(fmt), run(fmt)))
    return out[0], out[1]


def train_channels_last(setting: str, device_type: str, dtype: str, channels_last: bool,
                        channels: int, timed: bool = True) -> bool:
    """perf.train_layout -> whether convolutions with autograd run in NHWC. `channels_last`:
    perf.channels_last as in force (exact mode turns both off); `channels`: the FPN width;
    `timed=False` (deterministic runs, whose resumed process must take the same path): "auto"
    is channels_last without timing."""
    if setting not in CHOICES:
        raise ValueError(f"perf.train_layout={setting!r}: expected one of {CHOICES}")
    if not channels_last:
        return False  # NHWC nowhere
    if setting != "auto":
        return setting == "channels_last"
    if device_type != "cpu" or dtype != "float32" or not timed:
        return True
    t_cl, t_nchw = timings(channels)
    nhwc = not t_nchw < NCHW_MARGIN * t_cl
    log.info("perf.train_layout='auto': 3x3 conv %d->%d on %dx%d, fwd+bwd %.1f ms NHWC, "
             "%.1f ms NCHW: %s", channels, channels, PROBE_SIZE, PROBE_SIZE, 1e3 * t_cl,
             1e3 * t_nchw, "channels_last" if nhwc else "NCHW")
    return nhwc
