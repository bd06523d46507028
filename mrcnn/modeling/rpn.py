"""Region Proposal Network: the head (weights) and proposal selection (a pure function).

Proposal selection is torchvision's `RegionProposalNetwork.filter_proposals`, batched: per
level the `pre_nms_top_n` highest objectness logits, decoded, clipped to the image, boxes with
a side below `min_size` or a probability below `score_thresh` dropped, NMS per image and level,
then the `post_nms_top_n` best per image. All images and levels go through one NMS call (the
group of a box is image * num_levels + level), and only the top-k boxes are decoded: the
per-level top-k, sigmoid, decoding, clipping and validity tests of all images and levels are one
operator, ops.rpn_decode_topk (on CUDA one top-k and one fused kernel). The NMS call runs
bounded per-(image, level) segments on CUDA (ops.batched_nms).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import ops
from mrcnn.modeling import box_coder
from mrcnn.modeling.postprocess import rank_in_image


class RPNHead(nn.Module):
    """conv_depth x (3x3 conv + ReLU), then 1x1 convs to A objectness logits and 4A deltas;
    shared by levels.

    forward(list of [B, C, H_l, W_l]) -> (objectness list of [B, A, H_l, W_l],
    deltas list of [B, 4A, H_l, W_l]).
    Submodules: `trunk.{i}` (the first conv_depth - 1 convs, none for torchvision's v1 head),
    `conv` (the last 3x3 conv: the one rpn_sampled.head_at_anchors re-evaluates), `cls_logits`,
    `bbox_pred`. torchvision's maskrcnn_resnet50_fpn_v2 has conv_depth=2.
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1):
        super().__init__()
        if conv_depth < 1:
            raise ValueError(f"RPNHead conv_depth must be >= 1, got {conv_depth}")
        self.trunk = nn.ModuleList(
            nn.Conv2d(in_channels, in_channels, 3, padding=1) for _ in range(conv_depth - 1)
        )
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in (*self.trunk, self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    @property
    def conv_depth(self) -> int:
        return len(self.trunk) + 1

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for f in feats:
            for conv in self.trunk:
                f = F.relu_(conv(f))
            t = F.relu_(self.conv(f))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def flatten_outputs(
    logits: Sequence[Tensor], deltas: Sequence[Tensor]
) -> tuple[Tensor, Tensor, list[int]]:
    """Head outputs to the anchors' order (level, y, x, anchor):
    -> objectness [B, N], deltas [B, N, 4], anchors per level [N_l]."""
    obj, reg, sizes = [], [], []
    for lg, dl in zip(logits, deltas):
        b, a, h, w = lg.shape
        obj.append(lg.permute(0, 2, 3, 1).reshape(b, -1))
        reg.append(dl.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        sizes.append(h * w * a)
    return torch.cat(obj, dim=1), torch.cat(reg, dim=1), sizes


def select_proposals(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    level_sizes: Sequence[int],
    image_hw: Tensor,
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    min_size: float,
    score_thresh: float,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> tuple[Tensor, Tensor, Tensor]:
    """objectness logits [B, N], deltas [B, N, 4], anchors [N, 4] (levels concatenated, sizes
    `level_sizes`), image_hw float [B, 2] unpadded (h, w).

    Returns (boxes float32 [B, P, 4], probabilities float32 [B, P], valid bool [B, P]) with
    P = min(post_nms_top_n, pre-NMS candidates per image): each image's proposals first, by
    decreasing score, then padding (zeros, valid False). No gradient flows: proposals are
    constants to the RoI heads.
    """
    objectness = objectness.detach().float()
    deltas = deltas.detach().float()
    b = objectness.shape[0]
    num_levels = len(level_sizes)
    # Per-level top-k, gather, sigmoid, decode, clip and the validity tests, all levels and
    # images in one operator (equal bit for bit to ops.reference.rpn_decode_topk).
    boxes, scores, lvl, keep_mask = ops.rpn_decode_topk(
        objectness,
        deltas,
        anchors,
        level_sizes,
        pre_nms_top_n,
        image_hw,
        weights=tuple(weights),
        clamp=box_coder.DEFAULT_SCALE_CLAMP,
        min_size=min_size,
        score_thresh=score_thresh,
    )

    bi, ki = torch.nonzero(keep_mask, as_tuple=True)
    cand_boxes, cand_scores = boxes[bi, ki], scores[bi, ki]
    keep = ops.batched_nms(cand_boxes, cand_scores, bi * num_levels + lvl[ki], nms_thresh)
    p = min(post_nms_top_n, boxes.shape[1])
    return _top_per_image(cand_boxes[keep], cand_scores[keep], bi[keep], b, p)


def _top_per_image(
    boxes: Tensor, scores: Tensor, batch_idx: Tensor, num_images: int, top_n: int
) -> tuple[Tensor, Tensor, Tensor]:
    """From candidates sorted by decreasing score (any image order), the first `top_n` of each
    image, scattered into padded [B, top_n] slots."""
    order, rank = rank_in_image(batch_idx, num_images)  # by image, score order kept inside
    boxes, scores, batch_idx = boxes[order], scores[order], batch_idx[order]
    # Candidates past top_n all go to one spare slot that is cut off afterwards: a scatter
    # over every candidate, with no boolean selection (a device-to-host read on a GPU). The
    # real slots each receive exactly one candidate.
    ri = rank.clamp(max=top_n)
    out_boxes = boxes.new_zeros((num_images, top_n + 1, 4))
    out_scores = scores.new_zeros((num_images, top_n + 1))
    out_valid = torch.zeros((num_images, top_n + 1), dtype=torch.bool, device=boxes.device)
    out_boxes[batch_idx, ri] = boxes
    out_scores[batch_idx, ri] = scores
    out_valid[batch_idx, ri] = True
    return (out_boxes[:, :top_n].contiguous(), out_scores[:, :top_n].contiguous(),
            out_valid[:, :top_n].contiguous())
