"""pycocotools' bbox / segm evaluation of COCO results records."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

log = logging.getLogger(__name__)

# pycocotools' stats[0..5], in its order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def load_gt(coco_gt: str | dict | COCO) -> COCO:
    """A `COCO` ground truth from an annotation file, a dataset dict (COCO json layout) or a
    loaded `COCO`."""
    if isinstance(coco_gt, COCO):
        return coco_gt
    with contextlib.redirect_stdout(io.StringIO()):  # "loading annotations into memory..."
        if isinstance(coco_gt, dict):
            gt = COCO()
            gt.dataset = coco_gt
            gt.createIndex()
            return gt
        return COCO(coco_gt)


def _empty_results(gt: COCO) -> COCO:
    """A results object with no detections (pycocotools' loadRes cannot take an empty list)."""
    res = COCO()
    res.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": list(gt.dataset.get("categories", [])),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def run_cocoeval(gt: COCO, results: list[dict[str, Any]], iou_type: str,
                 image_ids: Sequence[int] | None) -> COCOeval:
    """An evaluated and accumulated COCOeval (analysis reads its evalImgs and eval arrays)."""
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds keys ("area", "id", ...) to the records it gets: give it copies.
        dt = gt.loadRes([dict(r) for r in results]) if results else _empty_results(gt)
        ev = COCOeval(gt, dt, iouType=iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
    return ev


def _summarize(ev: COCOeval, iou_type: str, n: int) -> dict[str, float]:
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        ev.summarize()
    log.info("COCO %s evaluation (%d detections):\n%s", iou_type, n, table.getvalue().rstrip())
    return {name: float(v) for name, v in zip(METRIC_NAMES, ev.stats[:6])}


def coco_evaluate(
    coco_gt: str | dict | COCO,
    bbox_results: list[dict[str, Any]],
    segm_results: list[dict[str, Any]] | None = None,
    image_ids: Sequence[int] | None = None,
    bbox: bool = True,
) -> dict[str, dict[str, float]]:
    """pycocotools' bbox (and segm) evaluation of COCO results records.

    coco_gt: see `load_gt`. segm_results None: bbox only.
    image_ids: the images evaluated (default: every image of the ground truth); an image in this
      list without detections counts as all of its objects missed.
    Returns {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...}} as pycocotools'
    stats[0..5]: AP in [0, 1], -1 where the annotations have no object of that size. Empty
    results give 0 (not an error). The standard summary table is written to the log.
    bbox=False: segm only (bbox_results ignored).
    """
    gt = load_gt(coco_gt)
    metrics = {}
    if bbox:
        metrics["bbox"] = _summarize(run_cocoeval(gt, bbox_results, "bbox", image_ids), "bbox",
                                     len(bbox_results))
    if segm_results is not None:
        metrics["segm"] = _summarize(run_cocoeval(gt, segm_results, "segm", image_ids), "segm",
                                     len(segm_results))
    return metrics
