"""The losses of the optimizer steps since the last read, kept on the device.

Reading a loss (`.item()`, `.tolist()`) makes the host wait for the device; doing it every step
stalls the queue of work the host has sent ahead. The training loop instead appends each step's
loss vector and its skip flag here (device tensors, nothing read) and reads them all at once
when it needs host values: at a log line, before a checkpoint or an evaluation, when stopping.
That is one host sync per log period instead of one per step.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from mrcnn import dist


@dataclasses.dataclass
class StepRecord:
    """One step's losses as host floats (averaged over the ranks) and its timings."""

    iteration: int  # the optimizer step's 0-based index
    values: dict[str, float]
    skipped: bool  # the step's losses were not finite: the optimizer did not apply it
    seconds: float
    data_seconds: float


class PendingLosses:
    """Steps not read yet: `add` costs no sync, `read` costs one for all of them."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self._rows: list[Tensor] = []
        self._host: list[tuple[int, float, float]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, iteration: int, losses: Tensor, skipped: Tensor, seconds: float,
            data_seconds: float) -> None:
        """losses: float [len(names)] on the device, this rank's; skipped: a 0-dim device flag
        every rank agrees on."""
        self._rows.append(torch.cat([losses.float(), skipped.float().reshape(1)]))
        self._host.append((iteration, seconds, data_seconds))

    def read(self) -> list[StepRecord]:
        """All pending steps, oldest first (one all-reduce and one host read); clears them."""
        if not self._rows:
            return []
        table = dist.all_reduce_mean(torch.stack(self._rows)).tolist()
        out = []
        for row, (it, seconds, data_seconds) in zip(table, self._host):
            out.append(StepRecord(it, dict(zip(self.names, row[:-1])), row[-1] > 0, seconds,
                                  data_seconds))
        self._rows, self._host = [], []
        return out
