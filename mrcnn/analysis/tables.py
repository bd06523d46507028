"""The per-class AP table: AP, AP50, AP75, APs, APm, APl per category, read from an accumulated
COCOeval's precision array (as detectron2's per-category AP is), plus object and detection
counts. The "all" row is pycocotools' own summary (the mean over categories)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

import numpy as np
from pycocotools.cocoeval import COCOeval

COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _mean_valid(p: np.ndarray) -> float:
    """pycocotools' summarize: the mean of the precisions that exist (-1 marks none)."""
    p = p[p > -1]
    return float(p.mean()) if p.size else float("nan")


def per_class_ap(ev: COCOeval, names: dict[int, str]) -> list[dict]:
    """One row per category of `ev.params.catIds` and a last "all" row.

    Each row: class, category_id, objects (non-crowd ground truth in the evaluated images),
    detections, and COLUMNS in [0, 1] (nan where the class has no object of that kind).
    `ev` must be accumulated with pycocotools' default IoU thresholds and area ranges.
    """
    p = ev.eval["precision"]  # [T IoUs, R recalls, K classes, A areas, M maxDets]
    thrs = ev.params.iouThrs
    t50, t75 = int(np.argmin(abs(thrs - 0.5))), int(np.argmin(abs(thrs - 0.75)))
    image_ids = set(ev.params.imgIds)
    gt_anns = [a for a in ev.cocoGt.dataset.get("annotations", []) if a["image_id"] in image_ids]
    dt_anns = [a for a in ev.cocoDt.dataset.get("annotations", []) if a["image_id"] in image_ids]
    rows = []
    for k, cat in enumerate(ev.params.catIds):
        pk = p[:, :, k]
        rows.append({
            "class": names.get(cat, str(cat)),
            "category_id": int(cat),
            "objects": sum(1 for a in gt_anns if a["category_id"] == cat and not a.get("iscrowd")),
            "detections": sum(1 for a in dt_anns if a["category_id"] == cat),
            "AP": _mean_valid(pk[:, :, 0, -1]),
            "AP50": _mean_valid(pk[t50, :, 0, -1]),
            "AP75": _mean_valid(pk[t75, :, 0, -1]),
            "APs": _mean_valid(pk[:, :, 1, -1]),
            "APm": _mean_valid(pk[:, :, 2, -1]),
            "APl": _mean_valid(pk[:, :, 3, -1]),
        })
    overall = {
        "AP": _mean_valid(p[:, :, :, 0, -1]),
        "AP50": _mean_valid(p[t50, :, :, 0, -1]),
        "AP75": _mean_valid(p[t75, :, :, 0, -1]),
        "APs": _mean_valid(p[:, :, :, 1, -1]),
        "APm": _mean_valid(p[:, :, :, 2, -1]),
        "APl": _mean_valid(p[:, :, :, 3, -1]),
    }
    rows.append({"class": "all", "category_id": -1,
                 "objects": sum(r["objects"] for r in rows),
                 "detections": sum(r["detections"] for r in rows), **overall})
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{100 * v:.1f}"
    return str(v)


HEADER = ("class", "objects", "detections", *COLUMNS)


def to_markdown(rows: Sequence[dict]) -> str:
    """AP values in percent with one decimal (COCO papers' convention), "-" where undefined."""
    lines = ["| " + " | ".join(HEADER) + " |",
             "| --- | " + " | ".join("---:" for _ in HEADER[1:]) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[h]) for h in HEADER) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict]) -> str:
    """Full precision, AP in [0, 1], empty where undefined: for spreadsheets and scripts."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(("class", "category_id", "objects", "detections", *COLUMNS))
    for r in rows:
        w.writerow([r["class"], r["category_id"], r["objects"], r["detections"]]
                   + ["" if math.isnan(r[c]) else f"{r[c]:.6f}" for c in COLUMNS])
    return out.getvalue()
