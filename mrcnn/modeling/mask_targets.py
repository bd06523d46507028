"""Mask-head targets: each positive RoI's matched instance mask, cropped to the RoI and
resampled to M x M.

- Polygon instances go through `ops.polygons_to_masks`, which crops the polygons to the RoI,
  scales them to M x M and rasterizes their union (maskrcnn-benchmark's convention), so no
  full-image mask is ever built.
- RLE instances (`InstanceMasks.bitmasks`, full resized-image masks) are resampled with
  RoIAlign at scale 1, as torchvision's `project_masks_on_boxes` (soft targets in [0, 1]).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

import ops
from mrcnn.structures import InstanceMasks


def host_to_device(t: Tensor, device: torch.device) -> Tensor:
    """A host tensor on `device` without a host synchronisation: a blocking copy ends with a
    stream sync, a non-blocking one from pinned memory does not (the caching host allocator
    keeps the pinned block until the copy is done)."""
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


@dataclasses.dataclass
class PolygonTable:
    """The polygons of a batch's instances (numbered image by image), laid out for fixed-size
    gathers: each instance's coordinates are contiguous in `coords`.

    coords float32 [T] (x, y interleaved, on the device); per instance, on the device, `meta`
    int64 [G, 2 + max_polys]: coordinate start, coordinate count, then the end (relative to
    the instance's start) of each of its polygons, padded to max_polys with the count;
    `image_first` int64 [B + 1] (device) the first instance of each image; host ints
    max_polys and max_coords (the largest instance) size the gathers.
    """

    coords: Tensor
    meta: Tensor
    image_first: Tensor
    max_polys: int
    max_coords: int


def flatten_polygons(masks: Sequence[InstanceMasks | None], device: torch.device) -> PolygonTable:
    """All polygons of a batch as one PolygonTable. Everything but the coordinates is host
    metadata (the polygons' lengths), sent to the device in one non-blocking copy."""
    coords: list[Tensor] = []
    rows: list[list[int]] = []
    image_first = [0]
    start = 0
    for m in masks:
        for polys in [] if m is None else m.polygons:
            ends = list(itertools.accumulate(int(p.numel()) for p in polys))
            rows.append([start, ends[-1] if ends else 0] + ends)
            coords.extend(p.reshape(-1) for p in polys)
            start += ends[-1] if ends else 0
        image_first.append(len(rows))
    max_polys = max([1] + [len(r) - 2 for r in rows])
    max_coords = max([2] + [r[1] for r in rows])
    # Pad each instance's polygon ends with its coordinate count (empty trailing polygons).
    meta = [r + [r[1]] * (max_polys + 2 - len(r)) for r in rows]
    host = torch.tensor([v for r in meta for v in r] + image_first, dtype=torch.int64)
    host = host_to_device(host, device)
    g = len(rows)
    return PolygonTable(
        torch.cat(coords).to(device=device, dtype=torch.float32)
        if coords
        else torch.zeros(0, dtype=torch.float32, device=device),
        host[: g * (max_polys + 2)].reshape(g, max_polys + 2),
        host[g * (max_polys + 2) :],
        max_polys,
        max_coords,
    )


def polygon_targets(
    rois: Tensor, instance: Tensor, table: PolygonTable, mask_size: int
) -> Tensor:
    """rois [R, 4] (xyxy, image pixels) with the global instance index of each [R] into the
    table -> float32 [R, M, M] rasterized targets (zeros for instances without polygons).

    Fixed size: every RoI gets `max_coords` coordinates in `max_polys + 1` polygons: its own
    polygons unchanged, empty ones (skipped by the rasteriser) up to max_polys, and a last one
    over the rest of the block, filled with copies of the last vertex: all its edges have zero
    length, cross no scanline, and add nothing to the raster.
    """
    r = rois.shape[0]
    meta = table.meta[instance]  # [R, 2 + max_polys]
    first, count = meta[:, 0:1], meta[:, 1:2]
    block = 2 * (table.max_coords // 2)
    point = torch.minimum(torch.arange(block // 2, device=rois.device)[None], count // 2 - 1)
    cidx = (first + 2 * point.clamp(min=0))[..., None] + torch.arange(2, device=rois.device)
    coords = table.coords[cidx.clamp(max=max(table.coords.shape[0] - 1, 0))].reshape(r, -1)
    coords = torch.where(count > 0, coords, torch.zeros_like(coords))  # no polygon: nothing
    ends = torch.cat([meta[:, 2:], torch.full_like(count, block)], dim=1)
    start = block * torch.arange(r, device=rois.device)[:, None]
    poly_offsets = torch.cat([ends.new_zeros(1), (start + ends).reshape(-1)])
    roi_offsets = (table.max_polys + 1) * torch.arange(r + 1, device=rois.device)
    return ops.polygons_to_masks(
        coords.reshape(-1), poly_offsets, roi_offsets, rois.float(), mask_size
    )


def bitmask_targets(
    bitmasks: Tensor, rois: Tensor, instance: Tensor, mask_size: int, aligned: bool = False
) -> Tensor:
    """torchvision's project_masks_on_boxes: bitmasks uint8/bool [N, H, W] of one image, rois
    [R, 4] and the instance index of each [R] -> float32 [R, M, M]."""
    boxes = torch.cat([instance.to(torch.float32)[:, None], rois.float()], dim=1)
    src = bitmasks[:, None].to(torch.float32)
    return ops.roi_align(src, boxes, (mask_size, mask_size), 1.0, -1, aligned)[:, 0]


def mask_targets(
    rois: Tensor,
    batch_idx: Tensor,
    matched_gt: Tensor,
    gt_masks: Sequence[InstanceMasks | None],
    mask_size: int,
    aligned: bool = False,
    valid: Tensor | None = None,
) -> Tensor:
    """Targets of the positive RoIs: rois float32 [R, 4], batch_idx int64 [R], matched_gt int64
    [R] (instance index within its image), valid bool [R] (None: all) -> float32 [R, M, M] in
    [0, 1]; zeros in invalid rows and in rows of images without masks (the caller checks that
    an image with ground truth has masks: checking rows here would read the device).

    Without host synchronisation: polygon targets for every row, RLE targets per image that has
    bitmasks, each kept where the row's instance is of that kind.
    """
    r = rois.shape[0]
    counts = [0 if m is None else len(m) for m in gt_masks]
    for i, m in enumerate(gt_masks):
        if m is not None and m.bitmasks is None and not all(m.is_polygon()):
            raise ValueError(f"image {i}: an instance has neither polygons nor a bitmask")
    if r == 0 or sum(counts) == 0:
        return torch.zeros((r, mask_size, mask_size), dtype=torch.float32, device=rois.device)
    table = flatten_polygons(gt_masks, rois.device)
    num_images = len(gt_masks)
    img = batch_idx.clamp(0, num_images - 1)
    first = table.image_first[img]
    inside = (matched_gt >= 0) & (matched_gt < table.image_first[img + 1] - first)
    if valid is not None:
        inside = inside & valid
    instance = (first + matched_gt).clamp(0, sum(counts) - 1)
    if table.coords.numel():
        out = polygon_targets(rois, instance, table, mask_size)
    else:
        out = torch.zeros((r, mask_size, mask_size), dtype=torch.float32, device=rois.device)
    is_poly = table.meta[instance, 1] > 0
    for i, m in enumerate(gt_masks):
        if m is None or m.bitmasks is None:
            continue
        local = matched_gt.clamp(0, len(m) - 1)
        bits = bitmask_targets(m.bitmasks, rois, local, mask_size, aligned)
        out = torch.where(((batch_idx == i) & ~is_poly)[:, None, None], bits, out)
    return torch.where(inside[:, None, None], out, torch.zeros_like(out))
