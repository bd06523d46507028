"""pycocotools evaluation of our records: identical to running COCOeval by hand."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import pytest
from eval_fixtures import fake_meta, load_coco, make_tiny_coco, noisy_detections
from pycocotools.cocoeval import COCOeval

from mrcnn.coco import bbox_and_segm, coco_evaluate, detection_records
from mrcnn.structures import ImageInfo

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def detections_to_coco(info, det, to_cat):
    """(bbox records, segm records) of one image, as evaluation writes them."""
    return bbox_and_segm(detection_records(info, det, to_cat))


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_coco(str(tmp_path / "data"), seed=0)


def _cocoeval_by_hand(ann_file, res_file, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = load_coco(ann_file)
        ev = COCOeval(gt, gt.loadRes(res_file), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:6]]


def _records(tiny, dets):
    bbox, segm = [], []
    meta = fake_meta()
    for i, d in dets.items():
        info = ImageInfo(i, tiny.file_names[i], tiny.sizes[i], tiny.sizes[i])
        b, s = detections_to_coco(info, d, meta.label_to_category_id)
        bbox += b
        segm += s
    return bbox, segm


# ----------------------------------------------------------------------------- pycocotools


def test_coco_evaluate_equals_pycocotools_by_hand(tiny, tmp_path):
    bbox, segm = _records(tiny, noisy_detections(tiny, seed=7))
    before = copy.deepcopy((bbox, segm))
    for name, recs in (("bbox", bbox), ("segm", segm)):
        with open(tmp_path / f"{name}.json", "w") as f:
            json.dump(recs, f)
    for gt in (tiny.ann_file, load_coco(tiny.ann_file)):
        metrics = coco_evaluate(gt, bbox, segm)
        for iou_type in ("bbox", "segm"):
            ref = _cocoeval_by_hand(tiny.ann_file, str(tmp_path / f"{iou_type}.json"), iou_type)
            assert [metrics[iou_type][k] for k in KEYS] == ref  # identical, not approximately
            assert 0.0 < metrics[iou_type]["AP"] < 1.0  # the case is not trivial
    assert (bbox, segm) == before  # pycocotools' loadRes did not write into our records


def test_coco_evaluate_empty_results(tiny, caplog):
    caplog.set_level("INFO")
    metrics = coco_evaluate(tiny.ann_file, [], [])
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert (m["AP"], m["AP50"], m["AP75"], m["APs"], m["APm"]) == (0, 0, 0, 0, 0)
        assert m["APl"] == -1.0  # pycocotools: no large object in the annotations
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in caplog.text
    assert set(coco_evaluate(tiny.ann_file, [], None)) == {"bbox"}


def test_coco_evaluate_image_subset(tiny):
    first = tiny.image_ids[:2]
    bbox, segm = _records(tiny, {i: tiny.gt[i] for i in first})
    sub = coco_evaluate(tiny.ann_file, bbox, segm, image_ids=first)
    assert sub["bbox"]["AP"] == pytest.approx(1) and sub["segm"]["AP"] == pytest.approx(1)
    whole = coco_evaluate(tiny.ann_file, bbox, segm)
    assert whole["bbox"]["AP"] < 0.9  # the other images' objects are missed


