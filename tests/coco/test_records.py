"""COCO results records of detections: boxes as [x, y, w, h], masks as RLE, categories mapped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from eval_fixtures import fake_meta, make_tiny_coco
from pycocotools import mask as mask_util

from mrcnn.coco import bbox_and_segm, detection_records
from mrcnn.structures import Detections, ImageInfo

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def detections_to_coco(info, det, to_cat):
    """(bbox records, segm records) of one image, as evaluation writes them."""
    return bbox_and_segm(detection_records(info, det, to_cat))


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_coco(str(tmp_path / "data"), seed=0)


# ----------------------------------------------------------------------------- records


def test_detections_to_coco_records():
    g = torch.Generator().manual_seed(3)
    h, w, k = 20, 30, 6
    xy = torch.rand(k, 2, generator=g) * 15
    boxes = torch.cat([xy, xy + torch.rand(k, 2, generator=g) * 10], 1)
    boxes[0, 2:] = boxes[0, :2]  # degenerate: zero width and height
    masks = (torch.rand(k, h, w, generator=g) > 0.5).to(torch.uint8)
    masks[1] = 0  # an empty mask
    det = Detections(boxes, torch.rand(k, generator=g), torch.tensor([1, 2, 3, 1, 3, 2]), masks)
    info = ImageInfo(42, "x.jpg", (h, w), (10, 15))
    bbox, segm = detections_to_coco(info, det, fake_meta().label_to_category_id)
    assert [r["category_id"] for r in bbox] == [1, 5, 90, 1, 90, 5]
    assert [r["category_id"] for r in segm] == [1, 5, 90, 1, 90, 5]
    for r, b, s in zip(bbox, boxes.tolist(), det.scores.tolist()):
        assert r["image_id"] == 42 and isinstance(r["image_id"], int)
        assert r["bbox"] == pytest.approx([b[0], b[1], b[2] - b[0], b[3] - b[1]], abs=1e-5)
        assert r["score"] == pytest.approx(s)
    assert bbox[0]["bbox"][2:] == [0.0, 0.0]
    for r, m in zip(segm, masks):
        assert set(r) == {"image_id", "category_id", "segmentation", "score"}  # no "bbox"
        assert isinstance(r["segmentation"]["counts"], str)
        assert r["segmentation"]["size"] == [h, w]
        assert np.array_equal(mask_util.decode(r["segmentation"]), m.numpy())
    json.dumps(bbox + segm)  # plain Python values only

    # Bool masks and [K, 1, H, W] masks encode the same.
    _, segm_bool = detections_to_coco(
        info, Detections(boxes, det.scores, det.labels, masks.bool()[:, None]), int
    )
    assert [r["segmentation"] for r in segm_bool] == [r["segmentation"] for r in segm]


def test_detections_to_coco_empty_none_and_wrong_size():
    info = ImageInfo(1, "a.png", (8, 8), (8, 8))
    empty = Detections(
        torch.zeros(0, 4),
        torch.zeros(0),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, 8, 8, dtype=torch.uint8),
    )
    assert detections_to_coco(info, empty, int) == ([], [])
    det = Detections(torch.tensor([[1.0, 1, 4, 4]]), torch.tensor([0.9]), torch.tensor([2]), None)
    bbox, segm = detections_to_coco(info, det, int)
    assert len(bbox) == 1 and segm == []
    bad = Detections(det.boxes, det.scores, det.labels, torch.zeros(1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="original size"):
        detections_to_coco(info, bad, int)




def test_detection_records_score_threshold_and_file_name():
    info = ImageInfo(7, "dir/a.png", (8, 8), (8, 8))
    det = Detections(torch.tensor([[1.0, 1, 4, 4], [0, 0, 2, 2]]), torch.tensor([0.9, 0.2]),
                     torch.tensor([2, 1]), None)
    recs = detection_records(info, det, lambda lab: lab * 10, score_thresh=0.5,
                             with_file_name=True)
    assert recs == [{"file_name": "dir/a.png", "image_id": 7, "category_id": 20,
                     "bbox": [1.0, 1.0, 3.0, 3.0], "score": pytest.approx(0.9)}]
