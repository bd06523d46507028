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


def compile_package(ep: torch.export.ExportedProgram, path: str) -> str:
    """aoti_compile_and_package of `ep` for its device (the CPU here) into `path`."""
    if os.path.exists(path):
        os.remove(path)  # the packager appends to an existing zip
    return torch._inductor.aoti_compile_and_package(ep, package_path=path)


def load_package(path: str):
    """The package's runner: callable(images uint8 [B, 3, H, W]) -> list of the 5 outputs."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such AOTInductor package")
    return torch._inductor.aoti_load_package(path)
