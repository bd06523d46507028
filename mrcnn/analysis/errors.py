"""The COCO error breakdown (Hoiem-style, as Detectron's and the COCO API's `analyze`): PR curves
after each kind of error is forgiven in turn, stacked, so the area between two curves is what
that error costs.

    C75  PR at IoU 0.75                      C50  PR at IoU 0.5
    Loc  PR at IoU 0.1 (localization errors forgiven, duplicate detections are not)
    Sim  and confusions within the supercategory forgiven
    Oth  and every class confusion forgiven
    BG   and every false positive (background) forgiven: precision 1 up to the recall reached
    FN   and every miss forgiven: precision 1 everywhere

All curves come from pycocotools' COCOeval (IoU 0.1, up to 100 detections per image). To forgive
a confusion, the ground truth of the other classes is relabelled as the analysed class and
marked ignored: a detection that matches it is then neither a true nor a false positive, and it
is not a miss. (Only relabelling it, as some re-implementations do, would turn confusions into
true positives and add the other classes' objects as misses.)
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn.analysis import plots
from mrcnn.analysis.sources import run_cocoeval

TYPES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
AREAS = ("all", "small", "medium", "large")
# Light to dark to light again, as in the COCO API's plots: each band readable against its
# neighbours, FN (what is never found) pale.
COLORS = ("#ffffff", "#4f81bd", "#c0504d", "#9bbb59", "#8064a2", "#f79646", "#d9d9d9")
_IGNORE = "_analysis_ignore"


class _IgnoringCOCOeval(COCOeval):
    """COCOeval that also ignores ground truth marked with `_IGNORE`: pycocotools' `_prepare`
    sets `ignore` from `iscrowd` alone, and its matching already skips ignored ground truth
    (a detection matched to one is ignored too)."""

    def _prepare(self):
        super()._prepare()
        for gts in self._gts.values():
            for g in gts:
                if g.get(_IGNORE):
                    g["ignore"] = 1


def _relabelled_gt(gt: COCO, cat: int, forgive: set[int]) -> COCO:
    """A copy of `gt` whose objects of the classes in `forgive` are class `cat`, ignored."""
    anns = []
    for a in gt.dataset["annotations"]:
        if a["category_id"] in forgive:
            a = {**a, "category_id": cat, _IGNORE: 1}
        anns.append(a)
    out = COCO()
    out.dataset = {**gt.dataset, "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        out.createIndex()
    return out


def breakdown(gt: COCO, dt: COCO, iou_type: str, image_ids) -> dict:
    """{"recall": [R], "precision": [7 types, R, K, A areas], "cat_ids": [K]}.

    Precisions are 0 where a class has no ground truth in an area (pycocotools' -1), as in
    Detectron; `valid` [K, A] says where there was ground truth, for the means over classes.
    """
    main = run_cocoeval(gt, dt, iou_type, image_ids, iou_thrs=(0.75, 0.5, 0.1), max_dets=(100,))
    p = main.eval["precision"][:, :, :, :, 0]  # [3, R, K, A]
    cat_ids = list(main.params.catIds)
    ps = np.zeros((len(TYPES), *p.shape[1:]))
    ps[:3] = p
    valid = (p[0] > -1).all(axis=0)  # [K, A]
    supercat = {c["id"]: c.get("supercategory") for c in gt.dataset.get("categories", [])}
    for k, cat in enumerate(cat_ids):
        same = {c for c, s in supercat.items() if c != cat and s is not None
                and s == supercat.get(cat)}
        others = {c for c in cat_ids if c != cat}
        for row, forgive in ((3, same), (4, others)):
            # One class at a time: its own detections against the relabelled objects.
            ev = run_cocoeval(_relabelled_gt(gt, cat, forgive), dt, iou_type, image_ids,
                              iou_thrs=(0.1,), max_dets=(100,), cat_ids=(cat,),
                              evaluator=_IgnoringCOCOeval)
            ps[row, :, k] = ev.eval["precision"][0, :, 0, :, 0]
    ps[ps == -1] = 0
    ps[5] = ps[4] > 0
    ps[6] = 1.0
    return {"recall": np.asarray(main.params.recThrs), "precision": ps, "cat_ids": cat_ids,
            "valid": valid}


def _draw(ax, recall: np.ndarray, curves: np.ndarray, title: str) -> None:
    """curves: [7, R], stacked bands between consecutive curves."""
    below = np.zeros_like(recall)
    for name, curve, color in zip(TYPES, curves, COLORS):
        ax.fill_between(recall, below, curve, color=color, step=None,
                        label=f"[{curve.mean():.3f}] {name}", edgecolor="none")
        ax.plot(recall, curve, color="black", lw=0.5)
        below = curve
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall", ylabel="precision", title=title)
    ax.grid(False)
    # Below the axes (inside, it hides the bands it explains); reversed so that it reads
    # top to bottom like the bands.
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=2, handlelength=1.2, columnspacing=0.8)


def class_mean(b: dict, area: int, k: int | None = None) -> np.ndarray:
    """[7, R]: one class's curves, or (k None) the mean over the classes with ground truth."""
    if k is not None:
        return b["precision"][:, :, k, area]
    valid = b["valid"][:, area]
    if not valid.any():
        return np.zeros(b["precision"].shape[:2])
    return b["precision"][:, :, valid, area].mean(axis=2)


def plot_overall(b: dict, path: str, title: str) -> str:
    """One panel per object size that has ground truth (an empty panel says nothing)."""
    areas = [a for a in range(len(AREAS)) if b["valid"][:, a].any()] or [0]
    fig, axes = plots.figure(1, len(areas), cell=(4.0, 5.0), layout="constrained")
    for ax, a in zip(axes[0], areas):
        _draw(ax, b["recall"], class_mean(b, a), f"all classes, {AREAS[a]} objects")
    fig.suptitle(title)
    return plots.save(fig, path)


def plot_class(b: dict, k: int, name: str, path: str, title: str) -> str:
    fig, axes = plots.figure(1, 1, cell=(4.4, 5.0), layout="constrained")
    _draw(axes[0, 0], b["recall"], class_mean(b, 0, k), f"{name}, all sizes")
    fig.suptitle(title)
    return plots.save(fig, path)
