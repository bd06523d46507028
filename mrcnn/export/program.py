"""torch.export of a DeployModel: one program with a dynamic batch and image size.

What bounds the dynamic sizes (they are recorded in the program and checked when it runs):
- every pyramid level must have at least 2 cells: a level of size 1 would be a different
  program (size-1 dimensions broadcast), so the padded canvas is at least 96 px a side (P6 =
  ceil(canvas / 64) >= 2), i.e. the resized short side is over 64 px (`check_size` says so
  before the program's own assertion would);
- the example input is chosen with all sizes distinct and > 1 (B = 2, H != W, canvas H != W), so
  tracing does not specialise any of them.
"""

from __future__ import annotations

import math

import torch
from torch.export import Dim

MIN_CANVAS = 96  # px: P6 = ceil(canvas / 64) >= 2 cells
MAX_SIDE = 8192  # px of an input image side accepted by the program
MAX_BATCH = 64


def resized_canvas(h: int, w: int, input_cfg) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized (h, w), padded canvas (h, w)) of an h x w image: the data pipeline's rule."""
    scale = min(float(input_cfg.min_size_test) / min(h, w),
                float(input_cfg.max_size_test) / max(h, w))
    rh, rw = int(h * scale), int(w * scale)
    d = max(int(input_cfg.size_divisibility), 1)
    return (rh, rw), (math.ceil(rh / d) * d, math.ceil(rw / d) * d)


def check_size(h: int, w: int, input_cfg) -> None:
    """ValueError for an image size the program was not traced for."""
    _, (ch, cw) = resized_canvas(h, w, input_cfg)
    if min(ch, cw) < MIN_CANVAS or max(h, w) > MAX_SIDE:
        raise ValueError(
            f"an image of {h}x{w} pads to a {ch}x{cw} canvas: the exported program needs a "
            f"canvas side >= {MIN_CANVAS} px (input.min_size_test / input.max_size_test) and "
            f"image sides <= {MAX_SIDE} px")


def example_input(input_cfg) -> torch.Tensor:
    """A uint8 [2, 3, h, w] batch whose sizes are all distinct and whose canvas is generic."""
    m = float(input_cfg.min_size_test)
    for h in range(int(m), 16, -1):  # a landscape image just over the short side's target
        w = int(h * 1.4) + 3
        _, (ch, cw) = resized_canvas(h, w, input_cfg)
        if h != w and ch != cw and min(ch, cw) >= MIN_CANVAS and len({2, 3, h, w}) == 4:
            g = torch.Generator().manual_seed(0)
            return torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=g)
    raise ValueError(
        f"config.input.min_size_test={input_cfg.min_size_test}: export needs test sizes "
        f"that pad to a canvas of at least {MIN_CANVAS} px")


def dynamic_shapes() -> dict:
    batch = Dim("batch", min=1, max=MAX_BATCH)
    height = Dim("height", min=16, max=MAX_SIDE)
    width = Dim("width", min=16, max=MAX_SIDE)
    return {"images": {0: batch, 2: height, 3: width}}


def export_program(deploy: torch.nn.Module, input_cfg) -> torch.export.ExportedProgram:
    """torch.export.export of `deploy` (a DeployModel in eval mode) with dynamic B, H, W."""
    with torch.no_grad():
        return torch.export.export(
            deploy, (example_input(input_cfg),), dynamic_shapes=dynamic_shapes(), strict=False)
