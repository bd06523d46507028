"""A read-only list stored as one numpy byte buffer.

DataLoader workers are forked from the training process; touching a Python object there bumps
its reference count and copies its memory page, so a list of ~100k dicts slowly gets duplicated
into every worker (detectron2 documents the same effect). Two numpy arrays have no per-item
objects to touch.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

import numpy as np


class SerializedList:
    """`items` pickled back to back; `lst[i]` unpickles a fresh copy of item i."""

    def __init__(self, items: Iterable[Any]):
        blobs = [pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL) for x in items]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._data = (
            np.frombuffer(b"".join(blobs), dtype=np.uint8) if blobs else np.zeros(0, np.uint8)
        )

    def __len__(self) -> int:
        return int(self._ends.shape[0])

    def __getitem__(self, i: int) -> Any:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} items")
        i %= n
        start = int(self._ends[i - 1]) if i > 0 else 0
        return pickle.loads(memoryview(self._data[start : int(self._ends[i])]))

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes + self._ends.nbytes)
