"""Our operators in ONNX: decompositions to aten, and translations to ONNX's own operators.

`torch.onnx.export(..., dynamo=True)` exports an ExportedProgram; before it does, the program's
torch.ops.mrcnn.* calls are rewritten (`ExportedProgram.run_decompositions`) so that only two
remain, which ONNX has natively:
- mrcnn::nms -> NonMaxSuppression (one class; torchvision's ONNX export does the same);
- mrcnn::roi_align -> RoiAlign (opset 16+, avg mode, coordinate_transformation_mode
  output_half_pixel for the legacy aligned=False, half_pixel for aligned=True; sampling ratio
  0 = adaptive, our -1);
and the others become aten code that computes what the kernels compute:
- batched_nms: torchvision's coordinate trick (boxes offset by group * (max coordinate + 1),
  then one nms) - in float32 the offsets cost ~1e-3 px of precision per box far from 0;
- multilevel_roi_align: the level of each RoI (poolers.map_levels' rule), one roi_align per
  level over that level's RoIs, scattered back;
- rpn_decode_topk: per-level topk, sigmoid, decode, clip, validity (ops.reference's order);
- paste_masks: the separable bilinear resize of the padded mask into its integer box, written
  as gathers over the whole image (torchvision's paste_masks_in_image, no per-box loop).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ops import reference

MAX_NMS_OUTPUT = 1 << 30


# ----------------------------------------------------------------------------- decompositions
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros((1,))]).max()
    offsets = idxs.to(boxes.dtype) * (top + 1)
    return torch.ops.mrcnn.nms(boxes + offsets[:, None], scores, iou_threshold)


# reference.fpn_levels with python-number constants instead of torch.tensor ones (which the
# decomposition tracer cannot lift); the same float32 values.
def fpn_levels(boxes: Tensor, k_min: int, k_max: int, canonical_level, canonical_scale):
    s = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + 1e-6)
    lvl = torch.clamp(lvl, min=k_min, max=k_max)
    return torch.where(torch.isnan(lvl), -1, lvl.nan_to_num().to(torch.int64) - k_min)


def decode_boxes(deltas: Tensor, boxes: Tensor, weights, clamp: float) -> Tensor:
    # ops.reference's copy uses Python-number constants only, so it decomposes as it is.
    from ops import reference

    return reference.decode_boxes(deltas, boxes, tuple(weights), clamp)


def multilevel_roi_align(features, rois, spatial_scales, pooled_height, pooled_width,
                         sampling_ratio, aligned, canonical_level, canonical_scale, k_min):
    levels = fpn_levels(rois[:, 1:], k_min, k_min + len(features) - 1, canonical_level,
                        canonical_scale)
    f0 = features[0]
    out = f0.new_zeros((rois.shape[0], f0.shape[1], pooled_height, pooled_width))
    for lvl, (feat, scale) in enumerate(zip(features, spatial_scales)):
        sel = torch.nonzero(levels == lvl).squeeze(1)
        pooled = torch.ops.mrcnn.roi_align(feat, rois[sel], scale, pooled_height, pooled_width,
                                           sampling_ratio, aligned)
        out = out.index_copy(0, sel, pooled)
    return out


def rpn_decode_topk(objectness, deltas, anchors, level_sizes, pre_nms_top_n, image_hw,
                    weights, clamp, min_size, score_thresh):
    # ops.reference's copy is the decomposition: it uses no guard on symbolic level sizes.
    from ops import reference

    return reference.rpn_decode_topk(objectness, deltas, anchors, level_sizes, pre_nms_top_n,
                                     image_hw, tuple(weights), clamp, min_size, score_thresh)


def _axis_weights(start: Tensor, length: Tensor, size, src_size: int):
    """Bilinear taps (align_corners=False) of image pixels 0..size-1 along one axis into a
    source of `src_size` resized to `length` pixels placed at `start` (all [K]).
    -> (i0, i1 int64 [K, size], w0, w1 float32 [K, size], inside bool [K, size])."""
    pix = torch.arange(size, device=start.device)[None, :] - start[:, None]  # [K, size]
    inside = (pix >= 0) & (pix < length[:, None])
    scale = src_size / length.to(torch.float32)
    src = ((pix.to(torch.float32) + 0.5) * scale[:, None] - 0.5).clamp(min=0)
    i0 = src.to(torch.int64).clamp(max=src_size - 1)
    i1 = torch.where(i0 < src_size - 1, i0 + 1, i0)
    w1 = src - i0.to(torch.float32)
    return i0, i1, 1.0 - w1, w1, inside


def paste_masks(masks: Tensor, boxes: Tensor, image_h, image_w, threshold: float,
                padding: int) -> Tensor:
    """ops.paste_masks as tensor code: bool [K, image_h, image_w]."""
    k, m = masks.shape[0], masks.shape[-1]
    mp = m + 2 * padding
    padded = F.pad(masks, (padding,) * 4)  # [K, Mp, Mp]
    ib = reference._expand_box_for_paste(boxes, float(mp) / m)  # int64 [K, 4]
    w = (ib[:, 2] - ib[:, 0] + 1).clamp(min=1)
    h = (ib[:, 3] - ib[:, 1] + 1).clamp(min=1)
    x0, x1, wx0, wx1, in_x = _axis_weights(ib[:, 0], w, image_w, mp)
    y0, y1, wy0, wy1, in_y = _axis_weights(ib[:, 1], h, image_h, mp)
    # Along x first, then y (the order of upsample_bilinear2d's sums), each as a batched
    # matrix product with a [K, size, Mp] matrix of the two taps' weights. Gathers would need
    # [K, H, W] int64 index tensors, which ONNX materialises: 800 masks at 800x1333 (batch 8)
    # took over 24 GB in onnxruntime; this peaks at the [K, H, W] float32 result.
    rows = torch.bmm(padded, _tap_matrix(x0, x1, wx0, wx1, mp).transpose(1, 2))  # [K, Mp, W]
    val = torch.bmm(_tap_matrix(y0, y1, wy0, wy1, mp), rows)  # [K, H, W]
    return (val > threshold) & in_y[:, :, None] & in_x[:, None, :]


def _tap_matrix(i0: Tensor, i1: Tensor, w0: Tensor, w1: Tensor, src_size: int) -> Tensor:
    """[K, size] taps and weights -> float32 [K, size, src_size], w0 at i0 and w1 at i1."""
    j = torch.arange(src_size, device=i0.device)
    return (w0[..., None] * (i0[..., None] == j).to(w0.dtype)
            + w1[..., None] * (i1[..., None] == j).to(w1.dtype))


def decomposition_table() -> dict:
    m = torch.ops.mrcnn
    return {
        m.batched_nms.default: batched_nms,
        m.multilevel_roi_align.default: multilevel_roi_align,
        m.rpn_decode_topk.default: rpn_decode_topk,
        m.paste_masks.default: paste_masks,
    }


# ----------------------------------------------------------------------------- translations
def translation_table() -> dict:
    """onnxscript functions for mrcnn::nms and mrcnn::roi_align (imported only when used)."""
    import operator

    import onnx_ir
    from onnxscript import opset18 as op

    # Plain functions: the exporter traces them with onnxscript's ops, so Python values of the
    # attributes (aligned, the threshold) pick the ONNX attributes.
    def _nms(boxes, scores, iou_threshold: float):
        max_out = op.Constant(value_ints=[MAX_NMS_OUTPUT])
        thr = op.Constant(value_float=iou_threshold)
        sel = op.NonMaxSuppression(op.Unsqueeze(boxes, [0]), op.Unsqueeze(scores, [0, 1]),
                                   max_out, thr)
        return op.Reshape(op.Slice(sel, [2], [3], [1]), [-1])

    def _roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int,
                   sampling_ratio: int, aligned: bool):
        batch = op.Cast(op.Reshape(op.Slice(rois, [0], [1], [1]), [-1]), to=7)  # int64
        coords = op.Slice(rois, [1], [5], [1])
        mode = "half_pixel" if aligned else "output_half_pixel"
        return op.RoiAlign(input, coords, batch, mode="avg", output_height=pooled_height,
                           output_width=pooled_width, sampling_ratio=max(sampling_ratio, 0),
                           spatial_scale=spatial_scale, coordinate_transformation_mode=mode)

    def _stable_sort(x, stable: bool = True, dim: int = -1, descending: bool = False):
        # The graph sorts 1-d int64 image indices (small, >= 0) stably: with the position
        # folded into the key (x * n + i) the keys are unique, so TopK's order is the stable one.
        n = op.Shape(x)
        pos = op.Range(op.Constant(value_int=0), op.Squeeze(n), op.Constant(value_int=1))
        key = op.Add(op.Mul(x, op.Squeeze(n)), pos)
        _, idx = op.TopK(key, n, axis=0, largest=1 if descending else 0, sorted=1)
        return op.Gather(x, idx, axis=0), idx

    # The resize's size is int(H * min(m / min(H, W), M / max(H, W))) evaluated in Python
    # doubles by eager; the exporter's default float32 for these symbolic-float ops can round
    # 230 * (256 / 230) down to 255 where eager gets 256: the size arithmetic stays in double.
    double = onnx_ir.DataType.DOUBLE

    def _is_float(x) -> bool:
        return isinstance(x, float) or (getattr(x, "dtype", None) in (
            onnx_ir.DataType.FLOAT, onnx_ir.DataType.DOUBLE))

    def _sym_float(x):
        return op.Cast(x, to=double)

    def _truediv(a, b):
        return op.Div(op.Cast(a, to=double), op.Cast(b, to=double))

    def _mul(a, b):
        if _is_float(a) or _is_float(b):
            return op.Mul(op.Cast(a, to=double), op.Cast(b, to=double))
        return op.Mul(a, b)

    m = torch.ops.mrcnn
    return {m.nms.default: _nms, m.roi_align.default: _roi_align,
            torch.ops.aten.sort.stable: _stable_sort, torch.sym_float: _sym_float,
            operator.truediv: _truediv, operator.mul: _mul}

