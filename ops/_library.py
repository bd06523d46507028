"""Python-side registrations for the torch.ops.mrcnn operators of ops._C.

Fake (meta) kernels give output shapes and dtypes without computing, so torch.compile and
torch.export can trace the operators; register_autograd gives roi_align its gradient (its
backward is itself an operator with CPU and CUDA kernels, differentiable in turn because it is
linear in the incoming gradient). Imported by ops/__init__.py once ops._C has loaded.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _dynamic_length(boxes: Tensor) -> Tensor:
    # NMS keeps a data-dependent number of boxes: an unbacked size in [0, N].
    n = torch.library.get_ctx().new_dynamic_size()
    torch._check(n <= boxes.shape[0])
    return boxes.new_empty((n,), dtype=torch.int64)


@torch.library.register_fake("mrcnn::nms")
def _nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "boxes must be [N, 4]")
    torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "scores: [N]")
    return _dynamic_length(boxes)


@torch.library.register_fake("mrcnn::batched_nms")
def _batched_nms_fake(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "boxes must be [N, 4]")
    torch._check(scores.shape[0] == boxes.shape[0] and idxs.shape[0] == boxes.shape[0])
    return _dynamic_length(boxes)


@torch.library.register_fake("mrcnn::box_iou")
def _box_iou_fake(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    torch._check(boxes1.dtype == boxes2.dtype, lambda: "boxes1 and boxes2 dtypes differ")
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


@torch.library.register_fake("mrcnn::roi_align")
def _roi_align_fake(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    torch._check(input.dim() == 4, lambda: "input must be [N, C, H, W]")
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "rois must be [K, 5]")
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@torch.library.register_fake("mrcnn::roi_align_backward")
def _roi_align_backward_fake(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    return grad.new_empty((batch_size, channels, height, width))


def _roi_align_setup_context(ctx, inputs, output) -> None:
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    ctx.input_shape = tuple(input.shape)


def _roi_align_backward_formula(ctx, grad: Tensor):
    (rois,) = ctx.saved_tensors
    spatial_scale, ph, pw, sampling_ratio, aligned = ctx.args
    n, c, h, w = ctx.input_shape
    grad_input = torch.ops.mrcnn.roi_align_backward(
        grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned
    )
    return grad_input, None, None, None, None, None, None


torch.library.register_autograd(
    "mrcnn::roi_align", _roi_align_backward_formula, setup_context=_roi_align_setup_context
)


def _roi_align_backward_setup_context(ctx, inputs, output) -> None:
    grad, rois, spatial_scale, ph, pw, _n, _c, _h, _w, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, ph, pw, sampling_ratio, aligned)


def _roi_align_double_backward(ctx, grad_grad_input: Tensor):
    # roi_align_backward is linear in `grad`; its adjoint is roi_align itself.
    (rois,) = ctx.saved_tensors
    spatial_scale, ph, pw, sampling_ratio, aligned = ctx.args
    grad_grad = torch.ops.mrcnn.roi_align(
        grad_grad_input, rois, spatial_scale, ph, pw, sampling_ratio, aligned
    )
    return (grad_grad,) + (None,) * 10


torch.library.register_autograd(
    "mrcnn::roi_align_backward",
    _roi_align_double_backward,
    setup_context=_roi_align_backward_setup_context,
)


@torch.library.register_fake("mrcnn::paste_masks")
def _paste_masks_fake(
    masks: Tensor, boxes: Tensor, image_h: int, image_w: int, threshold: float, padding: int
) -> Tensor:
    torch._check(masks.dim() == 3, lambda: "masks must be [K, M, M]")
    return masks.new_empty((masks.shape[0], image_h, image_w), dtype=torch.bool)


@torch.library.register_fake("mrcnn::polygons_to_masks")
def _polygons_to_masks_fake(
    coords: Tensor, poly_offsets: Tensor, roi_poly_offsets: Tensor, rois: Tensor, mask_size: int
) -> Tensor:
    return rois.new_empty((rois.shape[0], mask_size, mask_size), dtype=torch.float32)


@torch.library.register_fake("mrcnn::grid_anchors")
def _grid_anchors_fake(
    base_anchors: Tensor, feat_h: int, feat_w: int, stride_h: int, stride_w: int
) -> Tensor:
    return base_anchors.new_empty((feat_h * feat_w * base_anchors.shape[0], 4))


@torch.library.register_fake("mrcnn::decode_boxes")
def _decode_boxes_fake(deltas: Tensor, boxes: Tensor, weights: list[float], clamp: float) -> Tensor:
    return deltas.new_empty(deltas.shape)


@torch.library.register_fake("mrcnn::encode_boxes")
def _encode_boxes_fake(targets: Tensor, reference: Tensor, weights: list[float]) -> Tensor:
    torch._check(targets.dim() == 2 and targets.shape[1] == 4, lambda: "targets must be [N, 4]")
    torch._check(reference.shape == targets.shape, lambda: "reference must be [N, 4] like targets")
    torch._check(reference.dtype == targets.dtype, lambda: "targets and reference dtypes differ")
    return targets.new_empty((targets.shape[0], 4))


@torch.library.register_fake("mrcnn::match_boxes")
def _match_boxes_fake(
    gt_boxes: Tensor,
    gt_valid: Tensor,
    boxes: Tensor,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool,
) -> Tensor:
    torch._check(gt_boxes.dim() == 3 and gt_boxes.shape[2] == 4, lambda: "gt_boxes: [B, M, 4]")
    torch._check(gt_valid.shape == gt_boxes.shape[:2], lambda: "gt_valid must be [B, M]")
    torch._check(boxes.dim() in (2, 3) and boxes.shape[-1] == 4, lambda: "boxes: [(B,) N, 4]")
    torch._check(boxes.dtype == gt_boxes.dtype, lambda: "boxes and gt_boxes dtypes differ")
    return gt_boxes.new_empty((gt_boxes.shape[0], boxes.shape[-2]), dtype=torch.int64)


@torch.library.register_fake("mrcnn::multilevel_roi_align")
def _multilevel_roi_align_fake(
    features: list[Tensor],
    rois: Tensor,
    spatial_scales: list[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    canonical_level: int,
    canonical_scale: float,
    k_min: int,
) -> Tensor:
    torch._check(len(features) >= 1, lambda: "at least one feature map")
    torch._check(len(spatial_scales) == len(features), lambda: "one spatial scale per map")
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "rois must be [K, 5]")
    f = features[0]
    return f.new_empty((rois.shape[0], f.shape[1], pooled_height, pooled_width))


@torch.library.register_fake("mrcnn::multilevel_roi_align_backward")
def _multilevel_roi_align_backward_fake(
    grad: Tensor,
    rois: Tensor,
    spatial_scales: list[float],
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    heights: list[int],
    widths: list[int],
    sampling_ratio: int,
    aligned: bool,
    canonical_level: int,
    canonical_scale: float,
    k_min: int,
) -> list[Tensor]:
    return [grad.new_empty((batch_size, channels, h, w)) for h, w in zip(heights, widths)]


def _multilevel_setup_context(ctx, inputs, output) -> None:
    features, rois, scales, ph, pw, sampling_ratio, aligned, level, scale, k_min = inputs
    ctx.save_for_backward(rois)
    ctx.args = (scales, ph, pw, sampling_ratio, aligned, level, scale, k_min)
    f = features[0]
    ctx.shapes = (f.shape[0], f.shape[1], [x.shape[2] for x in features],
                  [x.shape[3] for x in features])


def _multilevel_backward_formula(ctx, grad: Tensor):
    (rois,) = ctx.saved_tensors
    scales, ph, pw, sampling_ratio, aligned, level, scale, k_min = ctx.args
    n, c, hs, ws = ctx.shapes
    grads = torch.ops.mrcnn.multilevel_roi_align_backward(
        grad, rois, scales, ph, pw, n, c, hs, ws, sampling_ratio, aligned, level, scale, k_min
    )
    return (list(grads),) + (None,) * 9


torch.library.register_autograd(
    "mrcnn::multilevel_roi_align",
    _multilevel_backward_formula,
    setup_context=_multilevel_setup_context,
)


def _multilevel_backward_setup_context(ctx, inputs, output) -> None:
    grad, rois, scales, ph, pw, n, c, hs, ws, sampling_ratio, aligned, level, scale, k_min = inputs
    ctx.save_for_backward(rois)
    ctx.args = (scales, ph, pw, sampling_ratio, aligned, level, scale, k_min)
    ctx.shapes = (n, c, list(hs), list(ws))


def _multilevel_double_backward(ctx, grad_grads):
    # The backward is linear in `grad`; its adjoint is the forward on the per-level gradients.
    (rois,) = ctx.saved_tensors
    scales, ph, pw, sampling_ratio, aligned, level, scale, k_min = ctx.args
    n, c, hs, ws = ctx.shapes
    maps = [
        g if g is not None else rois.new_zeros((n, c, h, w))
        for g, h, w in zip(grad_grads, hs, ws)
    ]
    grad_grad = torch.ops.mrcnn.multilevel_roi_align(
        maps, rois, scales, ph, pw, sampling_ratio, aligned, level, scale, k_min
    )
    return (grad_grad,) + (None,) * 13


torch.library.register_autograd(
    "mrcnn::multilevel_roi_align_backward",
    _multilevel_double_backward,
    setup_context=_multilevel_backward_setup_context,
)


@torch.library.register_fake("mrcnn::rpn_decode_topk")
def _rpn_decode_topk_fake(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    level_sizes: list[int],
    pre_nms_top_n: int,
    image_hw: Tensor,
    weights: list[float],
    clamp: float,
    min_size: float,
    score_thresh: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    torch._check(objectness.dim() == 2, lambda: "objectness must be [B, N]")
    torch._check(deltas.dim() == 3 and deltas.shape[2] == 4, lambda: "deltas must be [B, N, 4]")
    b = objectness.shape[0]
    k = 0
    for n in level_sizes:
        k = k + torch.sym_min(pre_nms_top_n, n)
    return (
        objectness.new_empty((b, k, 4)),
        objectness.new_empty((b, k)),
        objectness.new_empty((k,), dtype=torch.int64),
        objectness.new_empty((b, k), dtype=torch.bool),
    )
