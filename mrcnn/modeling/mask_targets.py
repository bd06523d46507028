"""Mask-head targets: each positive RoI's matched instance mask, cropped to the RoI and
resampled to M x M.

- Polygon instances go through `ops.polygons_to_masks`, which crops the polygons to the RoI,
  scales them to M x M and rasterizes their union (maskrcnn-benchmark's convention), so no
  full-image mask is ever built.
- RLE instances (`InstanceMasks.bitmasks`, full resized-image masks) are resampled with
  RoIAlign at scale 1, as torchvision's `project_masks_on_boxes` (soft targets in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

import ops
from mrcnn.structures import InstanceMasks


def _segment_arange(lengths: Tensor, total: int) -> Tensor:
    """[0..l0-1, 0..l1-1, ...] for int64 lengths summing to `total`."""
    starts = torch.cumsum(lengths, 0) - lengths
    return torch.arange(total, device=lengths.device) - torch.repeat_interleave(
        starts, lengths, output_size=total
    )


def flatten_polygons(
    masks: Sequence[InstanceMasks | None], device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """All instances of a batch as one polygon table (instances numbered image by image).

    Returns coords float32 [T] (x, y interleaved), poly_start int64 [P], poly_len int64 [P]
    (coordinate ranges of each polygon), inst_first int64 [G], inst_npoly int64 [G] (the
    polygons of instance g are inst_first[g] .. + inst_npoly[g]; 0 for RLE instances).
    """
    coords: list[Tensor] = []
    poly_len: list[int] = []
    inst_first: list[int] = []
    inst_npoly: list[int] = []
    for m in masks:
        if m is None:
            continue
        for polys in m.polygons:
            inst_first.append(len(poly_len))
            inst_npoly.append(len(polys))
            for p in polys:
                coords.append(p.reshape(-1))
                poly_len.append(int(p.numel()))
    i64 = dict(dtype=torch.int64, device=device)
    lens = torch.tensor(poly_len, dtype=torch.int64).to(device)
    return (
        torch.cat(coords).to(device=device, dtype=torch.float32)
        if coords
        else torch.zeros(0, dtype=torch.float32, device=device),
        torch.cumsum(lens, 0) - lens,
        lens,
        torch.tensor(inst_first, dtype=torch.int64).to(**i64),
        torch.tensor(inst_npoly, dtype=torch.int64).to(**i64),
    )


def polygon_targets(
    rois: Tensor,
    instance: Tensor,
    table: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    mask_size: int,
) -> Tensor:
    """rois [R, 4] (xyxy, image pixels) with the global instance index of each [R] into the
    `flatten_polygons` table -> float32 [R, M, M] rasterized targets."""
    coords, poly_start, poly_len, inst_first, inst_npoly = table
    npoly = inst_npoly[instance]
    roi_poly_offsets = torch.cat([npoly.new_zeros(1), torch.cumsum(npoly, 0)])
    total_polys = int(roi_poly_offsets[-1])
    src = torch.repeat_interleave(inst_first[instance], npoly, output_size=total_polys)
    src = src + _segment_arange(npoly, total_polys)
    lens = poly_len[src]
    poly_offsets = torch.cat([lens.new_zeros(1), torch.cumsum(lens, 0)])
    total_coords = int(poly_offsets[-1])
    cidx = torch.repeat_interleave(poly_start[src], lens, output_size=total_coords)
    cidx = cidx + _segment_arange(lens, total_coords)
    return ops.polygons_to_masks(
        coords[cidx], poly_offsets, roi_poly_offsets, rois.float(), mask_size
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
) -> Tensor:
    """Targets of the positive RoIs: rois float32 [R, 4], batch_idx int64 [R], matched_gt int64
    [R] (instance index within its image) -> float32 [R, M, M] in [0, 1]."""
    device = rois.device
    r = rois.shape[0]
    out = torch.zeros((r, mask_size, mask_size), dtype=torch.float32, device=device)
    if r == 0:
        return out
    for i, m in enumerate(gt_masks):
        if m is None and bool((batch_idx == i).any()):
            raise ValueError(f"image {i} has positive RoIs but its targets carry no masks")
    counts = [0 if m is None else len(m) for m in gt_masks]
    base = torch.tensor([0] + counts[:-1], dtype=torch.int64).cumsum(0).to(device)
    instance = base[batch_idx] + matched_gt
    is_poly = torch.tensor(
        [p for m in gt_masks if m is not None for p in m.is_polygon()], dtype=torch.bool
    ).to(device)
    poly_rows = torch.nonzero(is_poly[instance]).squeeze(1)
    if poly_rows.numel():
        table = flatten_polygons(gt_masks, device)
        out[poly_rows] = polygon_targets(rois[poly_rows], instance[poly_rows], table, mask_size)
    if poly_rows.numel() < r:
        for i, m in enumerate(gt_masks):
            rows = torch.nonzero((batch_idx == i) & ~is_poly[instance]).squeeze(1)
            if rows.numel() == 0:
                continue
            if m is None or m.bitmasks is None:
                raise ValueError(f"image {i}: an instance has neither polygons nor a bitmask")
            out[rows] = bitmask_targets(
                m.bitmasks, rois[rows], matched_gt[rows], mask_size, aligned
            )
    return out
