"""Pure-PyTorch references of the `ops` operators.

They are the test oracle for the C++/CUDA kernels and the fallback when `ops._C` is not built.
Each function follows the arithmetic of its kernel (same operations, same order, same dtype) so
that results agree bit for bit where the kernel is exact, not merely within a tolerance. They are
written for clarity, not speed, though none is quadratic in Python-level loops.

Conventions: boxes are xyxy in absolute pixels; RoIs for `roi_align` are [K, 5] rows
(batch_index, x1, y1, x2, y2); index outputs are int64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "box_iou",
    "nms",
    "batched_nms",
    "roi_align",
    "paste_masks",
    "polygons_to_masks",
    "polygons_to_masks_pycocotools",
    "grid_anchors",
    "decode_boxes",
    "encode_boxes",
    "match_boxes",
    "match_quality",
    "fpn_levels",
    "multilevel_roi_align",
    "rpn_decode_topk",
]


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair: boxes1 [..., N, 4], boxes2 [..., M, 4] xyxy (leading dimensions
    broadcast) -> [..., N, M] in the boxes' dtype. torchvision's box_iou arithmetic: areas
    (x2 - x1) * (y2 - y1), intersection clamped at 0, inter / (area1 + area2 - inter); zero-area
    boxes give 0/0 = NaN against other zero-area boxes, exactly as there.
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    # Per axis rather than on [..., N, M, 2] pairs: the same arithmetic, half the temporaries
    # (the RPN's [B, M, anchors] matrices are the largest tensors of a training step).
    a = boxes1[..., :, None, :]
    b = boxes2[..., None, :, :]
    w = (torch.min(a[..., 2], b[..., 2]) - torch.max(a[..., 0], b[..., 0])).clamp_(min=0)
    h = (torch.min(a[..., 3], b[..., 3]) - torch.max(a[..., 1], b[..., 1])).clamp_(min=0)
    inter = w.mul_(h)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter.div_(union)


def _iou_one_to_many(box: Tensor, area: Tensor, boxes: Tensor, areas: Tensor) -> Tensor:
    # The same float operations, in the same order, as torchvision's CPU nms kernel.
    xx1 = torch.maximum(box[0], boxes[:, 0])
    yy1 = torch.maximum(box[1], boxes[:, 1])
    xx2 = torch.minimum(box[2], boxes[:, 2])
    yy2 = torch.minimum(box[3], boxes[:, 3])
    w = (xx2 - xx1).clamp(min=0)
    h = (yy2 - yy1).clamp(min=0)
    inter = w * h
    return inter / (area + areas - inter)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    boxes: [N, 4] xyxy float; scores: [N] same dtype. A box is dropped when its IoU with a kept,
    higher-ranked box is > iou_threshold. Ranking is a stable descending sort by score, so equal
    scores keep their input order (torchvision's tie-breaking).
    Returns int64 [K] indices of the kept boxes in decreasing score order.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True)[1]
    b = boxes[order]
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    # `alive` positions (in sorted order) still candidates; each iteration keeps the first one and
    # removes what it suppresses, so the Python loop runs once per kept box.
    alive = torch.arange(b.shape[0], device=b.device)
    keep = []
    while alive.numel() > 0:
        i = alive[0]
        keep.append(i)
        rest = alive[1:]
        iou = _iou_one_to_many(b[i], areas[i], b[rest], areas[rest])
        # NaN (0/0 between degenerate boxes) compares False: never suppresses, as in torchvision.
        alive = rest[~(iou > iou_threshold)]
    return order[torch.stack(keep)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS applied independently per category `idxs` [N] (int64).

    Returns int64 [K] kept indices sorted by decreasing score (stable: ties keep input order).
    The IoU is computed on the original coordinates (no coordinate-offset trick), so results are
    those of running `nms` once per category.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for c in torch.unique(idxs):
        where = torch.where(idxs == c)[0]
        keep_mask[where[nms(boxes[where], scores[where], iou_threshold)]] = True
    kept = torch.where(keep_mask)[0]
    return kept[torch.sort(scores[kept], descending=True, stable=True)[1]]


def _roi_sample_grid(
    rois: Tensor,
    spatial_scale: float,
    pooled_h: int,
    pooled_w: int,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-RoI geometry as in the kernels: start, bin size, grid size (all [K])."""
    offset = 0.5 if aligned else 0.0
    start_w = rois[:, 1] * spatial_scale - offset
    start_h = rois[:, 2] * spatial_scale - offset
    end_w = rois[:, 3] * spatial_scale - offset
    end_h = rois[:, 4] * spatial_scale - offset
    roi_w = end_w - start_w
    roi_h = end_h - start_h
    if not aligned:
        # Legacy (Detectron) behaviour: malformed RoIs are forced to 1x1.
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    # Divisions by full tensors, not Python numbers: PyTorch turns `t / k` into `t * (1 / k)`,
    # which rounds differently from the kernels' true division when 1 / k is inexact.
    bin_h = roi_h / torch.full_like(roi_h, pooled_h)
    bin_w = roi_w / torch.full_like(roi_w, pooled_w)
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.int64)
        grid_w = torch.full_like(roi_w, sampling_ratio, dtype=torch.int64)
    else:
        grid_h = torch.ceil(roi_h / torch.full_like(roi_h, pooled_h)).to(torch.int64)
        grid_w = torch.ceil(roi_w / torch.full_like(roi_w, pooled_w)).to(torch.int64)
    return start_h, start_w, bin_h, bin_w, grid_h, grid_w, rois[:, 0].to(torch.int64)


def _bilinear_coords(v: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Low/high indices and weights of sample positions `v` along an axis of length `size`.

    Returns (low, high, w_low, w_high, valid): samples outside [-1, size] contribute nothing.
    """
    valid = (v >= -1.0) & (v <= size)
    v = v.clamp(min=0)
    low = v.to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, size - 1, low + 1)
    v = torch.where(at_edge, low.to(v.dtype), v)
    lw = v - low
    return low, high, 1.0 - lw, lw, valid


def _gather(feat: Tensor, yi: Tensor, xi: Tensor, width: int) -> Tensor:
    """feat [k, C, H*W] at rows yi [k, PH] and columns xi [k, PW] -> [k, C, PH, PW]."""
    k, c = feat.shape[:2]
    idx = (yi[:, :, None] * width + xi[:, None, :]).reshape(k, 1, -1)
    return torch.gather(feat, 2, idx.expand(-1, c, -1)).reshape(k, c, yi.shape[1], xi.shape[1])


def _outer(a: Tensor, b: Tensor) -> Tensor:
    """[k, PH] x [k, PW] -> [k, 1, PH, PW]."""
    return (a[:, :, None] * b[:, None, :])[:, None]


def roi_align(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_h: int,
    pooled_w: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """RoIAlign (Mask R-CNN), differentiable through autograd.

    input: [N, C, H, W] float; rois: [K, 5] (batch_index, x1, y1, x2, y2) in input-image pixels,
    scaled by `spatial_scale` to feature pixels. Each of the pooled_h x pooled_w bins averages a
    grid of bilinear samples (sampling_ratio per side, or ceil(roi_size / pooled) when <= 0).
    aligned=True shifts by half a pixel (Detectron2 "ROIAlignV2").
    Returns [K, C, pooled_h, pooled_w].
    """
    n, c, h, w = input.shape
    k = rois.shape[0]
    out = input.new_zeros((k, c, pooled_h, pooled_w))
    if k == 0 or out.numel() == 0:
        return out + 0 * input.sum()  # keep the autograd graph connected
    start_h, start_w, bin_h, bin_w, grid_h, grid_w, batch = _roi_sample_grid(
        rois.to(input.dtype), spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned
    )
    flat = input.reshape(n, c, h * w)
    # RoIs are grouped by grid size so that each group is one vectorised gather.
    groups = torch.stack([grid_h, grid_w], 1)
    results = []
    for gh, gw in torch.unique(groups, dim=0).tolist():
        sel = torch.where((grid_h == gh) & (grid_w == gw))[0]
        if gh <= 0 or gw <= 0:
            results.append((sel, input.new_zeros((sel.numel(), c, pooled_h, pooled_w))))
            continue
        iy = torch.arange(gh, device=input.device, dtype=input.dtype)
        ix = torch.arange(gw, device=input.device, dtype=input.dtype)
        ph = torch.arange(pooled_h, device=input.device, dtype=input.dtype)
        pw = torch.arange(pooled_w, device=input.device, dtype=input.dtype)
        bh, bw = bin_h[sel], bin_w[sel]
        # [k, PH, IY] and [k, PW, IX]: same expression order as the C++ kernel.
        num_y = (iy[None, None, :] + 0.5) * bh[:, None, None]
        num_x = (ix[None, None, :] + 0.5) * bw[:, None, None]
        ys = (start_h[sel, None, None] + ph[None, :, None] * bh[:, None, None]) + num_y / (
            torch.full_like(num_y, gh)
        )
        xs = (start_w[sel, None, None] + pw[None, :, None] * bw[:, None, None]) + num_x / (
            torch.full_like(num_x, gw)
        )
        y0, y1, wy0, wy1, vy = _bilinear_coords(ys, h)  # [k, PH, IY]
        x0, x1, wx0, wx1, vx = _bilinear_coords(xs, w)  # [k, PW, IX]
        feat = flat[batch[sel]]  # [k, C, H*W]
        k_sel = len(sel)

        # Samples are added one at a time, in the kernels' order, so the sums round the same.
        total = input.new_zeros((k_sel, c, pooled_h, pooled_w))
        for a in range(gh):
            for b in range(gw):
                ya, yb, wya, wyb = y0[:, :, a], y1[:, :, a], wy0[:, :, a], wy1[:, :, a]
                xa, xb, wxa, wxb = x0[:, :, b], x1[:, :, b], wx0[:, :, b], wx1[:, :, b]
                valid = _outer(vy[:, :, a].to(input.dtype), vx[:, :, b].to(input.dtype))
                term = (
                    _outer(wya, wxa) * _gather(feat, ya, xa, w)
                    + _outer(wya, wxb) * _gather(feat, ya, xb, w)
                    + _outer(wyb, wxa) * _gather(feat, yb, xa, w)
                    + _outer(wyb, wxb) * _gather(feat, yb, xb, w)
                )
                total = total + term * valid
        results.append((sel, total / torch.full_like(total, gh * gw)))
    out = torch.zeros_like(out)
    for sel, val in results:
        out = out.index_copy(0, sel, val)
    return out


def _expand_box_for_paste(boxes: Tensor, scale: float) -> Tensor:
    # torchvision's expand_boxes, then truncation toward zero (Tensor.to(int64)).
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    w_half = w_half * scale
    h_half = h_half * scale
    out = torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1)
    return out.to(torch.int64)


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_h: int,
    image_w: int,
    threshold: float = 0.5,
    padding: int = 1,
) -> Tensor:
    """Paste per-box mask probabilities into the image and binarise them.

    masks: float [K, M, M] (probabilities in the box); boxes: float [K, 4] xyxy image pixels.
    Exactly torchvision's `paste_masks_in_image` (pad the mask by `padding`, grow the box by the
    same ratio, truncate it to integers, bilinearly resize the mask to the box, paste) followed by
    `> threshold`. Returns bool [K, image_h, image_w].
    """
    k = masks.shape[0]
    out = torch.zeros((k, image_h, image_w), dtype=torch.bool, device=masks.device)
    if k == 0:
        return out
    m = masks.shape[-1]
    scale = float(m + 2 * padding) / m
    padded = F.pad(masks, (padding,) * 4)
    ib = _expand_box_for_paste(boxes, scale).tolist()
    for i, (x0, y0, x1, y1) in enumerate(ib):
        w = max(x1 - x0 + 1, 1)
        h = max(y1 - y0 + 1, 1)
        res = F.interpolate(
            padded[i][None, None], size=(h, w), mode="bilinear", align_corners=False
        )
        res = res[0, 0]
        ya, yb = max(y0, 0), min(y1 + 1, image_h)
        xa, xb = max(x0, 0), min(x1 + 1, image_w)
        if ya >= yb or xa >= xb:
            continue  # box outside the image (torchvision would fail on negative slice ends here)
        out[i, ya:yb, xa:xb] = res[ya - y0 : yb - y0, xa - x0 : xb - x0] > threshold
    return out


def _crop_scale_polygons(
    coords: Tensor, poly_offsets: Tensor, roi_poly_offsets: Tensor, rois: Tensor, mask_size: int
) -> list[list[Tensor]]:
    """Per RoI, its polygons moved to the RoI corner and scaled to mask_size (float32 tensors)."""
    out = []
    for r in range(rois.shape[0]):
        x1, y1, x2, y2 = rois[r].tolist()
        # Width/height floored at one pixel, like maskrcnn-benchmark and NVIDIA's CUDA kernel.
        rw = torch.tensor(max(x2 - x1, 1.0), dtype=torch.float32)
        rh = torch.tensor(max(y2 - y1, 1.0), dtype=torch.float32)
        sx = torch.tensor(float(mask_size), dtype=torch.float32) / rw
        sy = torch.tensor(float(mask_size), dtype=torch.float32) / rh
        polys = []
        for p in range(int(roi_poly_offsets[r]), int(roi_poly_offsets[r + 1])):
            a, b = int(poly_offsets[p]), int(poly_offsets[p + 1])
            xy = coords[a:b].to(torch.float32).reshape(-1, 2).clone()
            xy[:, 0] = (xy[:, 0] - rois[r, 0].float()) * sx
            xy[:, 1] = (xy[:, 1] - rois[r, 1].float()) * sy
            polys.append(xy)
        out.append(polys)
    return out


def polygons_to_masks(
    coords: Tensor, poly_offsets: Tensor, roi_poly_offsets: Tensor, rois: Tensor, mask_size: int
) -> Tensor:
    """Mask R-CNN mask targets: rasterise each RoI's instance polygons into a mask_size^2 grid.

    coords: float32 [2 * total_points], every polygon's x, y interleaved, image pixels.
    poly_offsets: int64 [P + 1]; polygon p is coords[poly_offsets[p]:poly_offsets[p + 1]].
    roi_poly_offsets: int64 [R + 1]; RoI r owns polygons roi_poly_offsets[r]:roi_poly_offsets[r+1].
    rois: float32 [R, 4] xyxy image pixels.
    The polygons are cropped to the RoI (shifted to its corner), scaled so the RoI spans
    mask_size x mask_size, and a pixel is set when its centre lies inside any of them (even-odd
    rule per polygon, union over polygons). Polygons with fewer than 3 points are empty.
    Returns float32 [R, mask_size, mask_size] of 0/1.
    """
    r_count = rois.shape[0]
    out = torch.zeros((r_count, mask_size, mask_size), dtype=torch.float32, device=rois.device)
    centres = torch.arange(mask_size, dtype=torch.float64, device=rois.device) + 0.5
    for r, polys in enumerate(
        _crop_scale_polygons(
            coords.cpu(), poly_offsets.cpu(), roi_poly_offsets.cpu(), rois.cpu(), mask_size
        )
    ):
        for xy in polys:
            if xy.shape[0] < 3:
                continue
            xy = xy.to(torch.float64).to(rois.device)
            xa, ya = xy[:, 0], xy[:, 1]
            xb, yb = torch.roll(xa, -1), torch.roll(ya, -1)
            # Edge e crosses the row through centre y when exactly one endpoint is above it.
            py = centres[:, None]
            crosses = (ya[None, :] > py) != (yb[None, :] > py)  # [M, E]
            dy = torch.where(crosses, yb - ya, torch.ones_like(ya))
            xi = xa + (py - ya) * (xb - xa) / dy  # [M, E] crossing abscissa
            # A centre is inside when an odd number of crossings lie to its right.
            right = crosses[:, None, :] & (xi[:, None, :] > centres[None, :, None])  # [M, M, E]
            inside = (right.sum(-1) % 2) == 1
            out[r] = torch.maximum(out[r], inside.to(torch.float32))
    return out


def polygons_to_masks_pycocotools(
    coords: Tensor, poly_offsets: Tensor, roi_poly_offsets: Tensor, rois: Tensor, mask_size: int
) -> Tensor:
    """The seed's mask targets: the cropped, scaled polygons rasterised by pycocotools.

    Same inputs and output as `polygons_to_masks`; this is what maskrcnn-benchmark's
    `SegmentationMask.crop(box).resize((M, M)).get_mask_tensor()` computes (frPyObjects, merge,
    decode). pycocotools scan-converts at 5x resolution, so it differs from pixel-centre sampling
    on some boundary pixels. CPU only (returns a tensor on rois.device).
    """
    from pycocotools import mask as mask_utils

    out = torch.zeros((rois.shape[0], mask_size, mask_size), dtype=torch.float32)
    for r, polys in enumerate(
        _crop_scale_polygons(
            coords.cpu(), poly_offsets.cpu(), roi_poly_offsets.cpu(), rois.cpu(), mask_size
        )
    ):
        valid = [p.reshape(-1).double().tolist() for p in polys if p.shape[0] >= 3]
        if not valid:
            continue
        rles = mask_utils.frPyObjects(valid, mask_size, mask_size)
        m = mask_utils.decode(mask_utils.merge(rles))
        out[r] = torch.from_numpy(m).to(torch.float32)
    return out.to(rois.device)


def grid_anchors(
    base_anchors: Tensor, feat_h: int, feat_w: int, stride: int | tuple[int, int]
) -> Tensor:
    """Anchors of one feature level: base_anchors [A, 4] shifted to every cell.

    Cell (y, x) shifts by (x * stride_w, y * stride_h). Returns [feat_h * feat_w * A, 4] ordered
    cell-major (row by row), anchors of a cell consecutive: torchvision's AnchorGenerator order.
    """
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    dev = base_anchors.device
    shifts_x = torch.arange(0, feat_w, dtype=torch.int32, device=dev) * sw
    shifts_y = torch.arange(0, feat_h, dtype=torch.int32, device=dev) * sh
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x = shift_x.reshape(-1)
    shift_y = shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + base_anchors.view(1, -1, 4)).reshape(-1, 4)


def decode_boxes(
    deltas: Tensor,
    boxes: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = math.log(1000.0 / 16),
) -> Tensor:
    """Apply regression deltas [N, 4k] (dx, dy, dw, dh per class) to boxes [N, 4] xyxy.

    torchvision's BoxCoder.decode_single: centre/size parametrisation, deltas divided by weights
    (wx, wy, ww, wh), dw/dh clamped at `clamp` so exp() cannot overflow. Returns [N, 4k] xyxy.
    """
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = (deltas[:, 2::4] / ww).clamp(max=clamp)
    dh = (deltas[:, 3::4] / wh).clamp(max=clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    # torchvision multiplies by torch.tensor(0.5); a Python 0.5 is the same multiplication
    # (exact in binary floating point) without a host-to-device copy on a GPU.
    c_to_c_h = 0.5 * pred_h
    c_to_c_w = 0.5 * pred_w
    x1 = pred_ctr_x - c_to_c_w
    y1 = pred_ctr_y - c_to_c_h
    x2 = pred_ctr_x + c_to_c_w
    y2 = pred_ctr_y + c_to_c_h
    return torch.stack((x1, y1, x2, y2), dim=2).flatten(1)


def fpn_levels(
    boxes: Tensor,
    k_min: int,
    k_max: int,
    canonical_level: int = 4,
    canonical_scale: float = 224.0,
) -> Tensor:
    """FPN level index (0 = level k_min) of each box [R, 4] xyxy -> int64 [R]:
    floor(k0 + log2(sqrt(area) / s0) + 1e-6) clamped to [k_min, k_max] (torchvision's
    LevelMapper, in the boxes' dtype). A box with negative area (NaN level) gets -1: no level.
    """
    s = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    eps = torch.tensor(1e-6, dtype=s.dtype, device=s.device)
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + eps)
    lvl = torch.clamp(lvl, min=k_min, max=k_max)
    return torch.where(torch.isnan(lvl), -1, lvl.nan_to_num().to(torch.int64) - k_min)


def multilevel_roi_align(
    features: list[Tensor],
    rois: Tensor,
    spatial_scales: list[float],
    pooled_h: int,
    pooled_w: int,
    sampling_ratio: int,
    aligned: bool,
    canonical_level: int = 4,
    canonical_scale: float = 224.0,
    k_min: int = 2,
) -> Tensor:
    """RoIAlign of rois [R, 5] over FPN levels (features finest first, level k_min first): each
    RoI is pooled from its `fpn_levels` level at that level's scale; RoIs with no level (negative
    area) give zeros. Returns [R, C, pooled_h, pooled_w] in the features' dtype.
    """
    f0 = features[0]
    levels = fpn_levels(rois[:, 1:], k_min, k_min + len(features) - 1, canonical_level,
                        canonical_scale)
    out = f0.new_zeros((rois.shape[0], f0.shape[1], pooled_h, pooled_w))
    for lvl, (feat, scale) in enumerate(zip(features, spatial_scales)):
        sel = torch.where(levels == lvl)[0]
        if sel.numel():
            pooled = roi_align(feat, rois[sel], scale, pooled_h, pooled_w, sampling_ratio, aligned)
            out = out.index_copy(0, sel, pooled)
    return out


def rpn_decode_topk(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    level_sizes: list[int],
    pre_nms_top_n: int,
    image_hw: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = math.log(1000.0 / 16),
    min_size: float = 0.0,
    score_thresh: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The RPN's pre-NMS selection (mrcnn/modeling/rpn.py select_proposals before its NMS).

    objectness logits [B, N], deltas [B, N, 4], anchors [N, 4] (levels concatenated, sizes
    `level_sizes`), image_hw [B, 2] (h, w). Per level the min(pre_nms_top_n, N_l) highest logits
    (torch.topk order), decoded on their anchors, clipped to the image; valid = both sides >=
    min_size and sigmoid(logit) >= score_thresh. Returns boxes [B, K, 4], probabilities [B, K],
    level int64 [K], valid bool [B, K] with K = sum_l min(pre_nms_top_n, N_l).
    """
    b = objectness.shape[0]
    tops, lvls = [], []
    offset = 0
    for level, n in enumerate(level_sizes):
        # sym_min: the same int for ints, and no guard on a symbolic level size (torch.export
        # traces this function as the ONNX decomposition of the kernel, mrcnn/export/onnx_ops.py)
        k = torch.sym_min(pre_nms_top_n, n)
        top = objectness[:, offset : offset + n].topk(k, dim=1).indices
        tops.append(top + offset)
        lvls.append(torch.full((k,), level, dtype=torch.int64, device=objectness.device))
        offset += n
    idx = torch.cat(tops, dim=1)
    lvl = torch.cat(lvls)
    scores = torch.sigmoid(torch.gather(objectness, 1, idx))
    k = idx.shape[1]
    d = torch.gather(deltas, 1, idx[..., None].expand(-1, -1, 4)).reshape(b * k, 4)
    boxes = decode_boxes(d, anchors[idx].reshape(b * k, 4), weights, clamp).view(b, k, 4)
    hw = image_hw.to(boxes.dtype)
    x = boxes[..., 0::2].clamp(min=0).clamp(max=hw[:, 1, None, None])
    y = boxes[..., 1::2].clamp(min=0).clamp(max=hw[:, 0, None, None])
    boxes = torch.stack((x, y), dim=-1).reshape(boxes.shape)
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    valid = (ws >= min_size) & (hs >= min_size) & (scores >= score_thresh)
    return boxes, scores, lvl, valid


def encode_boxes(
    targets: Tensor,
    reference: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
) -> Tensor:
    """Regression deltas [N, 4] (dx, dy, dw, dh) that turn boxes `reference` [N, 4] into
    `targets` [N, 4] (xyxy): torchvision's BoxCoder.encode_single, operation for operation."""
    wx, wy, ww, wh = weights
    ex_w = reference[:, 2] - reference[:, 0]
    ex_h = reference[:, 3] - reference[:, 1]
    ex_x = reference[:, 0] + 0.5 * ex_w
    ex_y = reference[:, 1] + 0.5 * ex_h
    gt_w = targets[:, 2] - targets[:, 0]
    gt_h = targets[:, 3] - targets[:, 1]
    gt_x = targets[:, 0] + 0.5 * gt_w
    gt_y = targets[:, 1] + 0.5 * gt_h
    dx = wx * (gt_x - ex_x) / ex_w
    dy = wy * (gt_y - ex_y) / ex_h
    dw = ww * torch.log(gt_w / ex_w)
    dh = wh * torch.log(gt_h / ex_h)
    return torch.stack((dx, dy, dw, dh), dim=1)


def match_quality(
    quality: Tensor,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool = False,
    gt_valid: Tensor | None = None,
) -> Tensor:
    """torchvision's Matcher on a quality matrix, batched: quality float [..., M, N] (gt x
    predictions); gt_valid optional bool [..., M] marking real gt rows when the gt is padded
    (padded rows must hold a quality below 0, e.g. -1, so that they never win).

    Returns int64 [..., N]: each prediction's best gt (torch.max: the lowest index among equal
    maxima, the first NaN wins) when its quality is >= high_threshold, -2 in [low, high), -1
    below low or when M == 0. With `allow_low_quality_matches`, every prediction that attains
    some valid gt's highest quality (ties included, also when it is 0) keeps its best gt.
    """
    if low_threshold > high_threshold:
        raise ValueError(f"low_threshold {low_threshold} > high_threshold {high_threshold}")
    *lead, m, n = quality.shape
    if m == 0 or n == 0:
        return torch.full((*lead, n), -1, dtype=torch.int64, device=quality.device)
    vals, idx = quality.max(dim=-2)
    res = torch.where(vals < low_threshold, -1, torch.where(vals < high_threshold, -2, idx))
    if allow_low_quality_matches:
        is_best = quality == quality.max(dim=-1, keepdim=True).values
        if gt_valid is not None:
            is_best = is_best & gt_valid[..., None]
        res = torch.where(is_best.any(dim=-2), idx, res)
    return res


def match_boxes(
    gt_boxes: Tensor,
    gt_valid: Tensor,
    boxes: Tensor,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool = False,
) -> Tensor:
    """match_quality on the IoU of padded gt [B, M, 4] (valid [B, M]) with boxes [N, 4] or
    [B, N, 4] -> int64 [B, N] (gt index, -1 below low, -2 between); see ops.match_boxes.

    One image at a time, so the IoU matrix is [M, N], never [B, M, N]. Padded gt rows have
    quality -1.
    """
    if low_threshold > high_threshold:
        raise ValueError(f"low_threshold {low_threshold} > high_threshold {high_threshold}")
    b, m = gt_valid.shape
    n = boxes.shape[-2]
    out = torch.full((b, n), -1, dtype=torch.int64, device=gt_boxes.device)
    if m == 0 or n == 0:
        return out
    for i in range(b):
        iou = box_iou(gt_boxes[i], boxes if boxes.dim() == 2 else boxes[i])
        q = torch.where(gt_valid[i][:, None], iou, torch.full_like(iou, -1.0))
        out[i] = match_quality(
            q, high_threshold, low_threshold, allow_low_quality_matches, gt_valid[i]
        )
    return out
