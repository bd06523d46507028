"""Training targets of the RPN (per anchor) and of the box head (per sampled proposal).

Everything is batched over images: ground truth is padded to the largest count in the batch
(`pad_gt`), padded rows are marked invalid and can never be matched. Label conventions:
- RPN labels, int64 [B, N]: 1 object, 0 background, -1 ignored (between the IoU thresholds);
- RoI labels, int64: the gt class (1..num_classes-1), 0 background, -1 ignored / padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

import ops
from mrcnn.modeling import box_coder
from mrcnn.modeling.boxes import pairwise_iou
from mrcnn.modeling.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match
from mrcnn.modeling.sampling import sample_pos_neg
from mrcnn.structures import Targets

# Without compiled kernels the matcher runs on the [B, M, N] IoU matrix, the largest tensor of a
# step at 800 x 1333 px (~270k anchors): images are then matched in chunks that keep it under
# ~2^26 entries. ops.match_boxes never builds the matrix.
MAX_IOU_ENTRIES = 1 << 26


@dataclasses.dataclass
class PaddedGT:
    """Ground truth of a batch padded to M = max(1, most boxes in one image).

    boxes: float32 [B, M, 4] xyxy (padding rows are (0, 0, 1, 1), a harmless finite box);
    labels: int64 [B, M] (padding 0); valid: bool [B, M].
    """

    boxes: Tensor
    labels: Tensor
    valid: Tensor


def pad_gt(targets: Sequence[Targets], device: torch.device) -> PaddedGT:
    """Stacks per-image ground truth into padded [B, M, ...] tensors on `device`."""
    b = len(targets)
    m = max([1] + [int(t.boxes.shape[0]) for t in targets])
    # Filled on the device: a tensor built from Python data would be a blocking host copy.
    boxes = torch.zeros((b, m, 4), dtype=torch.float32, device=device)
    boxes[..., 2:] = 1.0
    labels = torch.zeros((b, m), dtype=torch.int64, device=device)
    valid = torch.zeros((b, m), dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = int(t.boxes.shape[0])
        if n:
            boxes[i, :n] = t.boxes.to(device=device, dtype=torch.float32)
            labels[i, :n] = t.labels.to(device)
            valid[i, :n] = True
    return PaddedGT(boxes, labels, valid)


def _quality(gt: PaddedGT, boxes: Tensor) -> Tensor:
    """IoU [B, M, N] of the gt with boxes [N, 4] or [B, N, 4]; padded gt rows hold -1."""
    iou = pairwise_iou(gt.boxes, boxes if boxes.dim() == 3 else boxes[None])
    return torch.where(gt.valid[..., None], iou, torch.full_like(iou, -1.0))


def match_gt(
    gt: PaddedGT, boxes: Tensor, high: float, low: float, allow_low_quality_matches: bool
) -> Tensor:
    """matcher.match on _quality(gt, boxes), boxes [N, 4] (shared) or [B, N, 4] -> int64 [B, N].

    ops.match_boxes computes exactly that, bit for bit, in one fused kernel (and falls back to
    ops.reference, one image at a time, where no kernel serves the device).
    """
    dtype = torch.promote_types(gt.boxes.dtype, boxes.dtype)  # as pairwise_iou would compute
    return ops.match_boxes(
        gt.boxes.to(dtype), gt.valid, boxes.to(dtype), high, low, allow_low_quality_matches
    )


def rpn_targets(
    anchors: Tensor,
    gt: PaddedGT,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    weights: Sequence[float],
) -> tuple[Tensor, Tensor]:
    """Anchors [N, 4] (shared by all images) vs gt -> (labels int64 [B, N] in {1, 0, -1},
    regression targets float32 [B, N, 4]; rows that are not positive may be non-finite).

    Low-quality matches are kept (each gt's best anchors are positives), as torchvision's RPN.
    """
    matched = match_gt(gt, anchors, fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
    ignore = torch.full_like(matched, -1)
    labels = torch.where(
        matched >= 0,
        torch.ones_like(matched),
        torch.where(matched == BETWEEN_THRESHOLDS, ignore, torch.zeros_like(matched)),
    )
    idx = matched.clamp(min=0)
    matched_boxes = torch.gather(gt.boxes, 1, idx[..., None].expand(-1, -1, 4))
    targets = box_coder.encode(matched_boxes, anchors[None].expand_as(matched_boxes), weights)
    return labels, targets


@dataclasses.dataclass
class RoISamples:
    """Sampled proposals of a batch in fixed-size slots: `per_image` rows per image, image by
    image; inside an image the sampled proposals come first, in the order of their position
    (the RPN's proposals by score, then the ground-truth boxes), then unused slots.

    boxes: float32 [R, 4]; batch_idx: int64 [R]; labels: int64 [R] (0 background, -1 an unused
    slot); matched_gt: int64 [R], index of the matched gt in its image (0 for background and
    unused slots); regression_targets: float32 [R, 4] (meaningful where labels > 0, 0 in
    unused slots). R = B * per_image, known without reading the device.
    """

    boxes: Tensor
    batch_idx: Tensor
    labels: Tensor
    matched_gt: Tensor
    regression_targets: Tensor
    per_image: int

    @property
    def valid(self) -> Tensor:
        """bool [R]: the slots that hold a sample."""
        return self.labels >= 0

    def take(self, rows: Tensor, per_image: int) -> RoISamples:
        """The samples at `rows` int64 [R'], laid out in `per_image` slots per image (0 when
        they are no longer in fixed slots, e.g. after a compaction)."""
        return RoISamples(
            self.boxes[rows], self.batch_idx[rows], self.labels[rows], self.matched_gt[rows],
            self.regression_targets[rows], per_image,
        )


def first_k(mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """mask bool [B, N] -> (indices int64 [B, k'] of the True entries in increasing order,
    then the others, valid bool [B, k']), k' = min(k, N). Fixed size: no host read, unlike
    nonzero. Rows with more than k True entries keep the first k."""
    k = min(k, mask.shape[1])
    # A stable sort of "not selected" puts the selected entries first, in their order.
    idx = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :k]
    return idx, torch.gather(mask, 1, idx)


def roi_targets(
    proposals: Tensor,
    proposals_valid: Tensor,
    gt: PaddedGT,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    batch_size_per_image: int,
    positive_fraction: float,
    weights: Sequence[float],
    generator: torch.Generator | None = None,
) -> RoISamples:
    """torchvision's select_training_samples, batched: append the gt boxes to the proposals
    [B, P, 4] (valid [B, P]), match at fg/bg IoU without low-quality matches, sample
    `batch_size_per_image` per image with `positive_fraction` positives, encode the targets.

    The samples are those torchvision draws (the same subsets with the same probabilities), in
    min(batch_size_per_image, P + M) slots per image so that no size depends on the data.
    """
    boxes = torch.cat([proposals, gt.boxes], dim=1)
    valid = torch.cat([proposals_valid, gt.valid], dim=1)
    matched = match_gt(gt, boxes, fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
    idx = matched.clamp(min=0)
    labels = torch.gather(gt.labels, 1, idx)
    labels = torch.where(matched == BELOW_LOW_THRESHOLD, torch.zeros_like(labels), labels)
    labels = torch.where(matched == BETWEEN_THRESHOLDS, torch.full_like(labels, -1), labels)
    labels = torch.where(valid, labels, torch.full_like(labels, -1))
    pos, neg = sample_pos_neg(labels, batch_size_per_image, positive_fraction, generator)
    q, used = first_k(pos | neg, batch_size_per_image)
    b, k = q.shape
    rois = torch.gather(boxes, 1, q[..., None].expand(b, k, 4)).reshape(-1, 4)
    mg = torch.where(used, torch.gather(idx, 1, q), torch.zeros_like(q))
    lab = torch.where(used, torch.gather(labels, 1, q), torch.full_like(q, -1)).reshape(-1)
    gt_boxes = torch.gather(gt.boxes, 1, mg[..., None].expand(b, k, 4)).reshape(-1, 4)
    reg = box_coder.encode(gt_boxes, rois, weights)
    # Unused slots may hold empty padding boxes (non-finite targets): zero them.
    reg = torch.where(lab[:, None] >= 0, reg, torch.zeros_like(reg))
    batch_idx = torch.arange(b, device=boxes.device)[:, None].expand(b, k).reshape(-1)
    return RoISamples(rois, batch_idx, lab, mg.reshape(-1), reg, k)
