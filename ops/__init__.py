"""Detection operators with torchvision-compatible signatures, backed by the `ops._C` extension.

`ops._C` (built by `launch/setup.sh` / `python setup.py build_ext --inplace`) registers the
operators under `torch.ops.mrcnn.*` with CPU and, when built with CUDA, CUDA kernels. When it is
missing, or a tensor lives on a device it has no kernel for, each function falls back to the
pure-PyTorch reference in `ops.reference` (slow; warned once).

Conventions: boxes are float xyxy in absolute pixels; index outputs are int64.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Sequence
from typing import Union

import torch
import torch.fx
from torch import Tensor
from torch.jit.annotations import BroadcastingList2

from ops import reference

try:
    # Loading the library runs its TORCH_LIBRARY blocks: torch.ops.mrcnn.* appear.
    _C = importlib.import_module("ops._C")
    _LOAD_ERROR = ""
except ImportError as exc:  # not built yet, or built against another torch
    _C = None
    _LOAD_ERROR = str(exc)

if _C is not None:
    from ops import _library  # noqa: F401  (fake kernels and autograd formulas)

__all__ = [
    "nms",
    "batched_nms",
    "segmented_batched_nms",
    "roi_align",
    "box_iou",
    "paste_masks",
    "polygons_to_masks",
    "grid_anchors",
    "decode_boxes",
    "encode_boxes",
    "match_boxes",
    "has_kernels",
    "multilevel_roi_align",
    "rpn_decode_topk",
    "info",
]

_warned = False


def _native(*tensors: Tensor) -> bool:
    """Whether the compiled kernels can run on these tensors' device; warns once when not."""
    global _warned
    if _C is not None:
        dev = tensors[0].device.type
        # "meta" tensors go to the fake kernels registered in ops/_library.py.
        if dev in ("cpu", "meta") or (dev == "cuda" and _C.cuda):
            return True
    if not _warned:
        _warned = True
        why = _LOAD_ERROR or f"no kernels for device {tensors[0].device.type!r}"
        warnings.warn(
            f"ops: using the slow pure-PyTorch reference ({why}); build with launch/setup.sh",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def has_kernels(tensor: Tensor) -> bool:
    """Whether compiled kernels serve tensors on `tensor`'s device (no fallback, no warning)."""
    dev = tensor.device.type
    return _C is not None and (dev in ("cpu", "meta") or (dev == "cuda" and bool(_C.cuda)))


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS as torchvision.ops.nms.

    boxes: float [N, 4] xyxy; scores: [N] same dtype. Drops boxes whose IoU with a higher-scored
    kept box is > iou_threshold. Returns int64 [K] kept indices by decreasing score; equal scores
    keep input order (stable sort), as torchvision.
    """
    if torch.jit.is_scripting():  # TorchScript: the compiled operator only
        return torch.ops.mrcnn.nms(boxes, scores, float(iou_threshold))
    if _native(boxes):
        return torch.ops.mrcnn.nms(boxes, scores, float(iou_threshold))
    return reference.nms(boxes, scores, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS independently per category, as torchvision.ops.batched_nms.

    boxes: float [N, 4] xyxy; scores: [N]; idxs: int64 [N] category of each box.
    Returns int64 [K] kept indices sorted by decreasing score (ties in input order). Empty boxes
    (any empty shape, scores and idxs then unused) give an empty result, as torchvision.
    On CUDA, inputs above NMS_CHUNK boxes run as chunks of whole categories (see
    segmented_batched_nms), so the kernel's N x N/64 mask is bounded by the largest chunk.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if not _native(boxes):
        return reference.batched_nms(boxes, scores, idxs, iou_threshold)
    # The CPU kernel already works per category (no N x N state); the CUDA one builds one mask
    # for everything it is given. A traced graph keeps the single call (no data-dependent
    # Python branching while compiling).
    if (
        boxes.device.type == "cuda"
        and not torch.compiler.is_compiling()
        and boxes.shape[0] > NMS_CHUNK
    ):
        return segmented_batched_nms(boxes, scores, idxs, iou_threshold, NMS_CHUNK)
    return torch.ops.mrcnn.batched_nms(boxes, scores, idxs, float(iou_threshold))


# Boxes per CUDA batched-NMS call: its mask is n * ceil(n / 64) words, 2 MiB at 4096 boxes,
# while torchvision's per-class problems are ~1000 boxes. The whole batch at inference
# (8 images x 80 classes x 1000 boxes with a 0 score threshold) would be ~65 GB in one call.
NMS_CHUNK = 4096


def _chunks_of(counts: list[int], max_chunk: int) -> list[int]:
    # Consecutive categories packed greedily into chunks of at most max_chunk boxes; a category
    # larger than that is a chunk on its own (NMS never crosses categories, so any packing of
    # whole categories gives the same kept set).
    chunks, cur = [], 0
    for c in counts:
        if cur and cur + c > max_chunk:
            chunks.append(cur)
            cur = 0
        cur += c
    chunks.append(cur)
    return chunks


def segmented_batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, max_chunk: int
) -> Tensor:
    """batched_nms as a loop over chunks of whole categories of at most `max_chunk` boxes (a
    larger category alone), each through the compiled batched_nms: the same result as one call,
    with per-call work and memory bounded by the largest chunk. One host read (the category
    sizes). Used by batched_nms for large CUDA inputs; callable on any device (tests run it on
    the CPU)."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    # Score order (stable), then a stable sort by category: each category is a contiguous run,
    # itself in decreasing score order, as torchvision's per-class loop sees it.
    order = torch.sort(scores, descending=True, stable=True).indices
    by_cls = torch.sort(idxs[order], stable=True)
    perm = order[by_cls.indices]
    counts = torch.unique_consecutive(by_cls.values, return_counts=True)[1].tolist()
    kept, start = [], 0
    for n in _chunks_of(counts, max_chunk):
        sel = perm[start : start + n]
        start += n
        keep = torch.ops.mrcnn.batched_nms(boxes[sel], scores[sel], idxs[sel], float(iou_threshold))
        kept.append(sel[keep])
    # Merged in decreasing score with ties in input order: ascending index first, then a
    # stable sort by score.
    k = torch.sort(torch.cat(kept)).values
    return k[torch.sort(scores[k], descending=True, stable=True).indices]


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU, as torchvision.ops.box_iou: [N, 4], [M, 4] xyxy -> [N, M].

    float64 stays float64; everything else (float16, bfloat16, integer boxes) is computed and
    returned in float32 as torchvision does: half-precision areas overflow past ~256 x 256 px.
    """
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    if dtype != torch.float64:
        dtype = torch.float32
    boxes1, boxes2 = boxes1.to(dtype), boxes2.to(dtype)
    if torch.jit.is_scripting():  # TorchScript: the compiled operator only
        return torch.ops.mrcnn.box_iou(boxes1, boxes2)
    if _native(boxes1):
        return torch.ops.mrcnn.box_iou(boxes1, boxes2)
    return reference.box_iou(boxes1, boxes2)


def _rois_from(boxes: Tensor | list[Tensor]) -> Tensor:
    # torchvision's check_roi_boxes_shape + convert_boxes_to_roi_format: prefix each image's
    # boxes with its batch index. torch._assert (AssertionError) as there.
    if isinstance(boxes, Tensor):
        torch._assert(boxes.dim() == 2 and boxes.shape[1] == 5, "rois must be a Tensor [K, 5]")
        return boxes
    torch._assert(
        all(b.dim() == 2 and b.shape[1] == 4 for b in boxes), "boxes must be a list of [L, 4]"
    )
    cat = torch.cat(list(boxes), dim=0)
    idx = torch.cat(
        [torch.full_like(b[:, :1], i, dtype=cat.dtype) for i, b in enumerate(boxes)], dim=0
    )
    return torch.cat([idx, cat], dim=1)


def roi_align(
    input: Tensor,
    boxes: Union[Tensor, list[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign, as torchvision.ops.roi_align (differentiable w.r.t. input).

    input: float [N, C, H, W] (float32/float64; half/bfloat16 accumulate in float32).
    boxes: [K, 5] (batch_index, x1, y1, x2, y2) or a list of per-image [L, 4] xyxy, in image
    pixels; spatial_scale maps them to feature pixels. sampling_ratio <= 0: adaptive,
    ceil(roi_size / output_size) samples per bin side. aligned=True: half-pixel shift
    (Detectron2 ROIAlignV2). Returns [K, C, output_h, output_w].
    """
    if torch.jit.is_scripting():
        # TorchScript (torchvision's ops script): the compiled operator only; the branch below
        # is not compiled by the scripting frontend.
        return _roi_align_scripted(input, boxes, output_size, spatial_scale, sampling_ratio,
                                   aligned)
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    rois = _rois_from(boxes)
    if _native(input):
        return torch.ops.mrcnn.roi_align(
            input, rois, float(spatial_scale), ph, pw, int(sampling_ratio), bool(aligned)
        )
    return reference.roi_align(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned)


def _roi_align_scripted(
    input: Tensor,
    boxes: Union[Tensor, list[Tensor]],
    output_size: list[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    if isinstance(boxes, Tensor):
        rois = boxes
    else:
        idx = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]
        rois = torch.cat([torch.cat(idx, dim=0), torch.cat(boxes, dim=0)], dim=1)
    torch._assert(rois.dim() == 2 and rois.shape[1] == 5, "rois must be a Tensor [K, 5]")
    return torch.ops.mrcnn.roi_align(
        input, rois, spatial_scale, output_size[0], output_size[1], sampling_ratio, aligned
    )


# torch.fx traces roi_align as one call (a leaf node), as torchvision's roi_align: its list /
# tensor dispatch cannot run on proxies.
torch.fx.wrap("roi_align")


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_h: int,
    image_w: int,
    threshold: float = 0.5,
    padding: int = 1,
) -> Tensor:
    """Paste mask probabilities [K, M, M] into boxes [K, 4] xyxy of an image_h x image_w image.

    Same pixels as torchvision's `paste_masks_in_image(masks, boxes, (h, w), padding) >
    threshold`, computed in one pass (each output pixel samples its mask bilinearly).
    Returns bool [K, image_h, image_w].
    """
    if masks.dim() == 4:  # accept torchvision's [K, 1, M, M]
        masks = masks[:, 0]
    if _native(masks):
        return torch.ops.mrcnn.paste_masks(
            masks, boxes, int(image_h), int(image_w), float(threshold), int(padding)
        )
    return reference.paste_masks(masks, boxes, image_h, image_w, threshold, padding)


def polygons_to_masks(
    coords: Tensor,
    poly_offsets: Tensor,
    roi_poly_offsets: Tensor,
    rois: Tensor,
    mask_size: int,
) -> Tensor:
    """Mask targets from polygons: float32 [R, mask_size, mask_size] of 0/1.

    coords: float32 [2T] all polygons' x, y interleaved (image pixels); poly_offsets: int64
    [P + 1], polygon p = coords[poly_offsets[p]:poly_offsets[p + 1]]; roi_poly_offsets: int64
    [R + 1], RoI r owns polygons roi_poly_offsets[r]:roi_poly_offsets[r + 1]; rois: float32
    [R, 4] xyxy. Each RoI's polygons are cropped to it, scaled to mask_size^2 and rasterised by
    pixel-centre sampling (union of polygons, even-odd within one). See ops.reference.
    """
    if _native(rois):
        return torch.ops.mrcnn.polygons_to_masks(
            coords, poly_offsets, roi_poly_offsets, rois, int(mask_size)
        )
    return reference.polygons_to_masks(coords, poly_offsets, roi_poly_offsets, rois, mask_size)


def grid_anchors(
    base_anchors: Tensor, feat_h: int, feat_w: int, stride: int | tuple[int, int]
) -> Tensor:
    """All anchors of one level: [feat_h * feat_w * A, 4] in torchvision AnchorGenerator order.

    base_anchors: float [A, 4] xyxy centred on the origin; stride: pixels per cell, int or
    (stride_h, stride_w).
    """
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    if _native(base_anchors):
        return torch.ops.mrcnn.grid_anchors(
            base_anchors, int(feat_h), int(feat_w), int(sh), int(sw)
        )
    return reference.grid_anchors(base_anchors, feat_h, feat_w, (sh, sw))


def decode_boxes(
    deltas: Tensor,
    boxes: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = math.log(1000.0 / 16),
) -> Tensor:
    """torchvision BoxCoder.decode_single: deltas [N, 4k] on boxes [N, 4] xyxy -> [N, 4k] xyxy."""
    if _native(deltas):
        return torch.ops.mrcnn.decode_boxes(
            deltas, boxes, [float(w) for w in weights], float(clamp)
        )
    return reference.decode_boxes(deltas, boxes, weights, clamp)


def encode_boxes(
    targets: Tensor,
    reference: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
) -> Tensor:
    """torchvision BoxCoder.encode_single: the deltas (dx, dy, dw, dh) that turn `reference` boxes
    into `targets`, both float [N, 4] xyxy of one dtype -> [N, 4].

    dx = wx * (gx - rx) / rw, dw = ww * log(gw / rw) (centres, widths; likewise y, h), in
    torchvision's operation order and with torch's own log, so the result equals
    `BoxCoder(weights).encode_single(targets, reference)` bit for bit. Zero-size references
    give inf/NaN, as there. No gradient: regression targets are constants.
    """
    if _native(targets):
        return torch.ops.mrcnn.encode_boxes(targets, reference, [float(w) for w in weights])
    from ops import reference as ref_impl  # the argument `reference` hides the module

    return ref_impl.encode_boxes(targets, reference, weights)


def match_boxes(
    gt_boxes: Tensor,
    gt_valid: Tensor,
    boxes: Tensor,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool = False,
) -> Tensor:
    """Matches predictions (anchors, proposals) to padded ground truth by IoU: torchvision's
    `Matcher`, batched, without building the [B, M, N] IoU matrix.

    gt_boxes: float [B, M, 4] xyxy; gt_valid: bool [B, M] (False marks padding rows, which never
    match); boxes: [N, 4] shared by the batch or [B, N, 4], in gt_boxes' dtype. Returns int64
    [B, N]: each prediction's best gt (the lowest index among equal IoUs) when that IoU is
    >= high_threshold, -2 when it lies in [low_threshold, high_threshold), -1 below low_threshold
    or when M == 0. With `allow_low_quality_matches`, every prediction that attains some valid
    gt's highest IoU (ties included, also when that IoU is 0) is matched to its own best gt
    whatever its IoU. IoUs are mrcnn.modeling.boxes.pairwise_iou's, 0/0 = NaN included (it
    counts as a match, as NaN wins torch.max), so the result equals
    mrcnn.modeling.matcher.match on that matrix exactly.
    """
    if _native(gt_boxes):
        return torch.ops.mrcnn.match_boxes(
            gt_boxes,
            gt_valid,
            boxes,
            float(high_threshold),
            float(low_threshold),
            bool(allow_low_quality_matches),
        )
    return reference.match_boxes(
        gt_boxes, gt_valid, boxes, high_threshold, low_threshold, allow_low_quality_matches
    )


def multilevel_roi_align(
    features: Sequence[Tensor],
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    canonical_level: int = 4,
    canonical_scale: float = 224.0,
) -> Tensor:
    """RoIAlign over FPN levels in one call, as torchvision.ops.MultiScaleRoIAlign.

    features: finest first, each [N, C, H_l, W_l] (one dtype; channels-last is fine) with
    spatial_scales 2**-k_min, 2**-(k_min + 1), ...; rois: float32/float64 [R, 5] (batch_index,
    x1, y1, x2, y2) in image pixels. Each RoI is pooled from level
    floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6) clamped to the levels
    present (mrcnn.modeling.poolers.map_levels, in the rois' dtype); a RoI with negative area has
    no level and gives zeros. Results equal ops.roi_align of each level on its RoIs, bit for
    bit, with no host synchronisation. Differentiable w.r.t. the features.
    Returns [R, C, output_h, output_w].
    """
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    scales = [float(s) for s in spatial_scales]
    k_min = int(-math.log2(scales[0]))
    k_max = int(-math.log2(scales[-1]))
    if k_max - k_min + 1 != len(features):
        raise ValueError(
            f"spatial_scales {scales} are not one octave apart for {len(features)} levels"
        )
    if _native(rois):
        return torch.ops.mrcnn.multilevel_roi_align(
            list(features), rois, scales, ph, pw, int(sampling_ratio), bool(aligned),
            int(canonical_level), float(canonical_scale), k_min,
        )
    return reference.multilevel_roi_align(
        list(features), rois, scales, ph, pw, sampling_ratio, aligned, canonical_level,
        canonical_scale, k_min,
    )


def rpn_decode_topk(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    level_sizes: Sequence[int],
    pre_nms_top_n: int,
    image_hw: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = math.log(1000.0 / 16),
    min_size: float = 0.0,
    score_thresh: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The RPN's pre-NMS proposals for all levels and images in one call.

    objectness: logits [B, N]; deltas [B, N, 4] (same dtype); anchors [N, 4] xyxy, levels
    concatenated with sizes `level_sizes`; image_hw [B, 2] unpadded (h, w). Per level and image
    the min(pre_nms_top_n, N_l) highest logits (torch.topk's order and ties), their
    probabilities, their boxes decoded on their anchors (BoxCoder.decode with `weights` and
    `clamp`) and clipped to the image, and valid = both sides >= min_size and probability >=
    score_thresh. Returns (boxes [B, K, 4], probabilities [B, K], level int64 [K], valid bool
    [B, K]), K = sum_l min(pre_nms_top_n, N_l), levels in order: equal to the first half of
    mrcnn.modeling.rpn.select_proposals bit for bit (see ops.reference.rpn_decode_topk).
    """
    sizes = [int(n) for n in level_sizes]
    if _native(objectness):
        return torch.ops.mrcnn.rpn_decode_topk(
            objectness, deltas, anchors, sizes, int(pre_nms_top_n), image_hw,
            [float(w) for w in weights], float(clamp), float(min_size), float(score_thresh),
        )
    return reference.rpn_decode_topk(
        objectness, deltas, anchors, sizes, pre_nms_top_n, image_hw, weights, clamp, min_size,
        score_thresh,
    )


def info() -> dict:
    """What was built: compiled, cuda, cuda_archs, torch_version (built against), threads."""
    return {
        "compiled": _C is not None,
        "cuda": bool(_C is not None and _C.cuda),
        "cuda_archs": [a for a in (_C.cuda_archs if _C is not None else "").split(";") if a],
        "torch_version": _C.torch_version if _C is not None else None,
        "threads": torch.get_num_threads(),
        "load_error": _LOAD_ERROR or None,
    }
