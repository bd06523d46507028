"""`--mode=analyze`: a workdir's evaluation broken down, for bbox and segm, then the report.

    python main.py --config=configs/shapes.py --mode=analyze --workdir=runs/shapes \
        [--config.analyze.eval_dir=eval/iter_0000500]

Reads the newest evaluation (`bbox.json` / `segm.json` of `--mode=eval` or of
`eval/iter_*/`; no inference is run) and the ground truth of `config.data.val`, and writes
into `analysis/<task>/`:

    per_class.md, per_class.csv     AP, AP50, AP75, APs, APm, APl per class
    pr_curves.png                   PR per class and overall at IoU .5, .75, .5:.95
    errors.png, errors/<class>.png  C75 / C50 / Loc / Sim / Oth / BG / FN stacked PR
    confusion.png, confusion_counts.csv, confusion_fractions.csv
    worst/<image id>.png            ground truth | predictions of the worst images

plus `analysis/summary.json`; the per-class APs and the plots also go to TensorBoard (`tb/`,
tags `analysis/...`, at the evaluation's step); then `report/index.html` is rewritten.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import ml_collections

from mrcnn.analysis import confusion, errors, pr_curves, report, tables, worst
from mrcnn.analysis import sources as src

log = logging.getLogger(__name__)


def _clean(x):
    """JSON without NaN (the browser's JSON.parse and strict readers reject it)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def analyze_task(gt, results: list[dict], task: str, image_ids: list[int], img_dir: str,
                 out_dir: str, names: dict[int, str], cfg: ml_collections.ConfigDict) -> dict:
    """Every output for one task into out_dir; returns its summary (paths relative to
    out_dir's parent, the analysis folder)."""
    t0 = time.perf_counter()
    rel = lambda p: os.path.relpath(p, os.path.dirname(out_dir))  # noqa: E731
    dt = src.results_coco(gt, results)
    ev = src.run_cocoeval(gt, dt, task, image_ids)
    rows = tables.per_class_ap(ev, names)
    title = f"{task}: {len(image_ids)} images, {len(results)} detections"
    files = {
        "per_class_md": src.write_file(os.path.join(out_dir, "per_class.md"),
                                       tables.to_markdown(rows)),
        "per_class_csv": src.write_file(os.path.join(out_dir, "per_class.csv"),
                                        tables.to_csv(rows)),
    }
    files["pr_curves"] = pr_curves.plot(ev, names, os.path.join(out_dir, "pr_curves.png"), title)

    b = errors.breakdown(gt, dt, task, image_ids)
    files["errors"] = errors.plot_overall(b, os.path.join(out_dir, "errors.png"), title)
    per_class_errors = {}
    for k, cat in enumerate(b["cat_ids"]):
        name = names.get(cat, str(cat))
        path = os.path.join(out_dir, "errors", f"{src.safe_name(name)}.png")
        per_class_errors[name] = rel(errors.plot_class(b, k, name, path, task))
    mean = errors.class_mean(b, 0).mean(axis=1)
    error_areas = {t: float(v) for t, v in zip(errors.TYPES, mean)}

    cm, cat_ids = confusion.confusion_matrix(gt, results, task, image_ids,
                                             cfg.score_thresh, cfg.iou_thresh)
    cm_names = [names.get(c, str(c)) for c in cat_ids]
    how = "mask" if task == "segm" else "box"
    files["confusion"] = confusion.plot(
        cm, cm_names, os.path.join(out_dir, "confusion.png"),
        f"{task}: matched by {how} IoU >= {cfg.iou_thresh}, score >= {cfg.score_thresh}")
    files["confusion_counts"] = src.write_file(
        os.path.join(out_dir, "confusion_counts.csv"), confusion.to_csv(cm, cm_names))
    files["confusion_fractions"] = src.write_file(
        os.path.join(out_dir, "confusion_fractions.csv"),
        confusion.to_csv(confusion.normalize_rows(cm), cm_names, "{:.4f}"))
    worst_list = worst.draw_worst(gt, results, task, image_ids, img_dir,
                                  os.path.join(out_dir, "worst"), names, int(cfg.num_worst),
                                  cfg.score_thresh)
    for w in worst_list:
        w["png"] = rel(w["png"]) if w["png"] else None
    files = {k: rel(v) for k, v in files.items()}
    log.info("analyze %s: %.1f s", task, time.perf_counter() - t0)
    return {"metrics": {c: rows[-1][c] for c in tables.COLUMNS}, "per_class": rows,
            "files": files, "errors_per_class": per_class_errors, "error_areas": error_areas,
            "confusion": {"classes": cm_names, "counts": cm.tolist()}, "worst": worst_list,
            "detections": len(results)}


def _to_tensorboard(workdir: str, summary: dict, step: int) -> None:
    """Per-class AP and the plots under `analysis/` in the run's TensorBoard (the training
    scalars and eval AP are there already). Best effort: TensorBoard is a view, not a record."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    analysis_dir = os.path.join(workdir, "analysis")
    tb = SummaryWriter(os.path.join(workdir, "tb"))
    try:
        for task, t in summary["tasks"].items():
            for row in t["per_class"]:
                for c in ("AP", "AP50", "AP75"):
                    if row[c] is not None and not (isinstance(row[c], float)
                                                   and math.isnan(row[c])):
                        tb.add_scalar(f"analysis/{task}/{c}/{row['class']}", row[c], step)
            for key in ("pr_curves", "errors", "confusion"):
                path = os.path.join(analysis_dir, t["files"][key])
                img = np.asarray(Image.open(path).convert("RGB"))
                tb.add_image(f"analysis/{task}/{key}", img, step, dataformats="HWC")
    finally:
        tb.close()


def _metrics_json(evaluation: src.Evaluation) -> dict:
    path = os.path.join(evaluation.path, "metrics.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def run(config: ml_collections.ConfigDict, workdir: str, device=None) -> dict:
    """Analyses the evaluation `analyze.eval_dir` (default the newest) of `workdir`; returns
    the summary written to analysis/summary.json, with "report": the page's path."""
    evaluation = src.pick_evaluation(workdir, config.analyze.eval_dir)
    if evaluation is None:
        raise FileNotFoundError(
            f"no evaluation in {workdir} (no bbox.json there or in eval/iter_*/): run "
            "--mode=eval, or train with eval.final / eval.period, first")
    truth = src.ground_truth(config)
    image_ids = truth.image_ids
    analysis_dir = os.path.join(workdir, "analysis")
    recorded = _metrics_json(evaluation)
    summary = {"evaluation": os.path.relpath(evaluation.path, workdir),
               "iteration": evaluation.iteration, "label": evaluation.label,
               "ann_file": truth.ann_file, "images": len(image_ids),
               "score_thresh": float(config.analyze.score_thresh),
               "iou_thresh": float(config.analyze.iou_thresh),
               "written": time.strftime("%Y-%m-%d %H:%M:%S"), "tasks": {}}
    for task in src.TASKS:
        path = evaluation.results_file(task)
        if not os.path.isfile(path):
            continue
        gt = truth.coco(task)
        t = analyze_task(gt, src.load_results(path), task, image_ids, truth.img_dir,
                         os.path.join(analysis_dir, task), src.category_names(gt),
                         config.analyze)
        ap = recorded.get(task, {}).get("AP")
        # The AP recomputed here must be the evaluation's: if not, the ground truth or the
        # image list differ (another data.val, eval.num_images) and the page says so.
        t["recorded_AP"] = ap
        t["matches_recorded"] = ap is None or abs(ap - t["metrics"]["AP"]) < 1e-6
        summary["tasks"][task] = t
    summary = _clean(summary)
    src.write_file(os.path.join(analysis_dir, "summary.json"), json.dumps(summary, indent=1))
    try:
        _to_tensorboard(workdir, summary, evaluation.iteration or 0)
    except Exception as e:  # never lose the analysis over TensorBoard
        log.warning("analysis: TensorBoard not written (%s)", e)
    summary["report"] = report.write_report(workdir, config)
    log.info("analysis of %s written to %s; report: %s", evaluation.path, analysis_dir,
             summary["report"])
    return summary
