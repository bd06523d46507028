"""AOTInductor: the exported program compiled ahead of time into a package (.pt2 zip of a
shared library and its weights) that torch loads from Python (`aoti_load_package`) or C++
(`torch::inductor::AOTIModelPackageLoader`, examples/cpp), no Python model code involved.

The package calls our operators through torch's dispatcher, so the process that runs it must
have loaded the operator library: `import ops` here, `torch.ops.load_library(<the shipped
library>)` elsewhere, `dlopen` in C++ (the export folder carries a copy, see runner.py).
"""

from __future__ import annotations

import os

import torch

# Inductor's layout optimisation is off: it feeds the mask head's convolutions channels_last
# inputs, and their batch is the data-dependent number of detections (an unbacked size). For
# such a tensor Inductor cannot decide the memory format the convolution will return and plans
# the next kernels for a contiguous output, while the convolution returns channels_last. The
# package checks no strides at run time, so every mask was computed from scrambled features
# (mask IoU ~0.75 against eager, boxes and scores unaffected). Without it the convolutions keep
# the .pt2 program's contiguous layout (tests/export/test_aoti_ops.py).
INDUCTOR_CONFIGS = {"layout_optimization": False}
# A bfloat16 program (export.dtype): Inductor keeps float32 inside its fused kernels where eager
# rounds every op's output to bf16, which put a package of the tests' tiny model 48 px / 8.9e-3
# in score away from the eager bf16 model. Emulating the casts rounds where eager rounds: the
# same package then matched eager bf16 exactly on boxes and scores (mask IoU min 0.996).
BFLOAT16_CONFIGS = {"emulate_precision_casts": True}


def inductor_configs(dtype: str = "float32", **configs) -> dict:
    """The torch._inductor.config settings a package is compiled with: `configs`, then
    INDUCTOR_CONFIGS and (for a bfloat16 program) BFLOAT16_CONFIGS, which always apply."""
    return {**configs, **INDUCTOR_CONFIGS, **(BFLOAT16_CONFIGS if dtype == "bfloat16" else {})}


def compile_package(ep: torch.export.ExportedProgram, path: str, dtype: str = "float32",
                    **configs) -> str:
    """aoti_compile_and_package of `ep` for its device (the CPU here) into `path`; `dtype`:
    the program's export.dtype; `configs`: further torch._inductor.config settings."""
    if os.path.exists(path):
        os.remove(path)  # the packager appends to an existing zip
    return torch._inductor.aoti_compile_and_package(
        ep, package_path=path, inductor_configs=inductor_configs(dtype, **configs))


def load_package(path: str):
    """The package's runner: callable(images uint8 [B, 3, H, W]) -> list of the 5 outputs."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such AOTInductor package")
    return torch._inductor.aoti_load_package(path)
