"""Export-friendly twins of the few inference steps that are not traceable with dynamic shapes.

Each function computes exactly (bit for bit) what its eager counterpart in `mrcnn.modeling`
computes; only the way the result is assembled differs:
- per-image counts through `scatter_add` instead of `torch.bincount` (whose output length is
  data-dependent, so torch.export cannot size it);
- anchors from `arange * stride` with a symbolic stride instead of `ops.grid_anchors` (whose
  stride arguments are plain ints: the P6 stride, canvas // ceil(canvas / 64), varies with the
  image size and would be specialised);
- no branch on the number of detections (a branch on an unbacked size cannot be traced).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from mrcnn.modeling import box_coder
from mrcnn.modeling.boxes import clip_boxes, nonempty
from mrcnn.modeling.postprocess import MIN_BOX_SIZE


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """ops.batched_nms without its Python test for empty inputs (a guard on an unbacked size);
    the kernel returns an empty index for empty boxes itself."""
    return torch.ops.mrcnn.batched_nms(boxes, scores, idxs, float(iou_threshold))


def level_anchors(cell: Tensor, feat_h, feat_w, stride_h, stride_w) -> Tensor:
    """ops.grid_anchors' layout (y, x, anchor), cell centres at (x * stride_w, y * stride_h);
    the shifts are int32 like the reference kernel, then added to float32 cell anchors."""
    shifts_x = torch.arange(0, feat_w, dtype=torch.int32, device=cell.device) * stride_w
    shifts_y = torch.arange(0, feat_h, dtype=torch.int32, device=cell.device) * stride_h
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)


def counts_per_image(batch_idx: Tensor, num_images) -> Tensor:
    """torch.bincount(batch_idx, minlength=num_images) for indices < num_images, fixed length."""
    counts = torch.zeros((num_images,), dtype=torch.int64, device=batch_idx.device)
    return counts.scatter_add(0, batch_idx, torch.ones_like(batch_idx))


def rank_in_image(batch_idx: Tensor, num_images) -> Tensor:
    """Position of each entry inside its image's run; batch_idx must be sorted."""
    counts = counts_per_image(batch_idx, num_images)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(batch_idx.shape[0], device=batch_idx.device) - starts[batch_idx]


def select_proposals(
    objectness: Tensor, deltas: Tensor, anchors: Tensor, level_sizes, image_hw: Tensor, r
) -> tuple[Tensor, Tensor]:
    """mrcnn.modeling.rpn.select_proposals (test settings of `r` = config.model.rpn) ->
    (boxes [B, P, 4], valid [B, P])."""
    b = objectness.shape[0]
    # The operator itself: ops.rpn_decode_topk's int() of the level sizes would specialise them.
    boxes, scores, lvl, keep_mask = torch.ops.mrcnn.rpn_decode_topk(
        objectness.float(), deltas.float(), anchors, list(level_sizes),
        int(r.pre_nms_top_n_test), image_hw, [float(v) for v in r.bbox_reg_weights],
        float(box_coder.DEFAULT_SCALE_CLAMP), float(r.min_size), float(r.score_thresh),
    )
    bi, ki = torch.nonzero(keep_mask, as_tuple=True)
    cand_boxes, cand_scores = boxes[bi, ki], scores[bi, ki]
    keep = batched_nms(cand_boxes, cand_scores, bi * len(level_sizes) + lvl[ki], r.nms_thresh)
    top_n = torch.sym_min(r.post_nms_top_n_test, boxes.shape[1])
    boxes, bidx = cand_boxes[keep], bi[keep]
    order = torch.sort(bidx, stable=True).indices
    boxes, bidx = boxes[order], bidx[order]
    rank = rank_in_image(bidx, b)
    sel = rank < top_n
    out_boxes = boxes.new_zeros((b, top_n, 4))
    out_valid = torch.zeros((b, top_n), dtype=torch.bool, device=boxes.device)
    bsel, rsel = bidx[sel], rank[sel]
    out_boxes[bsel, rsel] = boxes[sel]
    out_valid[bsel, rsel] = True
    return out_boxes, out_valid


def box_detections(
    class_logits: Tensor, box_regression: Tensor, proposals: Tensor, batch_idx: Tensor,
    image_hw: Tensor, num_images, rh,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mrcnn.modeling.postprocess.box_detections with `rh` = config.model.roi_heads."""
    r, c = class_logits.shape
    boxes = box_coder.decode(box_regression.float(), proposals, rh.bbox_reg_weights)
    boxes = boxes.reshape(r, c, 4)
    scores = F.softmax(class_logits.float(), -1)
    hw = image_hw[batch_idx]
    boxes = clip_boxes(boxes, hw[:, 0:1], hw[:, 1:2])
    boxes, scores = boxes[:, 1:], scores[:, 1:]
    keep = (scores > rh.score_thresh) & nonempty(boxes, MIN_BOX_SIZE)
    ri, ci = torch.nonzero(keep, as_tuple=True)
    boxes, scores, labels, img = boxes[ri, ci], scores[ri, ci], ci + 1, batch_idx[ri]
    keep = batched_nms(boxes, scores, img * c + labels, rh.nms_thresh)
    boxes, scores, labels, img = boxes[keep], scores[keep], labels[keep], img[keep]
    order = torch.sort(img, stable=True).indices
    boxes, scores, labels, img = boxes[order], scores[order], labels[order], img[order]
    sel = torch.nonzero(rank_in_image(img, num_images) < rh.detections_per_img).squeeze(1)
    return boxes[sel], scores[sel], labels[sel], img[sel]


def rescale_boxes(boxes: Tensor, size: Sequence, new_size: Sequence) -> Tensor:
    """postprocess.rescale_boxes with sizes that may be symbolic: the same float32 ratios."""
    def ratio(new, old):
        one = torch.ones((), dtype=torch.float32, device=boxes.device)
        return (one * new) / (one * old)

    rh, rw = ratio(new_size[0], size[0]), ratio(new_size[1], size[1])
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * rw, y1 * rh, x2 * rw, y2 * rh), dim=1)
