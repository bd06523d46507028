"""RPN proposal selection against torchvision's RegionProposalNetwork.filter_proposals."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers

from mrcnn.modeling.anchors import AnchorCache
from mrcnn.modeling.rpn import flatten_outputs, select_proposals


def _grids(h: int, w: int) -> list[tuple[int, int]]:
    """Feature sizes of P2..P6 for a padded h x w batch (P6 = ceil(P5 / 2))."""
    sizes = [(-(-h // s), -(-w // s)) for s in (4, 8, 16, 32)]
    sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    return sizes


@pytest.mark.parametrize("score_thresh", [0.0, 0.6])
def test_select_proposals_equals_torchvision(score_thresh):
    g = torch.Generator().manual_seed(0)
    hw = (96, 128)
    image_sizes = [(96, 128), (70, 90)]
    grids = _grids(*hw)
    anchors = AnchorCache([(s,) for s in (16, 32, 64, 128, 256)], (0.5, 1.0, 2.0))(
        hw, grids, torch.device("cpu")
    )
    logits = [torch.randn(2, 3, *gr, generator=g) for gr in grids]
    deltas = [torch.randn(2, 12, *gr, generator=g) * 0.3 for gr in grids]
    obj, reg, level_sizes = flatten_outputs(logits, deltas)
    boxes, scores, valid = select_proposals(
        obj, reg, torch.cat(anchors), level_sizes,
        torch.tensor(image_sizes, dtype=torch.float32),
        pre_nms_top_n=60, post_nms_top_n=100, nms_thresh=0.7, min_size=1e-3,
        score_thresh=score_thresh,
    )
    tv_rpn = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5,
                                   {"testing": 60}, {"testing": 100}, 0.7, score_thresh)
    tv_rpn.eval()
    tv_obj, tv_reg = concat_box_prediction_layers(logits, deltas)
    assert torch.equal(obj.reshape(-1, 1), tv_obj) and torch.equal(reg.reshape(-1, 4), tv_reg)
    proposals = tv_rpn.box_coder.decode(tv_reg, [torch.cat(anchors)] * 2).view(2, -1, 4)
    tv_boxes, tv_scores = tv_rpn.filter_proposals(proposals, tv_obj, image_sizes, level_sizes)
    for i in range(2):
        n = int(valid[i].sum())
        assert valid[i, :n].all() and not valid[i, n:].any()  # valid ones first
        assert n == len(tv_boxes[i]) > 0
        assert torch.equal(boxes[i, :n], tv_boxes[i])
        assert torch.equal(scores[i, :n], tv_scores[i])
