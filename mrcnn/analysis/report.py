"""`report/index.html`: one static page per run, opened from disk (no server, no scripts, no
files from the network).

Sections: the run (name, steps, the latest COCO numbers), every evaluation, the training
curves, the analysis of `--mode=analyze` (per-class table, PR curves, error breakdown,
confusion matrix, worst images), the ground truth drawn by `--mode=browse`, the files and the
config. What has not been made yet is shown as missing, with the command that makes it.

`write_report(workdir, config)` is called by analyze and at the end of training and of
`--mode=eval`: it reads what is in the workdir and redraws only the training curves (a
second or two), never inference or COCOeval, and never raises.
"""

from __future__ import annotations

import glob
import html
import json
import logging
import math
import os
import time
import traceback

from mrcnn.analysis import curves
from mrcnn.analysis import sources as src

log = logging.getLogger(__name__)

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2329;
margin:0;background:#f6f7f9}
main{max-width:1360px;margin:0 auto;padding:8px 24px 48px}
nav{position:sticky;top:0;background:#1d2329;padding:8px 24px;z-index:1}
nav a{color:#e8eaed;margin-right:18px;text-decoration:none;font-weight:600}
h1{font-size:26px;margin:18px 0 4px}h2{font-size:21px;margin:34px 0 8px;
border-bottom:2px solid #d5d9de;padding-bottom:4px}h3{font-size:17px;margin:22px 0 6px}
.sub{color:#56606b}.missing{background:#fff4e0;border-left:4px solid #f0a020;padding:8px 12px}
.warn{background:#fde8e8;border-left:4px solid #c0392b;padding:8px 12px}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px}
th,td{border:1px solid #d5d9de;padding:4px 10px;text-align:right}
th{background:#eceff2}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#f9fafb}tr.total td{font-weight:700;background:#eef4fb}
figure{margin:10px 0;display:inline-block;vertical-align:top;background:#fff;padding:6px;
border:1px solid #d5d9de}figcaption{color:#56606b;font-size:13px;margin-top:4px}
img{max-width:100%;height:auto;display:block}
.gallery figure{max-width:48%}.thumbs figure{max-width:32%}.half figure{max-width:48%}
code,pre{font:13px/1.4 ui-monospace,Menlo,Consolas,monospace;background:#eceff2;
padding:1px 4px}pre{padding:10px;overflow:auto;max-height:480px}
.big{font-size:30px;font-weight:700}.kpi{display:inline-block;margin:6px 28px 6px 0}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


class _Page:
    """The page under construction; links are made relative to the report folder, and an
    image is linked only when its file exists (else it is shown as missing)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.dir = os.path.join(workdir, "report")
        self.parts: list[str] = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def href(self, path: str) -> str:
        return _e(os.path.relpath(path, self.dir).replace(os.sep, "/"))

    def figure(self, path: str | None, caption: str) -> None:
        if path and os.path.isfile(path):
            h = self.href(path)
            self.add(f'<figure><a href="{h}"><img src="{h}" alt="{_e(caption)}" '
                     f'loading="lazy"></a><figcaption>{_e(caption)}</figcaption></figure>')
        else:
            self.missing(f"{caption}: not drawn")

    def link(self, path: str, text: str) -> str:
        if os.path.exists(path):
            return f'<a href="{self.href(path)}">{_e(text)}</a>'
        return f"{_e(text)} (missing)"

    def missing(self, text: str, command: str | None = None) -> None:
        cmd = f" <code>{_e(command)}</code>" if command else ""
        self.add(f'<p class="missing">{_e(text)}{cmd}</p>')


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _command(config_name: str, mode: str, workdir: str) -> str:
    return (f"python main.py --config=configs/{config_name}.py --mode={mode} "
            f"--workdir={workdir}")


def _pct(v) -> str:
    """AP in percent; "-" for none, NaN or pycocotools' -1 (no objects of that kind)."""
    return "-" if v is None or math.isnan(v) or v < 0 else f"{100 * v:.1f}"


def _section_run(page: _Page, name: str, evals: list[src.Evaluation], metrics: dict) -> None:
    steps = metrics.get("train/loss", (None, None))[0]
    last = int(steps[-1]) if steps is not None and len(steps) else None
    page.add(f"<h1>{_e(name)}</h1><p class='sub'>workdir <code>{_e(page.workdir)}</code> · "
             f"page written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>")
    latest = _read_json(os.path.join(evals[-1].path, "metrics.json")) if evals else None
    kpis = [f"<span class='kpi'><span class='sub'>trained steps</span><br>"
            f"<span class='big'>{last if last is not None else '-'}</span></span>"]
    for task in src.TASKS:
        ap = (latest or {}).get(task, {}).get("AP")
        if ap is not None:
            kpis.append(f"<span class='kpi'><span class='sub'>{task} AP "
                        f"({_e(evals[-1].label)})</span><br><span class='big'>{_pct(ap)}"
                        "</span></span>")
    page.add("<p>" + "".join(kpis) + "</p>")


def _section_evaluations(page: _Page, evals: list[src.Evaluation]) -> None:
    page.add("<h2 id='evaluations'>Evaluations</h2>")
    if not evals:
        page.missing("No evaluation yet (train with eval.period / eval.final, or --mode=eval).")
        return
    cols = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    head = "".join(f"<th>{t} {c}</th>" for t in src.TASKS for c in cols[:3])
    rows = []
    for ev in evals:
        m = _read_json(os.path.join(ev.path, "metrics.json")) or {}
        cells = "".join(f"<td>{_pct(m.get(t, {}).get(c))}</td>" for t in src.TASKS
                        for c in cols[:3])
        rows.append(f"<tr><td>{_e(ev.label)}</td>{cells}<td>"
                    f"{page.link(os.path.join(ev.path, 'metrics.json'), 'metrics.json')}"
                    "</td></tr>")
    page.add(f"<table><tr><th>evaluation</th>{head}<th></th></tr>{''.join(rows)}</table>"
             "<p class='sub'>COCO AP in percent (pycocotools); - : no objects of that kind."
             "</p>")


def _section_curves(page: _Page, workdirs: list[str]) -> None:
    page.add("<h2 id='curves'>Training curves</h2>")
    drawn = curves.plot_runs(workdirs, os.path.join(page.dir, "curves"))
    if not drawn:
        page.missing("No training metrics (metrics.jsonl) in this workdir.")
        return
    if len(workdirs) > 1:
        page.add("<p class='sub'>Overlaid: " + ", ".join(
            f"<code>{_e(w)}</code>" for w in workdirs) + "</p>")
    captions = {"losses": "losses: median of each logged window (solid), mean so far (dashed)",
                "schedule": "learning rate, time per step, data time, memory, throughput",
                "eval": "COCO AP of every evaluation"}
    page.figure(drawn.get("losses"), captions["losses"])
    page.add("<div class='half'>")
    for key in ("schedule", "eval"):
        if key in drawn:
            page.figure(drawn[key], captions[key])
    page.add("</div>")


def _class_table(rows: list[dict]) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("class", "objects", "detections", "AP", "AP50",
                                               "AP75", "APs", "APm", "APl"))
    body = []
    for r in rows:
        cls = " class='total'" if r["category_id"] == -1 else ""
        body.append(f"<tr{cls}><td>{_e(r['class'])}</td><td>{r['objects']}</td>"
                    f"<td>{r['detections']}</td>"
                    + "".join(f"<td>{_pct(r[c])}</td>"
                              for c in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
                    + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _task_analysis(page: _Page, task: str, t: dict) -> None:
    base = os.path.join(page.workdir, "analysis")
    f = {k: os.path.join(base, v) for k, v in t["files"].items()}
    what = "masks" if task == "segm" else "boxes"
    page.add(f"<h3 id='analysis-{task}'>{task} ({what}): AP {_pct(t['metrics']['AP'])}, "
             f"{t['detections']} detections</h3>")
    if not t.get("matches_recorded", True):
        page.add(f"<p class='warn'>The AP recomputed here ({_pct(t['metrics']['AP'])}) is not "
                 f"the evaluation's ({_pct(t['recorded_AP'])}): the ground truth or the image "
                 "list (data.val, eval.num_images) differ from the evaluated ones.</p>")
    page.add(_class_table(t["per_class"]))
    page.add("<p class='sub'>" + " · ".join(
        page.link(f[k], n) for k, n in (("per_class_md", "markdown"), ("per_class_csv", "CSV"),
                                        ("confusion_counts", "confusion counts CSV"),
                                        ("confusion_fractions", "confusion fractions CSV")))
        + "</p>")
    page.figure(f["pr_curves"], f"{task}: precision-recall per class (colours as in the "
                "drawings) and over all classes (black); [AP] in the legend")
    areas = t.get("error_areas", {})
    lost = ", ".join(f"{a}→{b}: {100 * (areas[b] - areas[a]):+.1f}" for a, b in zip(
        ("C75", "C50", "Loc", "Sim", "Oth", "BG"), ("C50", "Loc", "Sim", "Oth", "BG", "FN"))
        if a in areas and b in areas)
    page.figure(f["errors"], f"{task}: error breakdown, precision-recall as errors are "
                "forgiven one kind after another: C75, C50 at IoU .75, .5; Loc at IoU .1 "
                "(mislocalized found); Sim: + confusions within a supercategory; Oth: + all "
                "class confusions; BG: + false positives on background; FN: + misses. A band's "
                f"height is what that error costs, in AP points: {lost}")
    page.add("<div class='thumbs'>")
    for name, rel in t.get("errors_per_class", {}).items():
        page.figure(os.path.join(base, rel), f"{name}: error breakdown")
    page.add("</div>")
    page.figure(f["confusion"], f"{task}: confusion matrix (true rows, predicted columns); "
                "background row = false positives, missed column = objects no detection matched")
    worst = [w for w in t.get("worst", []) if w.get("png")]
    page.add(f"<h3>{task}: the worst images</h3>")
    if not worst:
        page.missing("No image with errors above the score threshold.")
    page.add("<div class='gallery'>")
    for w in worst:
        page.figure(os.path.join(base, w["png"]), f"image {w['image_id']} ({w['file_name']}): "
                    f"{w['fp']} false positives, {w['fn']} missed")
    page.add("</div>")


def _section_analysis(page: _Page, name: str, evals: list[src.Evaluation]) -> None:
    page.add("<h2 id='analysis'>Analysis</h2>")
    summary = _read_json(os.path.join(page.workdir, "analysis", "summary.json"))
    if not summary or not summary.get("tasks"):
        page.missing("Not analysed yet:", _command(name, "analyze", page.workdir))
        return
    page.add(f"<p class='sub'>Of the evaluation <code>{_e(summary['evaluation'])}</code> "
             f"({_e(summary['label'])}, {summary['images']} images), written "
             f"{_e(summary['written'])}. Confusion matrix and worst images: detections with "
             f"score ≥ {summary['score_thresh']}, matched at IoU ≥ {summary['iou_thresh']}.</p>")
    newest = os.path.relpath(evals[-1].path, page.workdir) if evals else None
    if newest and os.path.normpath(newest) != os.path.normpath(summary["evaluation"]):
        page.add(f"<p class='warn'>A newer evaluation exists (<code>{_e(newest)}</code>): "
                 f"rerun <code>{_e(_command(name, 'analyze', page.workdir))}</code>.</p>")
    for task, t in summary["tasks"].items():
        _task_analysis(page, task, t)


def _section_browse(page: _Page, name: str) -> None:
    page.add("<h2 id='data'>Ground truth</h2>")
    indexes = sorted(glob.glob(os.path.join(page.workdir, "browse", "*", "index.json")))
    if not indexes:
        page.missing("Not drawn yet:", _command(name, "browse", page.workdir))
        return
    for path in indexes:
        index = _read_json(path) or {}
        folder = os.path.dirname(path)
        view = "as fed to the model (training transforms)" if index.get("augmented") else \
            "as annotated"
        images = index.get("images", [])
        page.add(f"<h3>{_e(index.get('split', '?'))}: {len(images)} images, {view}</h3>")
        counts = index.get("counts") or {}
        page.add("<p class='sub'>Dropped by the parser in the whole file: "
                 + (_e(", ".join(f"{k} {v}" for k, v in counts.items())) or "nothing") + "</p>")
        if index.get("sheet"):
            page.figure(os.path.join(folder, index["sheet"]),
                        "contact sheet: click for full size; each image's PNG is in "
                        f"{os.path.relpath(folder, page.workdir)}/")
        skipped = [(im, s) for im in images for s in im.get("skipped", [])]
        if skipped:
            rows = "".join(f"<tr><td>{im['image_id']}</td><td>#{s['index']}</td>"
                           f"<td>{_e(s['annotation_id'])}</td>"
                           f"<td style='text-align:left'>{_e(s['why'])}</td></tr>"
                           for im, s in skipped)
            page.add("<table><tr><th>image</th><th>#</th><th>annotation id</th><th>why it is "
                     f"skipped</th></tr>{rows}</table>")


def _section_files(page: _Page) -> None:
    page.add("<h2 id='config'>Files and config</h2><p>")
    page.add(" · ".join(page.link(os.path.join(page.workdir, f), f) for f in (
        "config.json", "log.txt", "metrics.jsonl")) + "</p>")
    config_path = os.path.join(page.workdir, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            text = f.read()
        page.add(f"<details><summary>config.json ({len(text.splitlines())} lines)</summary>"
                 f"<pre>{_e(text)}</pre></details>")


def _safe(page: _Page, title: str, fn, *args) -> None:
    """One section; a failure shows on the page instead of stopping it."""
    try:
        fn(page, *args)
    except Exception as e:  # the page must be written whatever one section meets
        log.warning("report: section %s failed: %s", title, e)
        page.add(f"<p class='warn'>{_e(title)} could not be shown: {_e(type(e).__name__)}: "
                 f"{_e(e)}</p><!-- {_e(traceback.format_exc())} -->")


def _run_name(workdir: str, config) -> str:
    if config is not None and config.get("name"):
        return str(config.name)
    saved = _read_json(os.path.join(workdir, "config.json")) or {}
    return str(saved.get("name") or os.path.basename(os.path.normpath(workdir)))


def write_report(workdir: str, config=None) -> str:
    """Writes `workdir/report/index.html` from what the workdir holds; returns its path."""
    page = _Page(workdir)
    name = _run_name(workdir, config)
    others = list(config.get("analyze", {}).get("workdirs", ())) if config is not None else []
    evals: list[src.Evaluation] = []
    metrics: dict = {}
    try:
        evals = src.find_evaluations(workdir)
        metrics = curves.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    except Exception as e:  # an unreadable workdir still gets a page saying so
        page.add(f"<p class='warn'>Reading the workdir failed: {_e(e)}</p>")
    _safe(page, "The run", _section_run, name, evals, metrics)
    _safe(page, "Evaluations", _section_evaluations, evals)
    # The analysis before the curves: it is what a reader of a finished run came for.
    _safe(page, "Analysis", _section_analysis, name, evals)
    _safe(page, "Training curves", _section_curves, [workdir, *others])
    _safe(page, "Ground truth", _section_browse, name)
    _safe(page, "Files", _section_files)
    nav = "".join(f"<a href='#{a}'>{t}</a>" for a, t in (
        ("evaluations", "Evaluations"), ("analysis", "Analysis"), ("curves", "Curves"),
        ("data", "Ground truth"), ("config", "Config")))
    doc = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
           f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
           f"<title>{_e(name)}: report</title><style>{CSS}</style></head><body>"
           f"<nav>{nav}</nav><main>{''.join(page.parts)}</main></body></html>\n")
    path = os.path.join(page.dir, "index.html")
    try:
        src.write_file(path, doc)
    except OSError as e:  # a read-only or full workdir: say so, do not fail the run
        log.warning("report: cannot write %s: %s", path, e)
    return path
