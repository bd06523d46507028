"""GPU-side data prefetching (`perf.prefetch`): the next batch is copied to the device on a side
CUDA stream while the current step runs.

    batches = Prefetcher(loader, device, transform=fn)   # fn(batch on device) -> anything
    for batch in batches: ...                            # or next(batches) on an infinite loader

With a CUDA device, batch n+1 is taken from the loader and its copy (plus `transform`, e.g. the
padding of `perf.pad_to`) is queued on a side stream as soon as batch n is handed out. Memory
safety follows the CUDA semantics notes of PyTorch: the consumer's stream waits for the side
stream (`wait_stream`) before it touches a batch, and every tensor of the batch is marked as used
by the consumer's stream (`record_stream`), so the caching allocator does not hand its memory to
the side stream's next copy while the consumer's kernels may still read it. Host tensors are
pinned (if the DataLoader has not already done so) so `non_blocking` copies really are
asynchronous.

On any other device it is a transparent pass-through: the loader's items, moved to the device
(a no-op on the CPU) and transformed, in order, one at a time.

An exception raised by the loader while batch n+1 is being fetched is kept and raised when the
consumer asks for batch n+1, so the batches before it are all delivered first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

_END = object()


def tensors_of(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside `obj` (tensors, dataclasses such as Batch, lists, tuples, dicts)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from tensors_of(getattr(obj, f.name))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_of(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_of(v)


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """`obj` moved to `device`: objects with a `.to(device, non_blocking=...)` (Tensor, Batch,
    ImageBatch, Targets) use it; lists, tuples and dicts are walked; anything else is kept."""
    if isinstance(obj, torch.Tensor) or hasattr(obj, "to"):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    return obj


def _pin(obj: Any) -> None:
    """Pins the (large) host tensors of `obj` in place where they are dataclass fields, so
    their copies can overlap compute. Small tensors (polygons) are left pageable: pinning
    each costs more than its copy."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if isinstance(v, torch.Tensor):
                if v.device.type == "cpu" and v.numel() >= 4096 and not v.is_pinned():
                    setattr(obj, f.name, v.pin_memory())
            else:
                _pin(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _pin(v)


class Prefetcher:
    """Iterator over `batches` moved to `device` (and passed through `transform`), one ahead on
    a side CUDA stream when `device` is CUDA. See the module docstring.

    batches: any iterable (an infinite TrainLoader, a TestLoader, a generator).
    transform: applied to each batch after it is on the device (on the side stream with CUDA).
    overlap: False (`perf.prefetch=False`) makes it a pass-through on CUDA too: each batch is
      fetched and copied on the current stream when it is asked for.
    """

    def __init__(
        self,
        batches: Iterable,
        device: torch.device | str,
        transform: Callable[[Any], Any] | None = None,
        overlap: bool = True,
    ):
        self.device = torch.device(device)
        self.transform = transform
        self._source = batches
        self._it: Iterator | None = None
        self._cuda = overlap and self.device.type == "cuda"
        if self._cuda and not torch.cuda.is_available():
            raise RuntimeError(
                f"Prefetcher: device {self.device} requested but CUDA is not available"
            )
        self._stream = torch.cuda.Stream(self.device) if self._cuda else None
        self._next: Any = None  # the prefetched item, _END, or None before the first fetch
        self._error: BaseException | None = None

    def __iter__(self) -> Prefetcher:
        return self

    def _load(self, item: Any) -> Any:
        # Without the side stream, a plain (synchronizing) copy: pageable host memory makes
        # non_blocking pointless, and the caller uses the batch at once anyway.
        item = to_device(item, self.device, non_blocking=self._cuda)
        return self.transform(item) if self.transform is not None else item

    def _preload(self) -> None:
        """Takes the next item from the loader and queues its copy on the side stream."""
        try:
            item = next(self._it)
        except StopIteration:
            self._next = _END
            return
        except Exception as e:  # delivered after the batches already fetched
            self._next, self._error = _END, e
            return
        _pin(item)
        try:
            with torch.cuda.stream(self._stream):
                self._next = self._load(item)
        except Exception as e:  # a transform error is the item's error: raise it in order
            self._next, self._error = _END, e

    def __next__(self) -> Any:
        if self._it is None:
            self._it = iter(self._source)
            if self._cuda:
                self._preload()
        if not self._cuda:
            return self._load(next(self._it))  # non_blocking only with the side stream
        if self._next is _END:
            if self._error is not None:
                err, self._error = self._error, None
                raise err
            raise StopIteration
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self._stream)
        item = self._next
        for t in tensors_of(item):
            if t.device.type == "cuda":
                t.record_stream(current)
        self._preload()  # the copy of the next batch overlaps the caller's step
        return item
