"""Parity of an artifact against the eager DeployModel, per image, independent of order.

Detections are matched one to one within each image, not by position: an artifact may emit
near-tied detections in another order (ONNX Runtime on a randomly initialised R-50 did). Eager
detections, by decreasing score (ties: index), each take the unassigned artifact detection with
the same label, every box coordinate within `box_px` and the score within `score` (`tol`),
choosing the closest box (ties: index). Without `tol` only the label has to agree, so the
figures say how far apart the nearest pairs are.

A detection may be left unmatched only at a cut, where a difference within tolerance can keep
it on one side and drop it on the other: its score within `score` of the score threshold
(`score_thresh`, the model's roi_heads.score_thresh), or its image at the top-k limit (`topk`,
roi_heads.detections_per_img) on a side whose lowest kept score is within `score` of it.
Any other unmatched detection fails parity.

Figures over all images: the counts (detections, matched, unmatched on each side, unmatched
not at a cut), `labels_identical` (every detection matched), and over matched pairs the largest
box coordinate difference (px), the largest score difference, the smallest and the mean mask
IoU (two empty masks count as IoU 1), the largest mask shift (`mask_shift`: how many pixels of
dilation make each mask cover the other) and the smallest IoU of the masks shifted by more than
`tol["mask_shift_px"]` (all of them without that key). `passes` applies the tolerances.

Why a shift: a sub-pixel box difference across an integer moves a pasted mask by one pixel; for
a mask 4 px tall that alone is IoU 0.6-0.8 (a random R-50's thin masks under ONNX Runtime). A
tolerance of one pixel of shift accepts that and still catches a mask that is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# The tolerances for the torch artifacts (.pt2, AOTInductor: the same kernels).
TORCH_TOLERANCES = {"box_px": 1e-3, "score": 1e-4, "mask_iou": 0.99}
# ONNX Runtime: boxes within 2e-3 px (its convolutions sum in another order: float32 box
# coordinates near 1000 px were measured up to 1.34e-3 px off on a random R-50, ~20 ulps), the
# same on scores and on the mean mask IoU; the smallest IoU of one
# mask can be lower: pasting truncates the grown box to integers (torchvision's rule), so a
# box coordinate 1e-5 px away from eager's, across an integer, moves a whole mask by a pixel,
# which costs a small mask several % of IoU.
ONNX_TOLERANCES = dict(TORCH_TOLERANCES, box_px=2e-3, mask_iou=0.9, mean_mask_iou=0.99,
                       mask_shift_px=1)
# Unmatched detections listed in the figures (the sidecar of a rejected artifact says which).
MAX_LISTED = 20


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """uint8/bool [K, H, W] pairs -> IoU [K]; 1 where both are empty."""
    a, b = a.bool().flatten(1), b.bool().flatten(1)
    inter = (a & b).sum(1).double()
    union = (a | b).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


MAX_SHIFT = 4  # px of dilation tried by mask_shift; more counts as MAX_SHIFT + 1


def mask_shift(a: Tensor, b: Tensor) -> Tensor:
    """uint8/bool [K, H, W] pairs -> [K] the fewest 3x3 dilations after which each mask covers
    the other (the Chebyshev Hausdorff distance in px): 0 equal, 1 within a pixel, ...,
    MAX_SHIFT + 1 beyond MAX_SHIFT or one empty. Computed on the pair's bounding crop."""
    out = torch.zeros(a.shape[0])
    r = MAX_SHIFT
    for k in range(a.shape[0]):
        ak, bk = a[k].bool(), b[k].bool()
        if torch.equal(ak, bk):
            continue
        if not ak.any() or not bk.any():
            out[k] = r + 1
            continue
        ys, xs = torch.nonzero(ak | bk, as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        pad = (r, r, r, r)
        ca = torch.nn.functional.pad(ak[y0:y1, x0:x1].float(), pad)[None, None]
        cb = torch.nn.functional.pad(bk[y0:y1, x0:x1].float(), pad)[None, None]
        da, db = ca, cb
        out[k] = r + 1
        for d in range(1, r + 1):
            da = torch.nn.functional.max_pool2d(da, 3, 1, 1)
            db = torch.nn.functional.max_pool2d(db, 3, 1, 1)
            if bool((cb <= da).all()) and bool((ca <= db).all()):
                out[k] = d
                break
    return out


def cut_of(config) -> dict:
    """The cuts of the model's detections: compare()'s score_thresh and topk keywords."""
    rh = config.model.roi_heads
    return {"score_thresh": float(rh.score_thresh), "topk": int(rh.detections_per_img)}


def match(w: dict, g: dict, tol: dict | None = None) -> list[tuple[int, int]]:
    """One-to-one pairs (i in w, j in g) of one image's detections (the module's rule)."""
    if w["labels"].numel() == 0 or g["labels"].numel() == 0:
        return []
    # Doubles: the float32 inputs' differences are exact, so a tolerance is met or not.
    box = (w["boxes"].double()[:, None] - g["boxes"].double()[None]).abs().amax(-1)
    score = (w["scores"].double()[:, None] - g["scores"].double()[None]).abs()
    ok = w["labels"].reshape(-1, 1) == g["labels"].reshape(1, -1)
    if tol is not None:
        ok &= (box <= tol["box_px"]) & (score <= tol["score"])
    dist = torch.where(ok, box, torch.full_like(box, math.inf))
    taken = torch.zeros(dist.shape[1], dtype=torch.bool)
    pairs = []
    # A stable sort: equal eager scores go by index, so the pairing is deterministic.
    for i in torch.sort(-w["scores"].double(), stable=True).indices.tolist():
        d = dist[i].masked_fill(taken, math.inf)
        j = int(torch.argmin(d))  # the first of equally close boxes
        if math.isfinite(float(d[j])):
            taken[j] = True
            pairs.append((i, j))
    return pairs


def at_cut(score: float, w: dict, g: dict, tol: dict | None, score_thresh, topk) -> bool:
    """Whether a detection of this score, unmatched, is explained by a cut (module docstring).
    Without `tol` nothing is: a difference is only allowed within a tolerance."""
    if tol is None:
        return False
    near = tol["score"]
    if score_thresh is not None and abs(score - float(score_thresh)) <= near:
        return True
    if topk is not None:
        for side in (w["scores"], g["scores"]):
            if side.numel() >= int(topk) and abs(score - float(side.min())) <= near:
                return True
    return False


def _nearest(det: dict, k: int, other: dict) -> dict:
    """How far detection k is from the other side's closest box of its label (None: none):
    says whether a miss is a tolerance exceeded or a detection only one side has."""
    same = other["labels"] == det["labels"][k]
    if not bool(same.any()):
        return {"nearest_box_px": None, "nearest_score": None}
    d = (other["boxes"][same].double() - det["boxes"][k].double()).abs().amax(-1)
    m = int(torch.argmin(d))
    return {"nearest_box_px": float(d[m]),
            "nearest_score": abs(float(other["scores"][same][m]) - float(det["scores"][k]))}


def _unmatched(fig: dict, image: int, name: str, idx: list[int], w: dict, g: dict,
               tol: dict | None, cut: dict) -> None:
    """Counts (and lists, up to MAX_LISTED) the unmatched detections `idx` of side `name`
    ("want": w, "got": g)."""
    det, other = (w, g) if name == "want" else (g, w)
    fig["unmatched_" + name] += len(idx)
    for k in idx:
        s = float(det["scores"][k])
        ok = at_cut(s, w, g, tol, cut.get("score_thresh"), cut.get("topk"))
        fig["unmatched_not_at_cut"] += int(not ok)
        if len(fig["unmatched"]) < MAX_LISTED:
            fig["unmatched"].append({"image": image, "side": name, "label": int(det["labels"][k]),
                                     "score": s, "box": [float(v) for v in det["boxes"][k]],
                                     "at_cut": ok, **_nearest(det, k, other)})


def _compare_image(fig: dict, image: int, w: dict, g: dict, tol: dict | None,
                   cut: dict) -> tuple[Tensor, Tensor] | None:
    """Adds one image's counts and largest differences to `fig` -> (IoU, shift) of its
    matched masks."""
    fig["detections"] += int(w["labels"].numel())
    fig["detections_got"] += int(g["labels"].numel())
    pairs = match(w, g, tol)
    fig["matched"] += len(pairs)
    mw, mg = {i for i, _ in pairs}, {j for _, j in pairs}
    _unmatched(fig, image, "want", [i for i in range(w["labels"].numel()) if i not in mw],
               w, g, tol, cut)
    _unmatched(fig, image, "got", [j for j in range(g["labels"].numel()) if j not in mg],
               w, g, tol, cut)
    if not pairs:
        return None
    iw, ig = (torch.tensor(v) for v in zip(*pairs))
    fig["max_box_px"] = max(fig["max_box_px"],
                            float((w["boxes"][iw].double() - g["boxes"][ig]).abs().max()))
    fig["max_score"] = max(fig["max_score"],
                           float((w["scores"][iw].double() - g["scores"][ig]).abs().max()))
    mw, mg = w["masks"][iw], g["masks"][ig]
    return mask_iou(mw, mg), mask_shift(mw, mg)


def compare(want: Sequence[dict], got: Sequence[dict], tol: dict | None = None, *,
            score_thresh: float | None = None, topk: int | None = None) -> dict:
    """Parity figures of `got` against `want` (lists of per-image Predictor dicts): detections
    matched within `tol` (box_px, score), misses allowed at the cuts score_thresh / topk."""
    fig = {"images": len(want), "images_got": len(got), "detections": 0, "detections_got": 0,
           "matched": 0, "unmatched_want": 0, "unmatched_got": 0, "unmatched_not_at_cut": 0,
           "labels_identical": len(want) == len(got), "max_box_px": 0.0, "max_score": 0.0,
           "min_mask_iou": 1.0, "mean_mask_iou": 1.0, "max_mask_shift": 0,
           "min_mask_iou_beyond_shift": 1.0, "unmatched": []}
    cut = {"score_thresh": score_thresh, "topk": topk}
    pairs = [m for n, (w, g) in enumerate(zip(want, got))
             if (m := _compare_image(fig, n, w, g, tol, cut)) is not None]
    fig["labels_identical"] &= fig["unmatched_want"] == 0 and fig["unmatched_got"] == 0
    if pairs:
        iou, shift = (torch.cat(t) for t in zip(*pairs))
        fig["min_mask_iou"], fig["mean_mask_iou"] = float(iou.min()), float(iou.mean())
        fig["max_mask_shift"] = int(shift.max())
        beyond = iou[shift > (tol or {}).get("mask_shift_px", -1)]
        fig["min_mask_iou_beyond_shift"] = float(beyond.min()) if beyond.numel() else 1.0
    return fig


def passes(fig: dict, tol: dict) -> bool:
    """tol: box_px, score, mask_iou (the smallest IoU; with mask_shift_px, of the masks
    shifted further than that), optionally mean_mask_iou. The figures should come from
    compare() with the same `tol`: matching and the shift rule use it too."""
    return bool(fig["images"] == fig["images_got"] and fig["unmatched_not_at_cut"] == 0
                and fig["max_box_px"] <= tol["box_px"] and fig["max_score"] <= tol["score"]
                and fig["min_mask_iou_beyond_shift"] >= tol["mask_iou"]
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


def measure(reference, candidate, batches: Sequence[Sequence[Tensor]], tol: dict | None = None,
            **cut) -> dict:
    """compare() of two Predictors over `batches` (each one call), merged into one figure;
    `tol` and the cut keywords (score_thresh, topk: cut_of(config)) go to compare()."""
    want, got = [], []
    for images in batches:
        want += reference(list(images))
        got += candidate(list(images))
    return compare(want, got, tol, **cut)
