"""Training curves from `metrics.jsonl`: losses, learning rate, time per step, data time,
memory, images/s and every evaluation's AP against the step; several workdirs overlaid (a
sweep's runs), one colour per run.

    python -m mrcnn.analysis.curves --out=runs/sweeps/x/curves runs/sweeps/x/*/

Training logs each loss as its median over the last `log_period` steps. The dashed "mean" is
the logged `<key>_avg` when the writer logs one, else the running mean of the logged values
(close to the console's global mean in parentheses, which metrics.jsonl does not hold).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence

import numpy as np

from mrcnn.analysis import plots

SCHEDULE = (("train/lr", "learning rate"), ("train/time", "seconds per step"),
            ("train/data_time", "data time per step (s)"), ("train/max_mem_mb", "max memory (MiB)"),
            ("train/images_per_sec", "images / s"))
EVAL_METRICS = ("AP", "AP50", "AP75")


def read_metrics(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{key: (steps int64 [N], values float64 [N])} sorted by step. A step logged twice (a
    resumed run repeats the steps after its last checkpoint) keeps its last value; lines that
    are not JSON objects (a line cut by a crash) and non-numeric values are skipped."""
    by_key: dict[str, dict[int, float]] = {}
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("iter"), int):
                continue
            for k, v in rec.items():
                if k != "iter" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    by_key.setdefault(k, {})[rec["iter"]] = float(v)
    out = {}
    for k, d in by_key.items():
        steps = np.array(sorted(d), dtype=np.int64)
        out[k] = (steps, np.array([d[s] for s in steps], dtype=np.float64))
    return out


def running_mean(values: np.ndarray) -> np.ndarray:
    """Mean of the finite values so far (a skipped, non-finite step does not poison it)."""
    finite = np.isfinite(values)
    counts = np.cumsum(finite)
    sums = np.cumsum(np.where(finite, values, 0.0))
    return np.divide(sums, counts, out=np.full(values.shape, np.nan), where=counts > 0)


def _loss_keys(runs: Sequence[dict]) -> list[str]:
    keys = {k for r in runs for k in r if k.startswith("train/loss") and not k.endswith("_avg")}
    return sorted(keys, key=lambda k: (k != "train/loss", k))  # the total first


def _grid(n: int, cols: int = 3):
    rows = max(1, math.ceil(n / cols))
    fig, axes = plots.figure(rows, min(cols, max(n, 1)), cell=(4.0, 2.6), layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat


def _color(i: int):
    return plots.plt.get_cmap("tab10")(i % 10)


def plot_losses(runs: Sequence[dict], labels: Sequence[str], path: str) -> str | None:
    keys = _loss_keys(runs)
    if not keys:
        return None
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        for i, (run, label) in enumerate(zip(runs, labels)):
            if key not in run:
                continue
            steps, vals = run[key]
            name = f"{label}: " if len(runs) > 1 else ""
            ax.plot(steps, vals, color=_color(i), lw=1.3, label=f"{name}median")
            mean = run[key + "_avg"][1] if key + "_avg" in run else running_mean(vals)
            mean_steps = run[key + "_avg"][0] if key + "_avg" in run else steps
            ax.plot(mean_steps, mean, color=_color(i), lw=1.0, ls="--", label=f"{name}mean")
        ax.set(title=key.removeprefix("train/"), xlabel="step")
        ax.set_ylim(bottom=0)
        ax.legend(loc="best")
    return plots.save(fig, path)


def plot_schedule(runs: Sequence[dict], labels: Sequence[str], path: str) -> str | None:
    # Memory is logged as 0 on CPUs: an all-zero panel says nothing.
    keys = [(k, t) for k, t in SCHEDULE
            if any(k in r and np.nanmax(np.abs(r[k][1])) > 0 for r in runs)]
    if not keys:
        return None
    fig, axes = _grid(len(keys), cols=2)
    for ax, (key, title) in zip(axes, keys):
        for i, (run, label) in enumerate(zip(runs, labels)):
            if key in run:
                ax.plot(*run[key], color=_color(i), lw=1.3, label=label)
        ax.set(title=title, xlabel="step")
        if len(runs) > 1:
            ax.legend(loc="best")
    return plots.save(fig, path)


def plot_eval(runs: Sequence[dict], labels: Sequence[str], path: str) -> str | None:
    tasks = [t for t in ("bbox", "segm") if any(f"eval/{t}/AP" in r for r in runs)]
    if not tasks:
        return None
    fig, axes = _grid(len(tasks), cols=2)
    styles = {"AP": "-", "AP50": "--", "AP75": ":"}
    for ax, task in zip(axes, tasks):
        for i, (run, label) in enumerate(zip(runs, labels)):
            for m in EVAL_METRICS:
                key = f"eval/{task}/{m}"
                if key in run:
                    steps, vals = run[key]
                    name = f"{label} {m}" if len(runs) > 1 else m
                    ax.plot(steps, vals, color=_color(i), ls=styles[m], marker="o", ms=3,
                            lw=1.3, label=name)
        ax.set(title=f"evaluation: {task}", xlabel="step", ylim=(0, 1))
        ax.legend(loc="best")
    return plots.save(fig, path)


def plot_runs(workdirs: Sequence[str], out_dir: str,
              labels: Sequence[str] | None = None) -> dict[str, str]:
    """losses.png, schedule.png and eval.png in `out_dir` for the runs' metrics.jsonl;
    returns {name: path} for those that had something to draw."""
    runs = [read_metrics(os.path.join(w, "metrics.jsonl")) for w in workdirs]
    labels = list(labels) if labels else [os.path.basename(os.path.normpath(w)) for w in workdirs]
    out = {}
    for name, fn in (("losses", plot_losses), ("schedule", plot_schedule), ("eval", plot_eval)):
        path = fn(runs, labels, os.path.join(out_dir, f"{name}.png"))
        if path:
            out[name] = path
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", help="run directories holding metrics.jsonl")
    parser.add_argument("--out", required=True, help="folder for the PNGs")
    args = parser.parse_args(argv)
    for name, path in plot_runs(args.workdirs, args.out).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
