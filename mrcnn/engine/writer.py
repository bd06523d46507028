"""One metric writer on rank 0: console, TensorBoard and `metrics.jsonl`.

Other ranks get a writer that does nothing, so callers never branch on the rank.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import statistics
from typing import Any

import torch

from mrcnn import dist

log = logging.getLogger("mrcnn.train")


class SmoothedValue:
    """A series with a windowed median and a global mean (the seed's "1.8236 (2.7274)")."""

    def __init__(self, window: int = 20):
        self.window: collections.deque[float] = collections.deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float) -> None:
        self.window.append(value)
        self.total += value
        self.count += 1

    @property
    def median(self) -> float:
        return statistics.median(self.window) if self.window else float("nan")

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def latest(self) -> float:
        return self.window[-1] if self.window else float("nan")


class MetricWriter:
    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = dist.is_main() if enabled is None else enabled
        self.workdir = workdir
        self._tb = None
        self._jsonl = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    @property
    def tb(self):
        if self._tb is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self.workdir, "tb"))
        return self._tb

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            self.tb.add_scalar(prefix + k, v, step)
        record = {"iter": step, **{prefix + k: _jsonable(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def images(self, step: int, images: dict[str, torch.Tensor]) -> None:
        """uint8 [3, H, W] images into TensorBoard."""
        if not self.enabled:
            return
        for k, img in images.items():
            self.tb.add_image(k, img, step, dataformats="CHW")

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        self.tb.add_hparams(clean, metrics, run_name=".")

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()
        if self._jsonl is not None:
            self._jsonl.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.item()
    return v


def format_eta(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"
