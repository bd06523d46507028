"""The confusion matrix of an evaluation, matched by mask IoU for segm and box IoU for bbox.

Detections scoring >= `score_thresh` are matched to objects of any class by pycocotools'
COCOeval with `useCats=0` (its greedy matching: detections in score order, each to the
unmatched object of highest IoU >= `iou_thresh`; crowd regions absorb detections without
counting them). Rows are the true class, columns the predicted one; the extra row counts
detections that matched nothing (background: false positives), the extra column objects that
no detection matched (missed). mmdetection's version matches boxes only; masks are what a
segmentation model is judged by, so segm uses their IoU.
"""

from __future__ import annotations

import csv
import io

import numpy as np
from pycocotools.coco import COCO

from mrcnn.analysis import plots
from mrcnn.analysis.sources import results_coco, run_cocoeval

# Beyond this many classes the cells are too small for their numbers.
MAX_ANNOTATED = 25


def confusion_matrix(
    gt: COCO,
    results: list[dict],
    iou_type: str,
    image_ids,
    score_thresh: float = 0.5,
    iou_thresh: float = 0.5,
) -> tuple[np.ndarray, list[int]]:
    """(counts int64 [K + 1, K + 1], category ids [K]): counts[i, j] = objects of class i
    matched by a detection of class j; row K: unmatched detections of class j; column K:
    unmatched objects of class i."""
    cat_ids = sorted(int(c) for c in gt.getCatIds())
    index = {c: i for i, c in enumerate(cat_ids)}
    k = len(cat_ids)
    cm = np.zeros((k + 1, k + 1), dtype=np.int64)
    kept = [r for r in results if float(r["score"]) >= score_thresh]
    dt = results_coco(gt, kept)
    per_image = max([len(dt.getAnnIds(imgIds=[i])) for i in image_ids] + [1])
    ev = run_cocoeval(gt, dt, iou_type, image_ids, iou_thrs=(iou_thresh,),
                      max_dets=(per_image,), use_cats=False, accumulate=False)
    all_area = ev.params.areaRng[0]
    for e in ev.evalImgs:
        if e is None or e["aRng"] != all_area:
            continue
        for d, m, ign in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0]):
            if ign:
                continue  # matched a crowd region
            pred = index[dt.anns[d]["category_id"]]
            true = index[gt.anns[int(m)]["category_id"]] if m else k
            cm[true, pred] += 1
        for g, m, ign in zip(e["gtIds"], e["gtMatches"][0], e["gtIgnore"]):
            if not ign and not m:
                cm[index[gt.anns[g]["category_id"]], k] += 1
    return cm, cat_ids


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (what became of each true class); empty rows stay 0."""
    sums = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, sums, out=np.zeros(cm.shape, dtype=np.float64), where=sums > 0)


def to_csv(cm: np.ndarray, names: list[str], fmt: str = "{}") -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["true \\ predicted", *names, "missed"])
    for name, row in zip([*names, "background"], cm):
        w.writerow([name, *(fmt.format(v) for v in row)])
    return out.getvalue()


def _panel(ax, fig, m: np.ndarray, labels: list[str], title: str, fmt: str) -> None:
    k = len(labels) - 1
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=max(float(m.max()), 1e-9))
    fig.colorbar(im, ax=ax, shrink=0.8)
    ticks = np.arange(k + 1)
    ax.set_xticks(ticks, [*labels[:-1], "missed"], rotation=45, ha="right")
    ax.set_yticks(ticks, [*labels[:-1], "background"])
    ax.set(xlabel="predicted", ylabel="true", title=title)
    ax.grid(False)
    # The background row / missed column are errors by definition: set them off.
    ax.axhline(k - 0.5, color="#c0504d", lw=1.2)
    ax.axvline(k - 0.5, color="#c0504d", lw=1.2)
    if k + 1 <= MAX_ANNOTATED:
        hi = m.max() / 2 if m.max() > 0 else 1
        for i in range(k + 1):
            for j in range(k + 1):
                if i == k and j == k:
                    continue  # background-vs-missed means nothing
                ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=9,
                        color="white" if m[i, j] > hi else "black")


def plot(cm: np.ndarray, names: list[str], path: str, title: str) -> str:
    """Raw counts and row-normalised fractions side by side."""
    size = max(4.5, 0.45 * (len(names) + 1) + 2.5)
    fig, axes = plots.figure(1, 2, cell=(size + 0.8, size), layout="constrained")
    labels = [*names, "background"]
    _panel(axes[0, 0], fig, cm, labels, "counts", "{:d}")
    _panel(axes[0, 1], fig, normalize_rows(cm), labels, "fraction of each true row", "{:.2f}")
    fig.suptitle(title)
    return plots.save(fig, path)
