"""Parity of an artifact against the eager DeployModel, per image.

Figures over all images: whether the labels are identical (same detections, same order), the
largest box coordinate difference (px), the largest score difference and the smallest mask IoU
of matched detections (two empty masks count as IoU 1). `passes` applies the tolerances.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# The tolerances for the torch artifacts (.pt2, AOTInductor: the same kernels).
TORCH_TOLERANCES = {"box_px": 1e-3, "score": 1e-4, "mask_iou": 0.99}
# ONNX Runtime: the same on boxes and scores, and on the mean mask IoU; the smallest IoU of one
# mask can be lower: pasting truncates the grown box to integers (torchvision's rule), so a
# box coordinate 1e-5 px away from eager's, across an integer, moves a whole mask by a pixel,
# which costs a small mask several % of IoU.
ONNX_TOLERANCES = dict(TORCH_TOLERANCES, mask_iou=0.9, mean_mask_iou=0.99)


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """uint8/bool [K, H, W] pairs -> IoU [K]; 1 where both are empty."""
    a, b = a.bool().flatten(1), b.bool().flatten(1)
    inter = (a & b).sum(1).double()
    union = (a | b).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def compare(want: Sequence[dict], got: Sequence[dict]) -> dict:
    """Parity figures of `got` against `want` (lists of per-image Predictor dicts)."""
    fig = {"images": len(want), "detections": 0, "labels_identical": len(want) == len(got),
           "max_box_px": 0.0, "max_score": 0.0, "min_mask_iou": 1.0, "mean_mask_iou": 1.0}
    ious = []
    for w, g in zip(want, got):
        fig["detections"] += int(w["labels"].numel())
        if w["labels"].shape != g["labels"].shape or not torch.equal(w["labels"], g["labels"]):
            fig["labels_identical"] = False
            continue
        if w["labels"].numel() == 0:
            continue
        fig["max_box_px"] = max(fig["max_box_px"],
                                float((w["boxes"] - g["boxes"]).abs().max()))
        fig["max_score"] = max(fig["max_score"],
                               float((w["scores"] - g["scores"]).abs().max()))
        ious.append(mask_iou(w["masks"], g["masks"]))
    if ious:
        iou = torch.cat(ious)
        fig["min_mask_iou"], fig["mean_mask_iou"] = float(iou.min()), float(iou.mean())
    return fig


def passes(fig: dict, tol: dict) -> bool:
    """tol: box_px, score, mask_iou (the smallest IoU), optionally mean_mask_iou."""
    return bool(fig["labels_identical"] and fig["max_box_px"] <= tol["box_px"]
                and fig["max_score"] <= tol["score"] and fig["min_mask_iou"] >= tol["mask_iou"]
                and fig["mean_mask_iou"] >= tol.get("mean_mask_iou", 0.0))


def parity_batches(input_cfg, seed: int = 0) -> list[list[Tensor]]:
    """The synthetic parity set: batch 1 and batch 3, mixed sizes and orientations (square,
    landscape, portrait), every size within the program's limits (program.check_size)."""
    from mrcnn.export.program import check_size

    s = int(input_cfg.min_size_test)
    # (1.4375 s, 0.875 s): at the shapes tiny test sizes (160 / 256) the long side is capped and
    # int(230 * (256 / 230)) is where float32 size arithmetic would differ from eager's doubles.
    sizes = [[(s, s)], [(s, int(s * 1.5)), (int(s * 1.4375), int(s * 0.875)), (s, int(s * 1.5))],
             [(int(s * 0.7), int(s * 0.9))]]
    for batch in sizes:
        for h, w in batch:
            check_size(h, w, input_cfg)
    return [synthetic_images(b, seed + i) for i, b in enumerate(sizes)]


def synthetic_images(sizes, seed: int = 0) -> list[Tensor]:
    """uint8 [3, h, w] images: smooth colour fields with noise, so there are edges to find."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        base = torch.rand((3, h // 8 + 1, w // 8 + 1), generator=g)
        img = torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear")[0]
        img = img + 0.1 * torch.rand((3, h, w), generator=g)
        out.append((img.clamp(0, 1) * 255).to(torch.uint8))
    return out


def measure(reference, candidate, batches: Sequence[Sequence[Tensor]]) -> dict:
    """compare() of two Predictors over `batches` (each one call), merged into one figure."""
    want, got = [], []
    for images in batches:
        want += reference(list(images))
        got += candidate(list(images))
    return compare(want, got)
