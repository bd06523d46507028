"""--mode=analyze, --mode=browse, the training curves and the report page, on small workdirs."""

from __future__ import annotations

import contextlib
import html.parser
import io
import json
import os

import pytest

from mrcnn.analysis import analyze, sources


def _read(path):
    with open(path) as f:
        return f.read()


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


def _metrics_jsonl(workdir, lines):
    _write(os.path.join(workdir, "metrics.jsonl"),
           "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


TRAIN_LINES = [
    {"iter": 10, "train/loss": 2.0, "train/loss_mask": 1.0, "train/lr": 0.01,
     "train/time": 0.5, "train/data_time": 0.1, "train/max_mem_mb": 0.0},
    {"iter": 20, "train/loss": 1.0, "train/loss_mask": 0.5, "train/lr": 0.01,
     "train/time": 0.4, "train/data_time": 0.1, "train/max_mem_mb": 0.0},
    '{"iter": 30, "train/lo',  # cut by a crash
    {"iter": 20, "train/loss": 1.5},  # the resumed run logs step 20 again
    {"iter": 20, "eval/bbox/AP": 0.3, "eval/bbox/AP50": 0.5, "eval/segm/AP": 0.25},
]


@pytest.fixture
def evaluated_workdir(tiny, tmp_path):
    """A workdir with one training evaluation of the tiny detections and its metrics.json."""
    wd = str(tmp_path / "run")
    ev_dir = os.path.join(wd, "eval", "iter_0000020")
    gt = sources.load_gt(tiny["ann_file"])
    metrics = {}
    for task in ("bbox", "segm"):
        _write(os.path.join(ev_dir, f"{task}.json"), tiny[task])
        ev = sources.run_cocoeval(gt, sources.results_coco(gt, tiny[task]), task, [1, 2, 3])
        with contextlib.redirect_stdout(io.StringIO()):
            ev.summarize()
        metrics[task] = {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1])}
    _write(os.path.join(ev_dir, "metrics.json"), metrics)
    _metrics_jsonl(wd, TRAIN_LINES)
    _write(os.path.join(wd, "config.json"), {"name": "tiny"})
    return wd


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.links, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.ids.add(a.get("id"))
        for k in ("src", "href"):
            if a.get(k):
                self.links.append((tag, a[k]))


def _parse(path):
    p = _Links()
    with open(path) as f:
        text = f.read()
    p.feed(text)
    return p, text


def _check_links(page_path, p):
    """Every link is local and exists; nothing comes from the network (offline page)."""
    base = os.path.dirname(page_path)
    for tag, link in p.links:
        if link.startswith("#"):
            continue
        assert "://" not in link and not link.startswith("//"), link
        assert os.path.exists(os.path.join(base, link)), (tag, link)
    assert "<script" not in _read(page_path)


def test_analyze_writes_everything_and_the_report(evaluated_workdir, tiny_config):
    s = analyze.run(tiny_config, evaluated_workdir, None)
    assert s["evaluation"] == os.path.join("eval", "iter_0000020") and s["iteration"] == 20
    for task in ("bbox", "segm"):
        t = s["tasks"][task]
        assert t["matches_recorded"] and t["metrics"]["AP"] == pytest.approx(1 / 3)
        assert t["confusion"]["counts"][1][2] == 1  # b taken for c
        assert [w["image_id"] for w in t["worst"]] == [1, 2, 3]
        for rel in [*t["files"].values(), *t["errors_per_class"].values()]:
            assert os.path.isfile(os.path.join(evaluated_workdir, "analysis", rel)), rel
    with open(os.path.join(evaluated_workdir, "analysis", "summary.json")) as f:
        assert "NaN" not in f.read()  # strict JSON
    assert os.listdir(os.path.join(evaluated_workdir, "tb"))  # analysis/... in TensorBoard
    p, text = _parse(s["report"])
    assert {"evaluations", "analysis", "analysis-bbox", "analysis-segm", "curves", "data",
            "config"} <= p.ids
    imgs = [link for tag, link in p.links if tag == "img"]
    # 2 tasks x (PR, errors, 3 per-class errors, confusion, 3 worst) + 3 curves.
    assert len(imgs) == 2 * 9 + 3
    _check_links(s["report"], p)
    assert "Not drawn yet" in text  # browse has not run: shown as missing, with its command
    assert "--mode=browse" in text and "class='warn'" not in text


def test_analyze_flags_a_different_ground_truth(evaluated_workdir, tiny_config):
    path = os.path.join(evaluated_workdir, "eval", "iter_0000020", "metrics.json")
    _write(path, {"bbox": {"AP": 0.9}, "segm": {"AP": 0.9}})
    s = analyze.run(tiny_config, evaluated_workdir, None)
    assert not s["tasks"]["bbox"]["matches_recorded"]
    assert "is not the evaluation's" in _read(s["report"])


def test_analyze_needs_an_evaluation(tmp_path, tiny_config):
    with pytest.raises(FileNotFoundError, match="no evaluation"):
        analyze.run(tiny_config, str(tmp_path), None)
    tiny_config.analyze.eval_dir = "eval/iter_0000001"
    with pytest.raises(FileNotFoundError, match="analyze.eval_dir"):
        analyze.run(tiny_config, str(tmp_path), None)


def test_evaluations_newest_last(tmp_path):
    wd = str(tmp_path)
    for i, sub in enumerate(("eval/iter_0000010", "eval/iter_0000020", ".")):
        _write(os.path.join(wd, sub, "bbox.json"), [])
        os.utime(os.path.join(wd, sub, "bbox.json"), (1000 + i, 1000 + i))
    evals = sources.find_evaluations(wd)
    assert [e.iteration for e in evals] == [10, 20, None]
    assert sources.pick_evaluation(wd).label == "--mode=eval"
    assert sources.pick_evaluation(wd, "eval/iter_0000010").iteration == 10
    assert sources.pick_evaluation(str(tmp_path / "nothing")) is None
