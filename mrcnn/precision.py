"""Numeric precision of a run: the `dtype` config names and the autocast that goes with them.

Imports nothing else from the project, so every layer (model building, the fast paths, the
modes) can use it without an import circle.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# `config.dtype` may also be "auto": bfloat16 where the device computes it natively, else float32.
NAMES = tuple(DTYPES) + ("auto",)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `config.dtype` name; an unknown name is a ValueError naming it."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r}: expected one of {sorted(DTYPES)}") from None


def native_bfloat16(device: torch.device | str) -> bool:
    """Whether `device` has bfloat16 matrix hardware: CUDA compute capability >= 8.0, or a CPU
    with AMX or AVX512-BF16 (oneDNN's bfloat16 kernels). Elsewhere bfloat16 is emulated and
    slower than float32, so "auto" must not pick it there."""
    device_type = device if isinstance(device, str) else device.type
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        # Private but stable since torch 2.1; a torch without them is treated as "no".
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def resolve(name: str, device: torch.device | str) -> str:
    """The concrete dtype name a run uses: `name` itself, or for "auto" "bfloat16" where
    `native_bfloat16(device)` and "float32" elsewhere. An unknown name is a ValueError."""
    if name == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    torch_dtype(name)
    return name


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
