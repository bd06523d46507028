"""Inference post-processing: box-head outputs -> detections, and detections -> original image.

`box_detections` is torchvision's `RoIHeads.postprocess_detections` batched over images:
softmax, class-specific decoding, clipping, score threshold, removal of boxes under 0.01 px, NMS
per image and class (one ops.batched_nms call, group = image * num_classes + class, which runs
bounded per-group segments on CUDA), and the best `detections_per_img` per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

import ops
from mrcnn.modeling import box_coder
from mrcnn.modeling.boxes import clip_boxes, nonempty
from mrcnn.structures import Detections

MIN_BOX_SIZE = 1e-2  # torchvision drops detections with a side under 0.01 px


def box_detections(
    class_logits: Tensor,
    box_regression: Tensor,
    proposals: Tensor,
    batch_idx: Tensor,
    image_hw: Tensor,
    *,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    weights: Sequence[float],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """class_logits [R, C], box_regression [R, C * 4], proposals [R, 4] of images batch_idx
    int64 [R], image_hw float [B, 2] (h, w).

    Returns flat detections ordered by image, then by decreasing score: boxes float32 [D, 4]
    (xyxy, clipped), scores float32 [D], labels int64 [D] (1..C-1), batch_idx int64 [D].
    """
    r, c = class_logits.shape
    boxes = box_coder.decode(box_regression.float(), proposals, weights).reshape(r, c, 4)
    scores = F.softmax(class_logits.float(), -1)
    hw = image_hw[batch_idx]
    boxes = clip_boxes(boxes, hw[:, 0:1], hw[:, 1:2])
    boxes, scores = boxes[:, 1:], scores[:, 1:]
    keep = (scores > score_thresh) & nonempty(boxes, MIN_BOX_SIZE)
    ri, ci = torch.nonzero(keep, as_tuple=True)
    boxes, scores, labels, img = boxes[ri, ci], scores[ri, ci], ci + 1, batch_idx[ri]
    # One NMS problem per (image, class) segment (ops.batched_nms bounds each kernel call).
    keep = ops.batched_nms(boxes, scores, img * c + labels, nms_thresh)
    boxes, scores, labels, img = boxes[keep], scores[keep], labels[keep], img[keep]
    order, rank = rank_in_image(img, image_hw.shape[0])
    sel = order[torch.nonzero(rank < detections_per_img).squeeze(1)]
    return boxes[sel], scores[sel], labels[sel], img[sel]


def rank_in_image(batch_idx: Tensor, num_images: int) -> tuple[Tensor, Tensor]:
    """Flat items of several images (batch_idx int64 [K]) grouped by image: `order` [K] sorts
    them by image, stably, so an order they already have (NMS's decreasing score) is kept within
    each image; rank[j] is the position of item order[j] within its image (0 = first).
    Used to keep the best n per image of detections (here) and of proposals (rpn.py).
    """
    order = torch.sort(batch_idx, stable=True).indices
    img = batch_idx[order]
    # scatter_add, not bincount: bincount's output size depends on the largest value, a
    # device-to-host read on a GPU.
    counts = torch.zeros(num_images, dtype=torch.int64, device=img.device)
    counts.scatter_add_(0, img, torch.ones_like(img))
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(img.shape[0], device=img.device) - starts[img]
    return order, rank


def rescale_boxes(
    boxes: Tensor, size: tuple[int, int], new_size: tuple[int, int]
) -> Tensor:
    """Boxes [K, 4] of an image of `size` (h, w) in the pixels of one of `new_size`, each axis
    by its own ratio (torchvision's resize_boxes, same float32 arithmetic)."""
    ratio_h = torch.tensor(new_size[0], dtype=torch.float32) / torch.tensor(
        size[0], dtype=torch.float32
    )
    ratio_w = torch.tensor(new_size[1], dtype=torch.float32) / torch.tensor(
        size[1], dtype=torch.float32
    )
    ratio_h, ratio_w = ratio_h.to(boxes.device), ratio_w.to(boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


def detections_to_original(
    det: Detections,
    size: tuple[int, int],
    orig_size: tuple[int, int],
    mask_threshold: float = 0.5,
) -> Detections:
    """Detections of the resized image (`size`, h w) -> the original image (`orig_size`).

    Boxes are rescaled per axis; masks (probabilities [K, 1, M, M] in the box) are pasted into
    the original image with `ops.paste_masks` and thresholded (> mask_threshold) -> uint8
    [K, H, W]. A detection without masks keeps masks None.
    """
    boxes = rescale_boxes(det.boxes.float(), size, orig_size)
    masks = det.masks
    if masks is not None:
        h, w = orig_size
        if masks.shape[0] == 0:
            masks = torch.zeros((0, h, w), dtype=torch.uint8, device=boxes.device)
        else:
            masks = ops.paste_masks(masks[:, 0].float(), boxes, h, w, mask_threshold, 1)
            masks = masks.to(torch.uint8)
    return Detections(boxes, det.scores, det.labels, masks)
