"""The analysis' numbers on the tiny fixture (conftest.py), where every error is known."""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest

from mrcnn.analysis import confusion, errors, pr_curves, sources, tables, worst

TASKS = ("bbox", "segm")


def _eval(tiny, task, results=None):
    gt = sources.load_gt(tiny["ann_file"])
    res = tiny[task] if results is None else results
    dt = sources.results_coco(gt, res)
    return gt, dt, sources.run_cocoeval(gt, dt, task, sorted(gt.getImgIds()))


@pytest.mark.parametrize("task", TASKS)
def test_per_class_table(tiny, task):
    gt, _, ev = _eval(tiny, task)
    rows = tables.per_class_ap(ev, sources.category_names(gt))
    by = {r["class"]: r for r in rows}
    # a: found first (0.9), its other detection ranks after it; b and c: never found right.
    assert by["a"]["AP"] == pytest.approx(1.0) and by["a"]["AP50"] == pytest.approx(1.0)
    assert by["b"]["AP"] == 0 and by["c"]["AP"] == 0
    assert (by["a"]["objects"], by["b"]["objects"], by["c"]["objects"]) == (1, 1, 1)  # no crowd
    assert by["a"]["detections"] == 3 and by["all"]["detections"] == 6
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    assert by["all"]["AP"] == pytest.approx(ev.stats[0]) == pytest.approx(1 / 3)
    assert np.isnan(by["all"]["APl"])  # no large objects
    md, csv = tables.to_markdown(rows), tables.to_csv(rows)
    assert "| a | 1 | 3 | 100.0 | 100.0 |" in md and "| - |" in md
    assert csv.splitlines()[1].startswith("a,1,1,3,1.000000")
    assert len(csv.splitlines()) == 5  # header, 3 classes, all


def test_pr_curves_and_empty_results(tiny, tmp_path):
    gt, _, ev = _eval(tiny, "bbox")
    c = pr_curves.curves(ev)
    assert set(c) == {"IoU=0.50", "IoU=0.75", "IoU=0.50:0.95"}
    assert np.allclose(c["IoU=0.50"]["classes"][1], 1.0)  # a: precision 1 at every recall
    assert np.allclose(c["IoU=0.50"]["classes"][2], 0.0)
    assert np.allclose(c["IoU=0.50"]["overall"], c["IoU=0.50"]["classes"][1] / 3)
    path = pr_curves.plot(ev, sources.category_names(gt), str(tmp_path / "pr.png"), "t")
    assert os.path.getsize(path) > 1000
    # No detection at all: every class has a curve of zeros, nothing raises.
    _, _, empty = _eval(tiny, "bbox", results=[])
    assert all(np.allclose(v, 0) for v in pr_curves.curves(empty)["IoU=0.75"]["classes"].values())
    pr_curves.plot(empty, {}, str(tmp_path / "pr_empty.png"), "empty")


@pytest.mark.parametrize("task", TASKS)
def test_error_breakdown(tiny, task, tmp_path):
    gt, dt, _ = _eval(tiny, task)
    b = errors.breakdown(gt, dt, task, sorted(gt.getImgIds()))
    assert b["cat_ids"] == [1, 2, 3]
    ap = b["precision"][:, :, :, 0].mean(axis=1)  # [7 types, 3 classes], all sizes
    t = {name: ap[i] for i, name in enumerate(errors.TYPES)}
    # c: confused with b (other supercategory) at 0.8, localized badly at 0.7.
    assert t["C50"][2] == 0 and t["Loc"][2] == pytest.approx(0.5)
    assert t["Sim"][2] == pytest.approx(0.5)  # nothing to forgive within supercategory y
    # Forgiving the confusion ignores the detection on b: c's own detection then ranks first.
    # (Relabelling without ignoring would count b's and a's objects as missed c: AP 2/3.)
    assert t["Oth"][2] == pytest.approx(1.0)
    # b: its only detection is on the background.
    assert t["Oth"][1] == 0 and t["BG"][1] == 0 and t["FN"][1] == 1
    assert t["C75"][0] == pytest.approx(1.0)
    assert np.allclose(errors.class_mean(b, 0)[1], b["precision"][1, :, :, 0].mean(axis=1))
    assert os.path.isfile(errors.plot_overall(b, str(tmp_path / "e.png"), task))
    assert os.path.isfile(errors.plot_class(b, 2, "c", str(tmp_path / "c.png"), task))


@pytest.mark.parametrize("task", TASKS)
def test_confusion_matrix(tiny, task, tmp_path):
    gt = sources.load_gt(tiny["ann_file"])
    cm, cats = confusion.confusion_matrix(gt, tiny[task], task, [1, 2, 3], 0.5, 0.5)
    assert cats == [1, 2, 3]
    want = np.zeros((4, 4), dtype=np.int64)
    want[0, 0] = 1  # a found as a
    want[1, 2] = 1  # b taken for c
    want[3, 2] = 1  # c's badly localized detection matches nothing
    want[2, 3] = 1  # so c is missed
    want[3, 1] = 1  # b on the background; the crowd and the 0.1 detection are not counted
    assert (cm == want).all(), cm
    frac = confusion.normalize_rows(cm)
    assert frac[0, 0] == 1 and frac[3].sum() == pytest.approx(1)
    csv = confusion.to_csv(cm, ["a", "b", "c"])
    assert csv.splitlines()[0] == "true \\ predicted,a,b,c,missed"
    assert csv.splitlines()[4] == "background,0,1,1,0"
    assert os.path.isfile(confusion.plot(cm, ["a", "b", "c"], str(tmp_path / "cm.png"), task))
    # A looser IoU lets the badly localized detection find its object.
    loose, _ = confusion.confusion_matrix(gt, tiny[task], task, [1, 2, 3], 0.5, 0.3)
    assert loose[2, 2] == 1 and loose[2, 3] == 0
    none, _ = confusion.confusion_matrix(gt, [], task, [1, 2, 3])
    assert none[:3, 3].tolist() == [1, 1, 1] and none.sum() == 3


def test_worst_images(tiny, tmp_path):
    gt = sources.load_gt(tiny["ann_file"])
    errs, _ = worst.image_errors(gt, tiny["segm"], "segm", [1, 2, 3])
    assert errs[1]["fn"] == [12] and len(errs[1]["fp"]) == 1 and len(errs[1]["tp"]) == 1
    assert errs[2]["fn"] == [21] and len(errs[3]["fp"]) == 1 and errs[3]["fn"] == []
    assert worst.rank(errs, 2) == [(1, 1, 1), (2, 1, 1)]  # ties: lower id first
    os.remove(os.path.join(tiny["img_dir"], "002.png"))  # an unreadable image is listed
    out = worst.draw_worst(gt, tiny["segm"], "segm", [1, 2, 3], tiny["img_dir"],
                           str(tmp_path / "w"), sources.category_names(gt), n=5)
    assert [w["image_id"] for w in out] == [1, 2, 3]
    assert out[1]["png"] is None and "error" in out[1]
    assert os.path.isfile(out[0]["png"]) and os.path.isfile(out[2]["png"])
    perfect = [r for r in tiny["bbox"] if r["score"] == 0.9]
    gt_one = worst.image_errors(gt, perfect, "bbox", [1])[0]
    assert worst.rank(gt_one, 3) == [(1, 0, 1)]
