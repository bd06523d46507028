"""Precision-recall curves per class and overall, at IoU 0.5, 0.75 and averaged over 0.5:0.95,
read from an accumulated COCOeval (precision at its 101 recall points, up to 100 detections
per image, all object sizes): the area under each curve is the AP in the table."""

from __future__ import annotations

import numpy as np
from pycocotools.cocoeval import COCOeval

from mrcnn.analysis import plots
from mrcnn.visualize import class_color

# Beyond this many classes a legend hides the plot: only the overall curve is named.
MAX_LEGEND = 12


def curves(ev: COCOeval) -> dict[str, dict]:
    """{"IoU=0.50" | "IoU=0.75" | "IoU=0.50:0.95": {"recall": [R], "overall": [R] or None,
    "classes": {category_id: [R]}}}; a class without ground truth has no curve."""
    p = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    thrs = ev.params.iouThrs
    picks = {"IoU=0.50": [int(np.argmin(abs(thrs - 0.5)))],
             "IoU=0.75": [int(np.argmin(abs(thrs - 0.75)))],
             "IoU=0.50:0.95": list(range(len(thrs)))}
    out = {}
    for key, ts in picks.items():
        sel = p[ts]  # [t, R, K]
        valid = (sel > -1).all(axis=(0, 1))  # classes with ground truth
        per_class = sel.mean(axis=0)  # [R, K]
        classes = {int(c): per_class[:, k] for k, c in enumerate(ev.params.catIds) if valid[k]}
        overall = per_class[:, valid].mean(axis=1) if valid.any() else None
        out[key] = {"recall": np.asarray(ev.params.recThrs), "overall": overall,
                    "classes": classes}
    return out


def plot(ev: COCOeval, names: dict[int, str], path: str, title: str) -> str:
    """One panel per IoU setting: each class in its colour (the drawings' colours), the mean
    over classes in black; labels carry the AP (the mean precision over recall)."""
    data = curves(ev)
    fig, axes = plots.figure(1, 3, cell=(4.4, 4.6), layout="constrained")
    label_of = {int(c): k + 1 for k, c in enumerate(ev.params.catIds)}
    for ax, (key, d) in zip(axes[0], data.items()):
        many = len(d["classes"]) > MAX_LEGEND
        for cat, prec in d["classes"].items():
            color = np.array(class_color(label_of[cat])) / 255.0
            ax.plot(d["recall"], prec, color=color, lw=1.2, alpha=0.5 if many else 0.9,
                    label=None if many else f"{names.get(cat, cat)} [{prec.mean():.3f}]")
        if d["overall"] is not None:
            ax.plot(d["recall"], d["overall"], color="black", lw=2.2,
                    label=f"all classes [{d['overall'].mean():.3f}]")
        else:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=key)
        # Below the axes: inside, it hides the low-precision ends of the curves.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.suptitle(title)
    return plots.save(fig, path)
