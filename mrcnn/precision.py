"""Numeric precision of a run: the `dtype` config names and the autocast that goes with them.

Imports nothing else from the project, so every layer (model building, the fast paths, the
modes) can use it without an import circle.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `config.dtype` name; an unknown name is a ValueError naming it."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r}: expected one of {sorted(DTYPES)}") from None


def autocast(device: torch.device | str, dtype: str, cache_enabled: bool = True):
    """torch.autocast for "bfloat16" / "float16", a no-op context for "float32".

    CUDA graphs need cache_enabled=False: a cached cast of a weight is freed when autocast
    exits, under a graph that still reads it."""
    torch_dtype(dtype)  # validate the name for every dtype, float32 included
    if dtype == "float32":
        return contextlib.nullcontext()
    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type=device_type, dtype=DTYPES[dtype],
                          cache_enabled=cache_enabled)


def autocast_state(device_type: str = "cuda") -> torch.dtype | None:
    """The autocast dtype in effect for `device_type`, None when autocast is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def autocast_dtype(dtype: str) -> torch.dtype | None:
    """What `autocast_state()` reports inside `autocast(device, dtype)`."""
    return None if dtype == "float32" else torch_dtype(dtype)
