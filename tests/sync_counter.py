"""Counting the host synchronisations a step would make on a GPU, on a machine without one.

Method: a *stand-in device*. Every tensor that would live on the accelerator (the model's
parameters and buffers, the batch after the loader's copy, and everything computed from them or
created with `device=` that device) is a `DeviceTensor`: a wrapper subclass whose metadata says
device "meta" while a real CPU tensor inside holds the values, so the step runs for real and its
data-dependent control flow is the true one. Tensors created without a device (Python lists,
sizes, counters) stay plain CPU tensors: they are host tensors, exactly as on a GPU, and reading
them costs nothing. "meta" is used because it has no runtime to initialise (a "cuda" wrapper
would make PyTorch's bindings start the CUDA driver) and the extension treats it as a device
with compiled kernels, as a CUDA build would (`ops.has_kernels`), so the same code paths run.

`SyncCounter`, a `TorchDispatchMode`, sees every aten / custom op of the step, forward and
backward (autograd's backward ops are dispatched too), unwraps the stand-ins, runs the CPU
kernel, and re-wraps the outputs. It records an op as a sync when on a CUDA device it would make
the host wait for the device:
- `item`: aten._local_scalar_dense of a device tensor (`.item()`, `int()`, `float()`,
  `bool(t)` and `if t:` all end there);
- `tolist` / `numpy`: a device tensor read into Python (methods of the wrapper);
- `nonzero`, `bool_index` (index / index_put with a bool or uint8 mask: its CUDA kernel runs
  nonzero), `masked_select`, `masked_scatter`, `unique` (every variant), `repeat_interleave`
  without `output_size`, `bincount` (its CUDA kernel reads the maximum), `histc` without a
  range, `equal`, `nms` (the extension's NMS: the output size is decided on the host);
- `d2h_copy`: a device tensor copied to the host (`.cpu()`, `.to("cpu")`, `copy_`);
- `h2d_blocking`: a host tensor copied to the device without `non_blocking=True` (PyTorch's
  blocking copy ends with a stream synchronisation), including `torch.tensor(data,
  device=...)` and indexing a device tensor with host indices (moved inside the op).
A 0-dim host tensor mixed into a device op is a kernel argument on CUDA, not a copy, and is
free. Any other mix of device and host tensors in one op is an error on CUDA; it is recorded
in `mismatches` rather than raised, so a count can still be taken. `events` keeps the Python
frame of the model code that caused each sync, to find it.

Limits: ops inside a custom kernel are invisible (the extension's kernels are fixed-size except
NMS); a sync made by the CUDA caching allocator or by cudnn's autotuner is not modelled.
"""

from __future__ import annotations

import collections
import traceback
from collections.abc import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = torch.device("meta")
aten = torch.ops.aten

# aten ops whose CUDA kernels read a device value on the host before they can finish.
_ALWAYS_SYNC = {
    aten.nonzero.default: "nonzero",
    aten.nonzero.out: "nonzero",
    aten.masked_select.default: "masked_select",
    aten.masked_scatter.default: "masked_scatter",
    aten.masked_scatter_.default: "masked_scatter",
    aten._unique.default: "unique",
    aten._unique2.default: "unique",
    aten.unique_dim.default: "unique",
    aten.unique_consecutive.default: "unique",
    aten.unique_dim_consecutive.default: "unique",
    aten.bincount.default: "bincount",
    aten.equal.default: "equal",
    aten._local_scalar_dense.default: "item",
}
_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
              aten._index_put_impl_.default}
_CUSTOM_DYNAMIC = {"mrcnn::nms", "mrcnn::batched_nms"}  # their fake kernels: dynamic size
_COPIES = {aten._to_copy.default, aten.copy_.default, aten.lift_fresh.default,
           aten.lift_fresh_copy.default}


class DeviceTensor(torch.Tensor):
    """A tensor on the stand-in device; `inner` holds its values on the CPU."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(),
            dtype=inner.dtype, device=DEVICE, requires_grad=inner.requires_grad,
        )
        out.inner = inner
        return out

    def __repr__(self) -> str:
        return f"DeviceTensor({self.inner!r})"

    # Python reads that never reach the dispatcher.
    def tolist(self):
        _record_active("tolist")
        return self.inner.tolist()

    def numpy(self, *args, **kwargs):
        _record_active("numpy")
        return self.inner.numpy(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        # Outside a SyncCounter (reading results): compute, count nothing. Code that creates
        # tensors on the stand-in device (factories with device=) must run inside one.
        return _dispatch(func, args, kwargs or {}, None)


def _unwrap(x):
    return x.inner if isinstance(x, DeviceTensor) else x


def _wrap_outputs(out, args):
    """Outputs of an op that touched the device, as stand-ins; an in-place op's output is the
    very input it mutated."""
    by_inner = {id(a.inner): a for a in tree_flatten(args)[0] if isinstance(a, DeviceTensor)}

    def wrap(t):
        if not isinstance(t, torch.Tensor) or isinstance(t, DeviceTensor):
            return t
        same = by_inner.get(id(t))
        return DeviceTensor(t) if same is None else same

    return tree_map(wrap, out)


def _is_device(x) -> bool:
    return isinstance(x, (torch.device, str)) and torch.device(x).type == DEVICE.type


def _dispatch(func, args, kwargs, counter: SyncCounter | None):
    """Runs `func` on the CPU values and wraps the outputs that land on the stand-in device:
    those of ops with a device input, of factories given the device, of copies to it."""
    flat = tree_flatten((args, kwargs))[0]
    dev = [a for a in flat if isinstance(a, DeviceTensor)]
    host = [a for a in flat if isinstance(a, torch.Tensor) and not isinstance(a, DeviceTensor)]
    # None: the op keeps its inputs' device; else whether its output goes to the device.
    target = _is_device(kwargs["device"]) if kwargs.get("device") is not None else None
    if counter is not None:
        counter._classify(func, args, kwargs, dev, host, target)
    if target:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
    if func is aten.copy_.default:
        return args[0]
    if target is not None:
        return _wrap_outputs(out, args) if target else out
    return _wrap_outputs(out, args) if dev else out


_ACTIVE: list[SyncCounter] = []
_FROM_DATA = (torch.tensor, torch.as_tensor, torch.asarray)


class _FromDataMode(TorchFunctionMode):
    """torch.tensor(data, device=...) builds a real "meta" tensor without dispatching a copy:
    build it on the CPU instead; on CUDA this is a blocking host-to-device copy."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FROM_DATA and _is_device(kwargs.get("device")):
            _record_active("h2d_blocking")
            return DeviceTensor(func(*args, **{**kwargs, "device": torch.device("cpu")}))
        return func(*args, **kwargs)



def _record_active(kind: str) -> None:
    if _ACTIVE:
        _ACTIVE[-1]._record(kind)


class SyncCounter(TorchDispatchMode):
    """Counts the would-be host syncs of the ops run inside it (see the module docstring).

    counts: Counter kind -> number; events: list of (kind, "file:line function") of the first
    frame outside torch; mismatches: ops that mixed device and host tensors (an error on CUDA).
    """

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.events: list[tuple[str, str]] = []
        self.mismatches: list[str] = []
        self.ops: collections.Counter[str] = collections.Counter()  # every op seen, by name

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __enter__(self):
        _ACTIVE.append(self)
        self._from_data = _FromDataMode()
        self._from_data.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        self._from_data.__exit__(*exc)
        _ACTIVE.remove(self)
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {}, self)

    def _record(self, kind: str) -> None:
        self.counts[kind] += 1
        self.events.append((kind, _caller()))

    def by_file(self) -> collections.Counter[str]:
        """Syncs per source file of the frame that caused them."""
        return collections.Counter(where.split(":")[0] for _, where in self.events)

    def _classify(self, func, args, kwargs, dev, host, target) -> None:
        self.ops[func._schema.name] += 1
        if func in _COPIES:
            self._classify_copy(func, args, kwargs, target)
            return
        if not dev:
            return
        name = func._schema.name
        if func in _ALWAYS_SYNC:
            self._record(_ALWAYS_SYNC[func])
        elif name in _CUSTOM_DYNAMIC:
            self._record("nms")
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self._record("repeat_interleave")
        elif func is aten.histc.default and _histc_needs_range(args, kwargs):
            self._record("histc")
        elif func in _INDEX_OPS:
            self._classify_index(args)
            return
        if any(h.dim() > 0 for h in host):
            self.mismatches.append(f"{name} at {_caller()}")

    def _classify_index(self, args) -> None:
        indices = [i for i in args[1] if i is not None]
        if any(i.dtype in (torch.bool, torch.uint8) for i in indices):
            self._record("bool_index")
        if isinstance(args[0], DeviceTensor) and any(
            not isinstance(i, DeviceTensor) for i in indices
        ):
            self._record("h2d_blocking")  # host indices are copied to the device inside

    def _classify_copy(self, func, args, kwargs, target) -> None:
        src = args[1] if func is aten.copy_.default else args[0]
        src_dev = isinstance(src, DeviceTensor)
        if func is aten.copy_.default:
            dst_dev = isinstance(args[0], DeviceTensor)
            non_blocking = bool(args[2]) if len(args) > 2 else kwargs.get("non_blocking", False)
        else:
            dst_dev = src_dev if target is None else target
            non_blocking = kwargs.get("non_blocking", False)
        if src_dev and not dst_dev:
            self._record("d2h_copy")
        elif dst_dev and not src_dev and not non_blocking:
            self._record("h2d_blocking")


def _histc_needs_range(args, kwargs) -> bool:
    lo = args[2] if len(args) > 2 else kwargs.get("min", 0)
    hi = args[3] if len(args) > 3 else kwargs.get("max", 0)
    return lo == hi  # the CUDA kernel then reads the input's min and max


def _caller() -> str:
    """The innermost frame of this repository's code (not torch's, not this file's)."""
    for frame in reversed(traceback.extract_stack()[:-1]):
        f = frame.filename
        # The extension's Python wrappers (ops/) are charged to the model code calling them.
        if "/torch/" in f or f.endswith("sync_counter.py") or "/site-packages/" in f or (
            f.rsplit("/", 2)[-2] == "ops"
        ):
            continue
        return f"{f.rsplit('/', 3)[-2]}/{f.rsplit('/', 1)[-1]}:{frame.lineno} {frame.name}"
    return "?"


# ----------------------------------------------------------------------------- steps


def to_device(module: nn.Module) -> nn.Module:
    """Moves a module's parameters and buffers onto the stand-in device, in place."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = nn.Parameter(DeviceTensor(p.detach()), p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = DeviceTensor(b)
    return module


def to_device_batch(*objs):
    """The loader's copy of a batch (`.to(device, non_blocking=True)`), outside any count."""
    with SyncCounter():
        return tuple(o.to(DEVICE, non_blocking=True) for o in objs)


def count(fn: Callable[[], object]) -> tuple[SyncCounter, object]:
    """Runs fn() under a SyncCounter -> (counter, fn's result)."""
    with SyncCounter() as counter:
        out = fn()
    return counter, out
