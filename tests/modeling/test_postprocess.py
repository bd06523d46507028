"""Inference post-processing against torchvision: box detections, and detections pasted into
the original image."""

from __future__ import annotations

import torch
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from mrcnn.modeling.postprocess import box_detections, detections_to_original
from mrcnn.structures import Detections


def test_box_detections_equal_torchvision():
    g = torch.Generator().manual_seed(2)
    image_sizes = [(96, 128), (80, 100)]
    props = [torch.rand(60, 2, generator=g) * 60, torch.rand(40, 2, generator=g) * 50]
    props = [torch.cat([p, p + 10 + torch.rand(len(p), 2, generator=g) * 30], 1) for p in props]
    c = 5
    logits = torch.randn(100, c, generator=g) * 2
    regression = torch.randn(100, c * 4, generator=g)
    heads = tv_roi_heads.RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 20)
    tv_boxes, tv_scores, tv_labels = heads.postprocess_detections(
        logits, regression, props, image_sizes
    )
    boxes, scores, labels, img = box_detections(
        logits, regression, torch.cat(props), torch.tensor([0] * 60 + [1] * 40),
        torch.tensor(image_sizes, dtype=torch.float32),
        score_thresh=0.05, nms_thresh=0.5, detections_per_img=20, weights=(10.0, 10.0, 5.0, 5.0),
    )
    for i in range(2):
        sel = img == i
        assert int(sel.sum()) == len(tv_boxes[i]) == 20
        assert torch.equal(boxes[sel], tv_boxes[i])
        assert torch.equal(scores[sel], tv_scores[i])
        assert torch.equal(labels[sel], tv_labels[i])
    # nothing above the threshold: empty, well-typed
    out = box_detections(
        torch.full((3, c), -10.0).index_fill_(1, torch.tensor([0]), 10.0), regression[:3],
        torch.cat(props)[:3], torch.zeros(3, dtype=torch.int64),
        torch.tensor(image_sizes, dtype=torch.float32),
        score_thresh=0.05, nms_thresh=0.5, detections_per_img=20, weights=(10.0, 10.0, 5.0, 5.0),
    )
    assert [t.shape[0] for t in out] == [0, 0, 0, 0] and out[2].dtype == torch.int64


def test_detections_to_original_equals_torchvision_postprocess():
    g = torch.Generator().manual_seed(3)
    size, orig = (100, 133), (375, 500)
    xy = torch.rand(6, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 5 + torch.rand(6, 2, generator=g) * 40], 1)
    masks = torch.rand(6, 1, 28, 28, generator=g)
    det = Detections(boxes, torch.rand(6, generator=g), torch.arange(1, 7), masks)
    out = detections_to_original(det, size, orig)
    transform = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3).eval()
    expected = transform.postprocess([{"boxes": boxes, "masks": masks}], [size], [orig])[0]
    assert torch.equal(out.boxes, expected["boxes"])
    assert out.masks.dtype == torch.uint8 and out.masks.shape == (6, *orig)
    assert torch.equal(out.masks.bool(), expected["masks"][:, 0] > 0.5)
    none = Detections(boxes[:0], boxes[:0, 0], torch.zeros(0, dtype=torch.int64), masks[:0])
    empty = detections_to_original(none, size, orig)
    assert empty.masks.shape == (0, *orig) and empty.masks.dtype == torch.uint8
    no_masks = detections_to_original(Detections(boxes, det.scores, det.labels), size, orig)
    assert no_masks.masks is None
