"""Runs a grid of config overrides, one workdir per run, and tabulates their final metrics.

    python launch/sweep.py --config=configs/shapes_sweep.py:runlocal --root=/tmp/sweeps
    python launch/sweep.py --config=configs/r50_fpn_1x.py --set=model.roi_heads.aligned=False,True \
        --set=solver.base_lr=0.02,0.04 --nproc=8 --print             # the torchrun lines only
    python launch/sweep.py --config=configs/r50_fpn_1x.py --set=... --slurm --nodes=2  # sbatch lines
    python launch/sweep.py --config=configs/shapes_sweep.py --table-only  # re-read the workdirs

The grid is the config file's `get_sweep(arg)` (a list of override dicts {"a.b": value}; a file
without one gives a single run) crossed with every `--set=key=v1,v2,...` (commas inside brackets
or quotes do not split: `--set=input.min_size_train=(640,800),(800,)`). Run `suffix` of sweep
`name` (the config file's name) lives in `<root>/<name>/<suffix>`, the suffix made of the
overrides ("aligned-True_base_lr-0.04"), or a short hash when that is too long or ambiguous.

Runs go one after another through `main.py --mode=train` (torchrun --standalone with --nproc > 1);
a run that already finished is skipped, an unfinished one resumes from its workdir. Arguments
after `--` go to every run (`-- --config.solver.max_iter=100`). Then `<root>/<name>/results.md`
and `results.csv` compare the runs: overrides, final bbox / segm AP (the metrics.json of the
run's last evaluation), s/iter (median of the logged step times, the first left out), the last
logged loss; and each run's TensorBoard directory gets its hparams and final metrics, so
`tensorboard --logdir <root>/<name>` shows the runs side by side (HPARAMS tab).
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import importlib.util
import inspect
import io
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_SUFFIX = 60

# (column, results key, format): the metrics of the table, in its order.
METRIC_COLUMNS = (
    ("bbox AP", "bbox_AP", "{:.2f}"),
    ("bbox AP50", "bbox_AP50", "{:.2f}"),
    ("segm AP", "segm_AP", "{:.2f}"),
    ("segm AP50", "segm_AP50", "{:.2f}"),
    ("s/iter", "s_per_iter", "{:.4f}"),
    ("loss", "loss", "{:.4f}"),
    ("iter", "iter", "{}"),
    ("status", "status", "{}"),
)


# ----------------------------------------------------------------------------- the grid


def split_values(text: str) -> list[str]:
    """Splits `v1,v2,...` on the commas outside brackets and quotes: "1,(2, 3),'a,b'" ->
    ["1", "(2, 3)", "'a,b'"]. Raises ValueError on unbalanced brackets."""
    out, cur, depth, quote = [], [], 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced brackets in {text!r}")
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if depth or quote:
        raise ValueError(f"unbalanced brackets or quotes in {text!r}")
    out.append("".join(cur).strip())
    if any(v == "" for v in out):
        raise ValueError(f"empty value in {text!r}")
    return out


def parse_set(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """`--set` arguments "key=v1,v2" -> [(key, [v1, v2])]; a key given twice is an error."""
    out: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if key.startswith("config."):
            key = key[len("config."):]
        if not sep or not key or not values:
            raise ValueError(f"--set {item!r}: expected key=v1,v2,...")
        if key in (k for k, _ in out):
            raise ValueError(f"--set: key {key!r} given twice")
        out.append((key, split_values(values)))
    return out


def expand_grid(
    sweep: Sequence[dict[str, Any]] | None, sets: Sequence[tuple[str, Sequence[Any]]]
) -> list[dict[str, Any]]:
    """Every run's overrides: each dict of `sweep` (None or empty: one run without overrides)
    crossed with every combination of the `sets` values, in order (the last key varies fastest).
    A key both in `sweep` and in `sets` is an error; so are two identical runs."""
    base = [dict(d) for d in sweep] if sweep else [{}]
    for d in base:
        both = sorted(set(d) & {k for k, _ in sets})
        if both:
            raise ValueError(f"keys both in get_sweep() and --set: {both}")
    runs = []
    for d in base:
        for combo in itertools.product(*[values for _, values in sets]):
            runs.append({**d, **dict(zip([k for k, _ in sets], combo))})
    seen = set()
    for r in runs:
        key = _canonical(r)
        if key in seen:
            raise ValueError(f"the grid holds the same run twice: {r}")
        seen.add(key)
    return runs


def format_value(value: Any) -> str:
    """A Python value as the text of a `--config.key=` flag (strings stay as they are)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return repr(tuple(value))
    return repr(value)


def _canonical(overrides: dict[str, Any]) -> str:
    return json.dumps({k: format_value(v) for k, v in sorted(overrides.items())})


def short_hash(overrides: dict[str, Any]) -> str:
    return hashlib.sha1(_canonical(overrides).encode()).hexdigest()[:8]


def readable_suffix(overrides: dict[str, Any]) -> str:
    """"aligned-True_base_lr-0.04": the last part of each key with its value; "base" if none."""
    if not overrides:
        return "base"
    parts = []
    for k, v in overrides.items():
        value = re.sub(r"[^A-Za-z0-9.+-]+", "-", format_value(v)).strip("-") or "empty"
        parts.append(f"{k.split('.')[-1]}-{value}")
    return "_".join(parts)


def run_suffixes(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Each run's workdir name: readable where it is short and unique within the sweep, else
    the readable start plus a hash of the overrides (always unique, stable across invocations)."""
    names = [readable_suffix(r) for r in runs]
    counts = {n: names.count(n) for n in names}
    out = []
    for r, n in zip(runs, names):
        if len(n) > MAX_SUFFIX or counts[n] > 1:
            n = f"{n[:MAX_SUFFIX - 9].rstrip('_-')}-{short_hash(r)}"
        out.append(n)
    return out


# ----------------------------------------------------------------------------- commands


def override_args(overrides: dict[str, Any]) -> list[str]:
    return [f"--config.{k}={format_value(v)}" for k, v in overrides.items()]


def train_command(
    config: str, workdir: str, overrides: dict[str, Any], extra: Sequence[str], nproc: int = 1,
    python: str = sys.executable,
) -> list[str]:
    """The command that trains one run from the repository root."""
    args = ["main.py", f"--config={config}", "--mode=train", f"--workdir={workdir}",
            *override_args(overrides), *extra]
    if nproc > 1:
        return [python, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", *args]
    return [python, *args]


def sbatch_command(
    config: str, workdir: str, overrides: dict[str, Any], extra: Sequence[str], job_name: str,
    nodes: int = 1,
) -> list[str]:
    return ["sbatch", f"--job-name={job_name}", f"--nodes={nodes}", "launch/slurm.sbatch", config,
            f"--workdir={workdir}", *override_args(overrides), *extra]


# ----------------------------------------------------------------------------- results


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _last_checkpoint_iter(workdir: str) -> int | None:
    try:
        with open(os.path.join(workdir, "last_checkpoint")) as f:
            m = re.match(r"^model_(\d+)\.pth$", f.read().strip())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def read_results(workdir: str) -> dict[str, Any]:
    """What a run's workdir says about it.

    Keys: status ("done", "running or stopped", "not started"), iter (last checkpoint), max_iter,
    eval_iter (iteration of the last evaluation), bbox_AP, bbox_AP50, segm_AP, segm_AP50 (in
    percent; absent without an evaluation), s_per_iter (median of the logged `train/time`, the
    first record - warm-up - left out when there are others), loss (the last logged
    `train/loss`). "done" means the last checkpoint is at solver.max_iter and, when the config
    evaluates at the end, that evaluation's metrics exist.
    """
    out: dict[str, Any] = {"status": "not started"}
    config = _read_json(os.path.join(workdir, "config.json"))
    it = _last_checkpoint_iter(workdir)
    if it is not None:
        out["iter"] = it
    evals = []
    for path in glob.glob(os.path.join(workdir, "eval", "iter_*", "metrics.json")):
        m = re.search(r"iter_(\d+)", path)
        metrics = _read_json(path)
        if m and isinstance(metrics, dict):
            evals.append((int(m.group(1)), metrics))
    if evals:
        eval_iter, metrics = max(evals, key=lambda e: e[0])
        out["eval_iter"] = eval_iter
        for task in ("bbox", "segm"):
            for name in ("AP", "AP50"):
                value = metrics.get(task, {}).get(name)
                if value is not None:
                    out[f"{task}_{name}"] = 100.0 * float(value)
    times, loss = [], None
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if "train/time" in rec:
                    times.append(float(rec["train/time"]))
                if "train/loss" in rec:
                    loss = float(rec["train/loss"])
    except OSError:
        pass
    if times:
        out["s_per_iter"] = statistics.median(times[1:] if len(times) > 1 else times)
    if loss is not None:
        out["loss"] = loss
    if config is not None:
        max_iter = int(config["solver"]["max_iter"])
        out["max_iter"] = max_iter
        final_eval = bool(config.get("eval", {}).get("final", True))
        finished = it is not None and it >= max_iter
        if finished and (not final_eval or out.get("eval_iter") == it):
            out["status"] = "done"
        else:
            out["status"] = "running or stopped"
    return out


def table_rows(
    runs: Sequence[dict[str, Any]], suffixes: Sequence[str], results: Sequence[dict[str, Any]]
) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """(header, markdown cells, csv records) of the comparison table: one row per run."""
    keys = []
    for r in runs:
        keys += [k for k in r if k not in keys]
    header = ["run", *keys, *[c for c, _, _ in METRIC_COLUMNS]]
    cells, records = [], []
    for run, suffix, res in zip(runs, suffixes, results):
        row = [suffix, *[format_value(run[k]) if k in run else "" for k in keys]]
        rec: dict[str, Any] = {"run": suffix, **{k: format_value(run[k]) if k in run else ""
                                                   for k in keys}}
        for col, key, fmt in METRIC_COLUMNS:
            value = res.get(key)
            row.append("" if value is None else fmt.format(value))
            rec[col] = "" if value is None else value
        cells.append(row)
        records.append(rec)
    return header, cells, records


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    numeric = {c for c, _, fmt in METRIC_COLUMNS if fmt != "{}"} | {"iter"}
    align = ["---:" if h in numeric else "---" for h in header]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(out_dir: str, header, cells, records) -> str:
    """Writes results.md and results.csv into `out_dir`; returns the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    md = markdown_table(header, cells)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(md)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header)
    writer.writeheader()
    writer.writerows(records)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        f.write(buf.getvalue())
    return md


def write_hparams(workdir: str, overrides: dict[str, Any], results: dict[str, Any]) -> bool:
    """The run's overrides and final metrics into its TensorBoard directory; False when it has
    no metric to show yet."""
    metrics = {f"hparam/{key}": float(results[key])
               for key in ("bbox_AP", "segm_AP", "s_per_iter", "loss") if key in results}
    if not metrics:
        return False
    sys.path.insert(0, ROOT)
    from mrcnn.engine.writer import MetricWriter

    writer = MetricWriter(workdir, enabled=True)
    try:
        writer.hparams(dict(overrides) or {"run": "base"}, metrics)
    finally:
        writer.close()
    return True


# ----------------------------------------------------------------------------- main


def load_sweep(config: str) -> tuple[str, str, list[dict[str, Any]] | None]:
    """(config file as main.py should get it, sweep name, get_sweep(arg) or None) of
    `--config=path[:arg]`; the path is relative to the current folder or the repository."""
    path, sep, arg = config.partition(":")
    full = os.path.abspath(path) if os.path.isfile(path) else os.path.join(ROOT, path)
    if not os.path.isfile(full):
        raise FileNotFoundError(f"--config: no file {path!r}")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)  # config files import `configs.*`
    spec = importlib.util.spec_from_file_location("_sweep_config", full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    name = os.path.splitext(os.path.basename(full))[0]
    for_main = _display(full) + sep + arg  # runs start in the repository root
    get_sweep = getattr(module, "get_sweep", None)
    if get_sweep is None:
        return for_main, name, None
    sweep = get_sweep(arg or None) if inspect.signature(get_sweep).parameters else get_sweep()
    if not isinstance(sweep, (list, tuple)) or not all(isinstance(d, dict) for d in sweep):
        raise TypeError(f"{path}: get_sweep() must return a list of dicts, got {sweep!r}")
    return for_main, name, list(sweep)


def _display(path: str) -> str:
    """`path` relative to the repository root when it is inside it (commands run there)."""
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith("..") else rel


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="config file, optionally with :arg")
    p.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                   help="values of one config key; repeat for a product")
    p.add_argument("--root", default="runs/sweeps", help="sweeps live in ROOT/NAME/")
    p.add_argument("--name", default=None, help="sweep name (default: the config file's name)")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun if > 1)")
    p.add_argument("--print", action="store_true", help="print the commands, run nothing")
    p.add_argument("--slurm", action="store_true",
                   help="print sbatch lines for launch/slurm.sbatch instead (implies --print)")
    p.add_argument("--nodes", type=int, default=1, help="with --slurm: nodes per run")
    p.add_argument("--table-only", action="store_true", help="only (re)write the table")
    return p.parse_args(argv), extra


def main(argv: Sequence[str]) -> int:
    args, extra = parse_args(argv)
    config, default_name, sweep = load_sweep(args.config)
    runs = expand_grid(sweep, parse_set(args.set))
    suffixes = run_suffixes(runs)
    name = args.name or default_name
    sweep_dir = os.path.abspath(os.path.join(args.root, name))
    workdirs = [os.path.join(sweep_dir, s) for s in suffixes]

    if args.print or args.slurm:  # this script never submits jobs itself
        for run, suffix, wd in zip(runs, suffixes, workdirs):
            cmd = (sbatch_command(config, _display(wd), run, extra, f"{name}-{suffix}", args.nodes)
                   if args.slurm else
                   train_command(config, _display(wd), run, extra, args.nproc, python="python"))
            print(shlex.join(cmd))
        return 0

    failed = []
    if not args.table_only:
        for i, (run, wd) in enumerate(zip(runs, workdirs)):
            tag = f"[sweep {i + 1}/{len(runs)}] {wd}"
            if read_results(wd)["status"] == "done":
                print(f"{tag}: done, skipped", flush=True)
                continue
            cmd = train_command(config, wd, run, extra, args.nproc)
            print(f"{tag}: {shlex.join(cmd)}", flush=True)
            rc = subprocess.run(cmd, cwd=ROOT).returncode
            if rc != 0:
                print(f"{tag}: failed with exit status {rc}", flush=True)
                failed.append(wd)
                continue
            write_hparams(wd, run, read_results(wd))

    results = [read_results(wd) for wd in workdirs]
    for wd, res in zip(workdirs, results):
        if wd in failed:
            res["status"] = "failed"
    md = write_table(sweep_dir, *table_rows(runs, suffixes, results))
    print(md, end="")
    print(f"[sweep] {os.path.join(sweep_dir, 'results.md')}, results.csv; TensorBoard: "
          f"tensorboard --logdir {sweep_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
