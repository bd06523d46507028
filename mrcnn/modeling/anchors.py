"""Anchor boxes: the reference boxes the RPN scores and regresses, one set per feature level.

Conventions (torchvision's AnchorGenerator, so its RPN weights apply unchanged):
- aspect ratio = height / width; a cell anchor of size s and ratio r has h = s * sqrt(r),
  w = s / sqrt(r), centred on 0, rounded to integers;
- cell anchors are ordered ratio-major, size-minor; on the grid the order is (y, x, anchor),
  which is the order of the RPN head's outputs after `permute(0, 2, 3, 1)`;
- the stride of a level is `padded_image_size // feature_size` per axis (integer division: a
  P6 of 13 cells over 800 pixels has stride 61, as in torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

import ops


def cell_anchors(
    sizes: Sequence[float], aspect_ratios: Sequence[float], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Zero-centred anchors [len(ratios) * len(sizes), 4] xyxy, rounded to integers."""
    scales = torch.as_tensor(sizes, dtype=dtype)
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def level_strides(
    image_size: tuple[int, int], grid_sizes: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """torchvision's stride rule: padded image size // feature size, per axis."""
    return [(image_size[0] // g[0], image_size[1] // g[1]) for g in grid_sizes]


class AnchorCache:
    """Anchors for a set of feature shapes, computed once per (shapes, device) and reused.

    Anchors depend only on the padded batch size and the feature-map sizes, which repeat from
    batch to batch (aspect-ratio grouping, fixed test sizes); regenerating them every step is
    pure overhead. The cache is bounded so that multi-scale training cannot grow it forever.
    """

    def __init__(
        self,
        sizes_per_level: Sequence[Sequence[float]],
        aspect_ratios: Sequence[float],
        strides: Sequence[int | None] | None = None,
        max_entries: int = 16,
    ):
        self.cells = [cell_anchors(s, aspect_ratios) for s in sizes_per_level]
        self.fixed_strides = strides
        self.max_entries = max_entries
        self._cache: dict[tuple, list[Tensor]] = {}

    @property
    def num_anchors_per_location(self) -> list[int]:
        return [c.shape[0] for c in self.cells]

    def __call__(
        self,
        image_size: tuple[int, int],
        grid_sizes: Sequence[tuple[int, int]],
        device: torch.device,
    ) -> list[Tensor]:
        """Per-level anchors, float32 [h_l * w_l * A_l, 4], for a padded batch of `image_size`."""
        if len(grid_sizes) != len(self.cells):
            raise ValueError(
                f"{len(grid_sizes)} feature levels but anchor sizes for {len(self.cells)}"
            )
        key = (tuple(image_size), tuple(tuple(g) for g in grid_sizes), str(device))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        strides = level_strides(image_size, grid_sizes)
        if self.fixed_strides is not None:
            strides = [
                (s, s) if s is not None else st for s, st in zip(self.fixed_strides, strides)
            ]
        # Normal tensors even when first built under inference_mode, so that a cache filled
        # during evaluation still serves training.
        with torch.inference_mode(False):
            anchors = [
                # (y, x, anchor) order, cell centres at (x * sx, y * sy): torchvision's layout.
                ops.grid_anchors(c.to(device, non_blocking=True), g[0], g[1], st)
                for c, g, st in zip(self.cells, grid_sizes, strides)
            ]
        if len(self._cache) >= self.max_entries:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = anchors
        return anchors
