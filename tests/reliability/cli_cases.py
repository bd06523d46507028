"""Outside-in cases: `main.py` run as a new user runs it (a subprocess, its real exit code and
output), on small COCO datasets written the way real exporters and hand edits write them.

Each case states what it expects:

- `runs`: exit 0 (with `warn`: the output also holds those strings, e.g. a warning naming a
  key); its `check` then looks at what the run wrote (category ids in bbox.json, checkpoints);
- `error`: exit 2 (`rcs` may also allow absl's exit 1 for a flag error) with no traceback and
  one error line holding every needle (the file, image id, annotation id or config key).

and every observed outcome is classified as one of

- `handled`: as expected;
- `wrong-error`: a traceback, exit 1, an error line that does not name what it should, or a
  refusal of something that should run;
- `hang`: no exit within the case's time limit (the whole process group is then killed);
- `silently-wrong`: exit 0 where an error was due, or a wrong result (a category id the model
  was not trained on in bbox.json, a missing warning, an image missing from predictions.json);
- `lost`: a checkpoint or output that existed before is gone or unreadable;
- `skipped`: the case cannot run here (no mount rights, a GPU present, its fixture failed),
  with the reason; counted, never a pass.

`run_cases(work, cases)` runs them (`jobs` at a time); `python -m bench.faults` prints the table
and tests/reliability/test_cli_cases.py asserts a fast subset.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = "configs/shapes.py:tiny"
SIZE = 64
# The training categories of the `hand` dataset the shared model is trained on: ids that are
# neither 1..n nor contiguous, names with unicode, so a mapping by position shows.
TRAIN_CATS = [(7, "cat"), (42, "dog"), (1000, "猫 ünïcode")]
CLASSES = (
    "handled",
    "wrong-error",
    "hang",
    "silently-wrong",
    "lost",
    "skipped",
)


# --------------------------------------------------------------------------- datasets
def _shapes(i: int) -> list[list[float]]:
    """Image i's objects as polygons (a square and a triangle, moved with i)."""
    x, y = 4 + 3 * (i % 5), 6 + 2 * (i % 4)
    sq = [x, y, x + 18, y, x + 18, y + 18, x, y + 18]
    tx, ty = 36 + (i % 3), 30 + (i % 4)
    tri = [tx, ty, tx + 20, ty, tx + 10, ty + 20]
    return [[float(v) for v in sq], [float(v) for v in tri]]


def _bbox(poly: list[float]) -> list[float]:
    xs, ys = poly[0::2], poly[1::2]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _area(poly: list[float]) -> float:
    xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def save_image(path: str, i: int, size: tuple[int, int] = (SIZE, SIZE), fmt: str | None = None):
    """A noisy dark image with image i's objects drawn bright; format from the extension."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(i)
    h, w = size
    arr = (rng.integers(20, 50, (h, w, 3))).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for k, poly in enumerate(_shapes(i)):
        draw.polygon(poly, fill=(230, 200 - 60 * k, 60 + 90 * k))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ext = os.path.splitext(path)[1].lower()
    fmt = fmt or {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(ext, "PNG")
    img.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


@dataclasses.dataclass
class Dataset:
    img_dir: str
    ann_file: str
    js: dict

    def write(self, text: str | None = None, bom: bool = False) -> None:
        text = json.dumps(self.js, indent=2, ensure_ascii=False) if text is None else text
        with open(self.ann_file, "wb") as f:
            f.write((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def hand_dataset(folder: str, n: int = 4, cats=TRAIN_CATS, file_name=None) -> Dataset:
    """A hand-made COCO json: category ids 7 / 42 / 1000 (one unicode name), image ids from 1,
    annotation ids from 501, areas and iscrowd present. Image i holds a square of category
    cats[i % 3] and a triangle of cats[(i + 1) % 3]."""
    img_dir = os.path.join(folder, "images")
    file_name = file_name or (lambda i: f"{i:03d}.png")
    images, anns = [], []
    for i in range(n):
        name = file_name(i)
        save_image(os.path.join(img_dir, name), i)
        images.append({"id": i + 1, "file_name": name, "height": SIZE, "width": SIZE})
        for k, poly in enumerate(_shapes(i)):
            anns.append(
                {
                    "id": 501 + len(anns),
                    "image_id": i + 1,
                    "category_id": cats[(i + k) % len(cats)][0],
                    "iscrowd": 0,
                    "area": _area(poly),
                    "bbox": _bbox(poly),
                    "segmentation": [poly],
                }
            )
    js = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": nm, "supercategory": "thing"} for c, nm in cats],
    }
    ds = Dataset(img_dir, os.path.join(folder, "instances.json"), js)
    ds.write()
    return ds


def labelme_dataset(folder: str, n: int = 4) -> Dataset:
    """As labelme's labelme2coco.py writes it: ids from 0, category 0 `_background_` (from
    labels.txt, never used), `supercategory: null`, file names under JPEGImages/, JPEGs,
    `"type": "instances"`, float areas, null info fields."""
    images, anns = [], []
    for i in range(n):
        name = f"JPEGImages/img_{i:04d}.jpg"
        save_image(os.path.join(folder, name), i)
        images.append(
            {"license": 0, "url": None, "file_name": name, "height": SIZE, "width": SIZE,
             "date_captured": None, "id": i}
        )
        for k, poly in enumerate(_shapes(i)):
            anns.append(
                {"id": len(anns), "image_id": i, "category_id": 1 + (i + k) % 2,
                 "segmentation": [poly], "area": _area(poly), "bbox": _bbox(poly),
                 "iscrowd": 0}
            )
    js = {
        "info": {"description": None, "url": None, "version": None, "year": 2024,
                 "contributor": None, "date_created": "2024-03-01 10:00:00.000000"},
        "licenses": [{"url": None, "id": 0, "name": None}],
        "images": images,
        "type": "instances",
        "annotations": anns,
        "categories": [
            {"supercategory": None, "id": 0, "name": "_background_"},
            {"supercategory": None, "id": 1, "name": "bolt"},
            {"supercategory": None, "id": 2, "name": "nut"},
        ],
    }
    ds = Dataset(folder, os.path.join(folder, "annotations.json"), js)
    ds.write()
    return ds


def cvat_dataset(folder: str, n: int = 4) -> Dataset:
    """As CVAT's "COCO 1.0" export writes it: images/ beside annotations/instances_default.json,
    empty licence / url strings, `attributes` on every annotation, rectangles as box-only
    objects (`"segmentation": []`, area w x h), ids from 1."""
    img_dir = os.path.join(folder, "images")
    images, anns = [], []
    for i in range(n):
        name = f"frame_{i:06d}.PNG" if i == 0 else f"frame_{i:06d}.png"
        save_image(os.path.join(img_dir, name), i)
        images.append(
            {"id": i + 1, "width": SIZE, "height": SIZE, "file_name": name, "license": 0,
             "flickr_url": "", "coco_url": "", "date_captured": 0}
        )
        sq, tri = _shapes(i)
        anns.append(
            {"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "segmentation": [sq],
             "area": _area(sq), "bbox": _bbox(sq), "iscrowd": 0,
             "attributes": {"occluded": False}}
        )
        b = _bbox(tri)
        anns.append(  # a rectangle drawn in CVAT: a box without a mask
            {"id": len(anns) + 1, "image_id": i + 1, "category_id": 2, "segmentation": [],
             "area": b[2] * b[3], "bbox": b, "iscrowd": 0,
             "attributes": {"occluded": True, "rotation": 0.0}}
        )
    js = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {"contributor": "", "date_created": "", "description": "", "url": "",
                 "version": "", "year": ""},
        "categories": [{"id": 1, "name": "car", "supercategory": ""},
                       {"id": 2, "name": "person", "supercategory": ""}],
        "images": images,
        "annotations": anns,
    }
    os.makedirs(os.path.join(folder, "annotations"), exist_ok=True)
    ds = Dataset(img_dir, os.path.join(folder, "annotations", "instances_default.json"), js)
    ds.write()
    return ds


def roboflow_dataset(folder: str, n: int = 4) -> Dataset:
    """As Roboflow's "COCO" export writes a split: the images and `_annotations.coco.json` in one
    folder, a group category id 0 (`supercategory: "none"`) above the classes, no `iscrowd` and
    no `area` on annotations... (both are optional in their exports), ids from 0, hashed file
    names, extra keys."""
    images, anns = [], []
    for i in range(n):
        name = f"IMG_{i:04d}_jpg.rf.{i * 7919:08x}.jpg"
        save_image(os.path.join(folder, name), i)
        images.append(
            {"id": i, "license": 1, "file_name": name, "height": SIZE, "width": SIZE,
             "date_captured": "2024-01-01T00:00:00+00:00", "extra": {"name": f"IMG_{i}.jpg"}}
        )
        for k, poly in enumerate(_shapes(i)):
            anns.append(
                {"id": len(anns), "image_id": i, "category_id": 1 + (i + k) % 2,
                 "bbox": _bbox(poly), "segmentation": [poly]}
            )
    js = {
        "info": {"year": "2024", "version": "3", "description": "Exported from roboflow.com",
                 "contributor": "", "url": "https://public.roboflow.com", "date_created": "x"},
        "licenses": [{"id": 1, "url": "https://creativecommons.org/licenses/by/4.0/",
                      "name": "CC BY 4.0"}],
        "categories": [
            {"id": 0, "name": "cells", "supercategory": "none"},
            {"id": 1, "name": "platelets", "supercategory": "cells"},
            {"id": 2, "name": "rbc", "supercategory": "cells"},
        ],
        "images": images,
        "annotations": anns,
    }
    ds = Dataset(folder, os.path.join(folder, "_annotations.coco.json"), js)
    ds.write()
    return ds


# --------------------------------------------------------------------------- running main.py
@dataclasses.dataclass
class Result:
    rc: int | None  # None: still running when we stopped it on purpose (`stop_on`)
    out: str
    wall_s: float
    timed_out: bool = False
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class Skip(Exception):
    """The case cannot run here; the message says why."""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MRCNN_DATA", None)
    env["OMP_NUM_THREADS"] = "2"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start(args: list[str], log_path: str) -> subprocess.Popen:
    """`python main.py ARGS` in its own process group (so a signal or a timeout reaches its
    loader workers too), stdout and stderr into `log_path`."""
    out = open(log_path, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "main.py", *args], cwd=REPO, env=child_env(), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    finally:
        out.close()


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def wait_for(proc: subprocess.Popen, log_path: str, pattern: str, timeout: float) -> bool:
    """True once the log matches `pattern`; False when the process exits first or the time runs
    out."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rx.search(_read(log_path)):
            return True
        if proc.poll() is not None:
            return bool(rx.search(_read(log_path)))
        time.sleep(0.2)
    return False


def finish(proc: subprocess.Popen, log_path: str, t0: float, timeout: float) -> Result:
    """Waits for the exit; past `timeout` (from t0) the group is killed and it is a hang."""
    try:
        rc = proc.wait(max(1.0, timeout - (time.monotonic() - t0)))
        kill_group(proc)  # loader workers left behind
        return Result(rc, _read(log_path), time.monotonic() - t0)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait(30)
        return Result(None, _read(log_path), time.monotonic() - t0, timed_out=True)


def run_main(args: list[str], log_path: str, timeout: float, stop_on: str | None = None,
             stop_after_s: float = 0.0) -> Result:
    """Runs main.py to its end (bounded by `timeout`). With `stop_on`: once the log matches it,
    waits `stop_after_s` and SIGKILLs the group (the run was accepted; rc None unless it ended
    by itself)."""
    t0 = time.monotonic()
    proc = start(args, log_path)
    if stop_on is not None:
        if wait_for(proc, log_path, stop_on, timeout - 5):
            time.sleep(stop_after_s)
            if proc.poll() is None:
                kill_group(proc)
                proc.wait(30)
                return Result(None, _read(log_path), time.monotonic() - t0)
    return finish(proc, log_path, t0, timeout)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


# --------------------------------------------------------------------------- cases
@dataclasses.dataclass
class CliCase:
    name: str
    group: str
    expect: str  # "runs" | "error"
    run: Callable[[Ctx, str], Result]  # (ctx, the case's folder) -> Result
    needles: tuple[str, ...] = ()  # error: in the error line; runs: in the output (warnings)
    check: Callable[[Ctx, str, Result], tuple[str, str] | None] | None = None
    rcs: tuple[int, ...] = (2,)  # accepted exit codes of an error
    fast: bool = False  # in tests/reliability/test_cli_cases.py
    needs_model: bool = False

    @property
    def expected(self) -> str:
        if self.expect == "runs":
            return "runs" + (f", output names {', '.join(self.needles)}" if self.needles else "")
        rc = "/".join(map(str, self.rcs))
        if not self.needles:
            return f"exit {rc}, one line, no traceback"
        named = ", ".join(n.replace("|", " or ") for n in self.needles)
        return f"exit {rc}, one line naming {named}"


@dataclasses.dataclass
class Outcome:
    case: CliCase
    cls: str  # one of CLASSES
    detail: str
    wall_s: float
    command: str = ""


ERROR_LINE = re.compile(r"(?:\w*Error\b|FATAL|error:).*", re.IGNORECASE)
# absl's "E1202 06:21:03.987727 140330502970240 main.py:41] " and our "06:21:01 ERROR mrcnn: "
LOG_PREFIX = re.compile(r"^(?:[EWIF]\d{4} [\d:.]+ +\d+ \S+\] |\d\d:\d\d:\d\d [A-Z]+ [\w.]+: )")


def error_line(out: str) -> str:
    """The last line of the output that reports an error (what a user reads), without the log
    prefix."""
    lines = [ln for ln in out.splitlines() if ERROR_LINE.search(ln)]
    line = lines[-1].strip() if lines else (out.strip().splitlines() or [""])[-1]
    return LOG_PREFIX.sub("", line)


def classify(case: CliCase, ctx: Ctx, folder: str, res: Result) -> tuple[str, str]:
    """(class, what was seen)."""
    if res.timed_out:
        return "hang", f"no exit after {res.wall_s:.0f} s (process group killed)"
    tb = "Traceback (most recent call last)" in res.out
    full = error_line(res.out)
    line = _short(full, 150)
    extra = list(res.problems)
    if case.check is not None and not extra:
        try:
            p = case.check(ctx, folder, res)
        except Exception as e:  # a check that cannot read what it expects: the output is wrong
            p = ("silently-wrong", f"check failed: {type(e).__name__}: {_short(str(e), 80)}")
        if p:
            extra.append(p)
    lost = [p for p in extra if p[0] == "lost"]
    if lost:
        return "lost", lost[0][1]
    if case.expect == "error":
        if res.rc in case.rcs and not tb:
            missing = [n for n in case.needles if not _names(full, n)]
            if missing:
                return "wrong-error", f"exit {res.rc}, line lacks {missing}: {line}"
            if extra:
                return extra[0]
            return "handled", f"exit {res.rc}: {line}"
        if res.rc == 0:
            warns = [ln for ln in res.out.splitlines() if " WARNING " in ln]
            said = f"; last warning: {_short(LOG_PREFIX.sub('', warns[-1]), 110)}" if warns else (
                "; no warning")
            return "silently-wrong", "exit 0 (accepted)" + (f"; {extra[0][1]}" if extra else said)
        return "wrong-error", f"exit {res.rc}{' with a traceback' if tb else ''}: {line}"
    # runs
    if res.rc not in (0, None):
        return "wrong-error", f"exit {res.rc}{' with a traceback' if tb else ''}: {line}"
    if tb:
        return "wrong-error", f"exit {res.rc} but a traceback in the output: {line}"
    missing = [n for n in case.needles if not _names(res.out, n)]
    if missing:
        return "silently-wrong", f"ran, but no message naming {missing}"
    if extra:
        return extra[0]
    return "handled", "ran" if res.rc == 0 else "accepted (stopped by the campaign)"


def _names(text: str, needle: str) -> bool:
    """`needle` is in `text`; "a|b" accepts either."""
    return any(alt in text for alt in needle.split("|"))


def _short(s: str, n: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


class Ctx:
    """Shared state of a campaign: the work folder, the hand dataset, the shared trained model
    (set by the first case, which trains it)."""

    def __init__(self, work: str):
        self.work = work
        os.makedirs(work, exist_ok=True)
        self.hand = hand_dataset(os.path.join(work, "hand"))
        self.model_dir = os.path.join(work, "cases", "00_model")
        self.ckpt: str | None = None  # set once the model case trained
        self.commands: dict[str, str] = {}
        self.lock = threading.Lock()

    def record(self, folder: str, args: list[str]) -> None:
        with self.lock:
            self.commands[folder] = "python main.py " + " ".join(_quote(a) for a in args)


def _quote(a: str) -> str:
    return a if re.fullmatch(r"[\w./:=,+@%-]*", a) else "'" + a.replace("'", "'\\''") + "'"


def data_args(train: Dataset | None, val: Dataset | None = None) -> list[str]:
    out = []
    for split, ds in (("train", train), ("val", val)):
        if ds is not None:
            out += [f"--config.data.{split}.img_dir={ds.img_dir}",
                    f"--config.data.{split}.ann_file={ds.ann_file}"]
    return out


def train_args(ctx: Ctx, workdir: str, *over: str, train: Dataset | None = None,
               val: Dataset | None = None, config: str = TINY) -> list[str]:
    """A tiny training (1 step, 64 px, width-16 R18) on `train` (default: the hand dataset)."""
    train = train or ctx.hand
    return [f"--config={config}", "--mode=train", f"--workdir={workdir}",
            f"--config.data.root={os.path.join(ctx.work, 'root')}",
            *data_args(train, val or train), "--config.solver.max_iter=1",
            "--config.solver.warmup_iters=0", "--config.solver.steps=()", *over]


def simple(args_fn: Callable[[Ctx, str], list[str]], timeout: float = 150, **kw):
    """A case that runs main.py once with args_fn(ctx, folder)."""

    def run(ctx: Ctx, folder: str) -> Result:
        args = args_fn(ctx, folder)
        ctx.record(folder, args)
        return run_main(args, os.path.join(folder, "out.txt"), timeout, **kw)

    return run


def config_error(name: str, *over: str, key: str, fast: bool = True, rcs=(2,),
                 config: str = TINY) -> CliCase:
    """A bad config value: exit 2 before any work, one line naming the key."""

    def args(ctx, folder):
        return train_args(ctx, os.path.join(folder, "w"), *over, config=config)

    return CliCase(name, "config", "error", simple(args, 90), (key,), rcs=rcs, fast=fast)


# ---- checks
def _results(path_glob: str) -> list[dict]:
    paths = sorted(glob.glob(path_glob, recursive=True))
    if not paths:
        raise FileNotFoundError(path_glob)
    recs = json.load(open(paths[-1]))
    return recs["annotations"] if isinstance(recs, dict) else recs


def ids_within(allowed: set[int], where: str = "**/bbox.json"):
    """silently-wrong when the results hold a category id outside `allowed` (or none at all)."""

    def check(ctx, folder, res):
        recs = _results(os.path.join(folder, "w", where))
        ids = {r["category_id"] for r in recs}
        if not recs:
            return ("silently-wrong", f"{where}: no results at all")
        if not ids <= allowed:
            return ("silently-wrong", f"{where} category ids {sorted(ids)}, model trained on "
                    f"{sorted(allowed)}")
        return None

    return check


TRAIN_IDS = {c for c, _ in TRAIN_CATS}


def same_ids_as_training_eval(ctx, folder, res):
    """The eval of the shared model on the same images gives the same (image, category id)
    pairs as the training run's own final evaluation: a label mapped to another category (by
    position in the val json, say) shows here even when every id is a training id."""
    bad = ids_within(TRAIN_IDS)(ctx, folder, res)
    if bad:
        return bad
    ref = _results(os.path.join(ctx.model_dir, "w", "eval", "**", "bbox.json"))
    got = _results(os.path.join(folder, "w", "**", "bbox.json"))

    def pairs(recs):
        return sorted((r["image_id"], r["category_id"]) for r in recs)

    if pairs(got) != pairs(ref):
        diff = sorted(set(pairs(got)) ^ set(pairs(ref)))[:4]
        return ("silently-wrong", f"(image, category) pairs differ from the training run's "
                f"evaluation of the same model and images, e.g. {diff}")
    return None


def _model_args(ctx: Ctx, mode: str, workdir: str, *over: str, train=None, val=None):
    if ctx.ckpt is None:
        raise Skip("the shared model did not train (its case failed)")
    return [f"--config={TINY}", f"--mode={mode}", f"--workdir={workdir}",
            f"--config.data.root={os.path.join(ctx.work, 'root')}",
            f"--config.init.weights={ctx.ckpt}", *data_args(train or ctx.hand, val), *over]


def eval_case(name: str, edit: Callable[[Dataset], Any], expect="runs", needles=(),
              check=None, over=(), fast=False) -> CliCase:
    """`--mode=eval` of the shared model on a copy of the hand val json edited by `edit`."""

    def args(ctx, folder):
        ds = Dataset(ctx.hand.img_dir, os.path.join(folder, "val.json"),
                     json.loads(json.dumps(ctx.hand.js)))
        text = edit(ds)
        if text is not False:
            ds.write(**(text or {}))
        return _model_args(ctx, "eval", os.path.join(folder, "w"), *over, val=ds)

    if check is None and expect == "runs":
        check = same_ids_as_training_eval
    return CliCase(name, "val set", expect, simple(args, 150), tuple(needles), check,
                   needs_model=True, fast=fast)


def predict_case(name: str, make_input: Callable[[str], str], needles=(), expect="runs",
                 n_expected: int | None = None, over=(), check=None) -> CliCase:
    """`--mode=predict` of the shared model on the input `make_input(folder)` returns."""

    def args(ctx, folder):
        inp = make_input(folder)
        return _model_args(ctx, "predict", os.path.join(folder, "w"),
                           f"--config.predict.input={inp}", "--config.predict.score_thresh=0",
                           *over)

    def default_check(ctx, folder, res):
        recs = _results(os.path.join(folder, "w", "predictions.json"))
        ids = {r["category_id"] for r in recs}
        if not ids <= TRAIN_IDS:
            return ("silently-wrong", f"predictions.json category ids {sorted(ids)}, model "
                    f"trained on {sorted(TRAIN_IDS)}")
        files = {r.get("file_name") for r in recs}
        if n_expected is not None and len(files) != n_expected:
            return ("silently-wrong", f"predictions for {len(files)} images, expected "
                    f"{n_expected}: {sorted(map(str, files))}")
        return None

    return CliCase(name, "predict", expect, simple(args, 150), tuple(needles),
                   check or (default_check if expect == "runs" else None), needs_model=True)


def _all_or_named(good: list[str], odd: str):
    """predictions.json holds every image of `good`, and `odd` is either predicted too or named
    in the output (skipped with a message); no foreign category id."""

    def check(ctx, folder, res):
        recs = _results(os.path.join(folder, "w", "predictions.json"))
        ids = {r["category_id"] for r in recs}
        if not ids <= TRAIN_IDS:
            return ("silently-wrong", f"predictions.json category ids {sorted(ids)}")
        files = {os.path.basename(str(r.get("file_name"))) for r in recs}
        missing = [g for g in good if g not in files]
        if missing:
            return ("silently-wrong", f"no predictions for {missing}")
        if odd not in files and odd not in res.out.replace(odd + "'", odd):
            return ("silently-wrong", f"{odd} neither predicted nor named in the output")
        return None

    return check


def _pred_folder(folder: str, names: list[str], extra: Callable[[str], None] | None = None,
                 link: bool = False) -> str:
    d = os.path.join(folder, "input")
    for i, n in enumerate(names):
        save_image(os.path.join(d, n), i)
    if extra:
        extra(d)
    if link:
        os.symlink(d, os.path.join(folder, "input_link"))
        return os.path.join(folder, "input_link")
    return d


def _strip(d: str) -> None:
    from PIL import Image

    Image.new("RGB", (4000, 1), (200, 100, 50)).save(os.path.join(d, "strip_4000x1.png"))


def _fifo(d: str, name: str = "dead_mount.png") -> None:
    os.mkfifo(os.path.join(d, name))


def _checkpoint_loads(path: str) -> str | None:
    from mrcnn.engine import checkpoint

    try:
        checkpoint.load(path)
        return None
    except Exception as e:
        return f"{os.path.basename(path)} does not load: {type(e).__name__}: {_short(str(e), 60)}"


def _last_iteration(workdir: str) -> int:
    from mrcnn.engine import checkpoint

    found = checkpoint.load_latest(workdir)
    return -1 if found is None else int(found[0]["iteration"])


# ---- the cases that need more than one main.py
def train_model(ctx: Ctx, folder: str) -> Result:
    """The shared model: 2 steps on the hand dataset, with the final evaluation."""
    args = train_args(ctx, os.path.join(folder, "w"), "--config.solver.max_iter=2",
                      "--config.eval.final=True", "--config.solver.checkpoint_period=2")
    ctx.record(folder, args)
    res = run_main(args, os.path.join(folder, "out.txt"), 240)
    ck = os.path.join(folder, "w", "model_0000002.pth")
    if res.rc == 0 and os.path.isfile(ck):
        ctx.ckpt = ck
    return res


def sigterm_group(ctx: Ctx, folder: str) -> Result:
    """SIGTERM to the whole process group (as timeout, SLURM, docker stop, Kubernetes send it)
    once training logged a step; one loader worker."""
    w = os.path.join(folder, "w")
    args = train_args(ctx, w, "--config.solver.max_iter=300", "--config.data.num_workers=1",
                      "--config.solver.checkpoint_period=1000")
    ctx.record(folder, args + ["# then: os.killpg(pid, SIGTERM) after 'iter: 1'"])
    log_path = os.path.join(folder, "out.txt")
    t0 = time.monotonic()
    proc = start(args, log_path)
    if not wait_for(proc, log_path, r"iter: \d+ ", 200):
        return finish(proc, log_path, t0, 1)
    seen = max(int(m) for m in re.findall(r"iter: (\d+) ", _read(log_path)))
    kill_group(proc, signal.SIGTERM)
    res = finish(proc, log_path, t0, 90 + (time.monotonic() - t0))
    if res.rc == 0:
        it = _last_iteration(w)
        if it < seen:
            res.problems.append(("silently-wrong", f"exit 0 but the newest checkpoint is at "
                                 f"iteration {it}, the log had reached {seen}"))
    return res


def ctrl_c_in_eval(ctx: Ctx, folder: str) -> Result:
    """Ctrl-C in a terminal: SIGINT to the foreground process group, during inference of a
    40-image val set. It must stop promptly without a traceback."""
    val = hand_dataset(os.path.join(folder, "val"), n=40)
    args = _model_args(ctx, "eval", os.path.join(folder, "w"), val=val)
    ctx.record(folder, args + ["# then: os.killpg(pid, SIGINT) after 'inference: 2 images'"])
    log_path = os.path.join(folder, "out.txt")
    t0 = time.monotonic()
    proc = start(args, log_path)
    if wait_for(proc, log_path, r"inference: \d+ images", 120):
        kill_group(proc, signal.SIGINT)
    return finish(proc, log_path, t0, 60 + (time.monotonic() - t0))


def two_trainings(ctx: Ctx, folder: str) -> Result:
    """A second training on the workdir of a running one: it must fail at once (exit 2, naming
    the holder's pid); the first must keep its checkpoint and its metrics lines single."""
    w = os.path.join(folder, "w")
    args = train_args(ctx, w, "--config.solver.max_iter=300", "--config.solver.checkpoint_period=1")
    ctx.record(folder, args + ["# twice, the second once the first logged 'iter: 2'"])
    a_log, b_log = os.path.join(folder, "first.txt"), os.path.join(folder, "out.txt")
    t0 = time.monotonic()
    a = start(args, a_log)
    try:
        if not wait_for(a, a_log, r"iter: 2 ", 200):
            res = finish(a, a_log, t0, 1)
            res.problems.append(("wrong-error", "the first training never reached step 2: "
                                 + _short(error_line(res.out), 100)))
            return res
        res = run_main(args, b_log, 120)
        res.problems += [p for p in [_lock_named(res, a.pid)] if p]
    finally:
        kill_group(a, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            a.wait(90)
        kill_group(a)
        a.wait(30)
    ckpts = sorted(glob.glob(os.path.join(w, "model_*.pth")))
    if not ckpts:
        res.problems.append(("lost", "the first training's checkpoints are gone"))
    else:
        bad = _checkpoint_loads(ckpts[-1])
        if bad:
            res.problems.append(("lost", bad))
    iters = [json.loads(ln).get("iteration") for ln in open(os.path.join(w, "metrics.jsonl"))
             if ln.strip() and '"iteration"' in ln]
    if len(iters) != len(set(iters)):
        res.problems.append(("silently-wrong", "metrics.jsonl holds an iteration twice"))
    return res


def _lock_named(res: Result, pid: int) -> tuple[str, str] | None:
    if res.rc == 2 and str(pid) not in error_line(res.out):
        return ("wrong-error", f"exit 2 without the first training's pid {pid}: "
                + _short(error_line(res.out), 100))
    return None


def _mount_tmpfs(path: str, size: str, ro: bool = False) -> None:
    os.makedirs(path, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise Skip(f"cannot mount a tmpfs here ({_short(r.stderr or r.stdout, 60)})")


def _umount(path: str) -> None:
    subprocess.run(["umount", "-l", path], capture_output=True)


def full_disk(ctx: Ctx, folder: str) -> Result:
    """A workdir on a tmpfs that holds one checkpoint and a half: the second save fails."""
    if ctx.ckpt is None:
        raise Skip("the shared model did not train (its case failed)")
    mnt = os.path.join(folder, "mnt")
    size = int(os.path.getsize(ctx.ckpt) * 1.6) + (1 << 20)
    _mount_tmpfs(mnt, str(size))
    try:
        w = os.path.join(mnt, "w")
        args = train_args(ctx, w, "--config.solver.max_iter=3",
                          "--config.solver.checkpoint_period=1")
        ctx.record(folder, args + [f"# on a tmpfs of {size} bytes"])
        res = run_main(args, os.path.join(folder, "out.txt"), 200)
        first = os.path.join(w, "model_0000001.pth")
        if os.path.isfile(first) or res.rc == 2:
            bad = _checkpoint_loads(first) if os.path.isfile(first) else "model_0000001 is gone"
            if bad and "iter: 1 " in res.out:
                res.problems.append(("lost", bad))
        return res
    finally:
        _umount(mnt)


def readonly_workdir(ctx: Ctx, folder: str) -> Result:
    w = os.path.join(folder, "w")
    if os.geteuid() == 0:
        _mount_tmpfs(w, "1m", ro=True)
    else:
        os.makedirs(w)
        os.chmod(w, 0o555)
    try:
        args = train_args(ctx, w)
        ctx.record(folder, args + ["# the workdir is read-only"])
        return run_main(args, os.path.join(folder, "out.txt"), 90)
    finally:
        if os.geteuid() == 0:
            _umount(w)
        else:
            os.chmod(w, 0o755)


def _resume_from(ctx: Ctx, folder: str, write_ckpt: Callable[[str], None], *over: str) -> Result:
    if ctx.ckpt is None:
        raise Skip("the shared model did not train (its case failed)")
    w = os.path.join(folder, "w")
    os.makedirs(w)
    write_ckpt(w)
    before = {p: open(p, "rb").read() for p in glob.glob(os.path.join(w, "model_*.pth"))}
    args = train_args(ctx, w, "--config.solver.max_iter=3", *over)
    ctx.record(folder, args)
    res = run_main(args, os.path.join(folder, "out.txt"), 150)
    for p, data in before.items():
        if not os.path.isfile(p) or (res.rc != 0 and open(p, "rb").read() != data):
            res.problems.append(("lost", f"{os.path.basename(p)} was removed or changed"))
    return res


def resume_other_optimizer(ctx: Ctx, folder: str) -> Result:
    def copy(w):
        shutil.copy(ctx.ckpt, w)
        open(os.path.join(w, "last_checkpoint"), "w").write(os.path.basename(ctx.ckpt))

    return _resume_from(ctx, folder, copy, "--config.solver.optimizer=sgd")


def resume_weights_only(ctx: Ctx, folder: str) -> Result:
    def weights_only(w):
        import torch

        from mrcnn.engine import checkpoint

        state = checkpoint.load(ctx.ckpt)
        torch.save(state["model"], os.path.join(w, "model_0000002.pth"))
        open(os.path.join(w, "last_checkpoint"), "w").write("model_0000002.pth")

    return _resume_from(ctx, folder, weights_only)


def smoke_run(ctx: Ctx, folder: str) -> Result:
    """`configs/shapes.py` shortened to 40 steps (warmup 100, lr steps 2300 / 2800): must start
    training with a warning; the campaign stops it 15 s into the training loop."""
    args = ["--config=configs/shapes.py", "--mode=train", f"--workdir={os.path.join(folder, 'w')}",
            "--config.solver.max_iter=40", f"--config.data.root={os.path.join(folder, 'root')}",
            "--config.data.shapes.num_train=8", "--config.data.shapes.num_val=2"]
    ctx.record(folder, args)
    return run_main(args, os.path.join(folder, "out.txt"), 240,
                    stop_on=r"training from iteration", stop_after_s=2)


def fifo_in_training(ctx: Ctx, folder: str) -> Result:
    """A FIFO (a dead network mount's stand-in) as one of the training images: the read must
    be bounded, the image reported as bad (skipped and counted by default), no hang."""
    ds = hand_dataset(os.path.join(folder, "data"))
    p = os.path.join(ds.img_dir, ds.js["images"][1]["file_name"])
    os.remove(p)
    os.mkfifo(p)
    args = train_args(ctx, os.path.join(folder, "w"), "--config.solver.max_iter=2",
                      "--config.solver.ims_per_batch=4", train=ds)
    ctx.record(folder, args + ["# 001.png is a FIFO"])
    return run_main(args, os.path.join(folder, "out.txt"), 120)


def unreadable_with_workers(on_bad_image: str) -> Callable[[Ctx, str], Result]:
    """001.png holds garbage; two loader workers (the R-50 configs use 4)."""

    def run(ctx: Ctx, folder: str) -> Result:
        ds = hand_dataset(os.path.join(folder, "data"))
        open(os.path.join(ds.img_dir, ds.js["images"][1]["file_name"]), "wb").write(b"not a png")
        args = train_args(ctx, os.path.join(folder, "w"), "--config.solver.max_iter=2",
                          "--config.solver.ims_per_batch=4",
                          f"--config.data.on_bad_image={on_bad_image}",
                          "--config.data.num_workers=2", train=ds)
        ctx.record(folder, args + ["# 001.png holds garbage"])
        return run_main(args, os.path.join(folder, "out.txt"), 120)

    return run


def exporter_case(name: str, writer: Callable[[str], Dataset], allowed: set[int],
                  edit: Callable[[Dataset], Any] | None = None, num_classes: int = 0) -> CliCase:
    """One training step on the export and the final evaluation on the same json. The user
    sets model.num_classes to their classes + background (labelme's `_background_` and
    Roboflow's group category are not classes)."""

    def args(ctx, folder):
        ds = writer(os.path.join(folder, "data"))
        if edit:
            edit(ds)
        over = [f"--config.model.num_classes={num_classes}"] if num_classes else []
        return train_args(ctx, os.path.join(folder, "w"), "--config.eval.final=True", *over,
                          train=ds)

    return CliCase(name, "exporters", "runs", simple(args, 240), (), ids_within(allowed))


def file_names_case(ctx: Ctx, folder: str) -> Result:
    """Real-world file names: a symlinked image folder, upper-case extensions, spaces and
    unicode in names, a JPEG in a .jpeg file."""
    names = ["IMG 0001.JPG", "фото №2.jpeg", "scan (3).PNG", "plain.png"]
    ds = hand_dataset(os.path.join(folder, "data"), file_name=lambda i: names[i])
    link = os.path.join(folder, "images_link")
    os.symlink(ds.img_dir, link)
    ds.img_dir = link
    args = train_args(ctx, os.path.join(folder, "w"), "--config.solver.max_iter=2",
                      "--config.solver.ims_per_batch=4", train=ds)
    ctx.record(folder, args)
    res = run_main(args, os.path.join(folder, "out.txt"), 180)
    if res.rc == 0 and re.search(r"bad_image\"?: [1-9]|skipped \d+ (bad )?image", res.out):
        res.problems.append(("silently-wrong", "an image with an odd name was skipped"))
    return res


def _del_keys(*keys):
    def edit(ds):
        for a in ds.js["annotations"]:
            for k in keys:
                a.pop(k, None)

    return edit


def _set_ann(key, value, i=1):
    def edit(ds):
        ds.js["annotations"][i][key] = value

    return edit


def _cats(cats):
    def edit(ds):
        ds.js["categories"] = [{"id": c, "name": n} for c, n in cats]
        known = {c for c, _ in cats}
        ds.js["annotations"] = [a for a in ds.js["annotations"] if a["category_id"] in known]

    return edit


def _flat_polygon(ds):
    a = ds.js["annotations"][1]
    a["segmentation"] = a["segmentation"][0]  # [x1, y1, x2, y2, ...]: a common hand edit
    ds.write()


def _wrong_img_dir(ds):
    ds.img_dir = os.path.join(os.path.dirname(ds.ann_file), "wrong_images")
    os.makedirs(ds.img_dir, exist_ok=True)


def _trailing_comma(ds):
    text = json.dumps(ds.js, indent=2)
    text = text.replace('"iscrowd": 0,', '"iscrowd": 0,,', 1)
    ds.write(text)
    return False


def cases() -> list[CliCase]:
    """The catalogue of outside-in cases, the shared model's training first."""
    c: list[CliCase] = [
        CliCase("train: category ids 7/42/1000, a unicode name, final eval", "exporters", "runs",
                train_model, check=ids_within(TRAIN_IDS)),
        exporter_case("labelme2coco export (ids from 0, _background_, JPEGImages/)",
                      labelme_dataset, {1, 2}, num_classes=3),
        exporter_case("CVAT COCO 1.0 export (attributes, box-only rectangles, .PNG)",
                      cvat_dataset, {1, 2}, num_classes=3),
        exporter_case("Roboflow COCO export (group category 0, no area / iscrowd)",
                      roboflow_dataset, {1, 2}, num_classes=3),
        exporter_case("hand-edited json saved with a UTF-8 BOM", hand_dataset, TRAIN_IDS,
                      edit=lambda ds: ds.write(bom=True)),
        CliCase("polygon written flat, not as a list of lists (hand edit)", "exporters", "error",
                simple(lambda ctx, f: train_args(ctx, os.path.join(f, "w"), train=_edited(
                    os.path.join(f, "data"), _flat_polygon)), 120),
                ("instances.json", "annotation 502")),
        CliCase("hand-edited json with a trailing comma", "exporters", "error",
                simple(lambda ctx, f: train_args(ctx, os.path.join(f, "w"), train=_edited(
                    os.path.join(f, "data"), _trailing_comma)), 90),
                ("instances.json", "line"), fast=True),
        CliCase("real-world file names: symlinked folder, .JPG, spaces, unicode", "images",
                "runs", file_names_case),
        CliCase("a FIFO among the training images (must not hang)", "images", "runs",
                fifo_in_training, ("001.png",)),
        CliCase("unreadable image, on_bad_image=fail, num_workers=2", "images", "error",
                unreadable_with_workers("fail"), ("001.png", "image id 2")),
        CliCase("unreadable image, on_bad_image=skip (default), num_workers=2", "images", "runs",
                unreadable_with_workers("skip"), ("001.png",)),
        # val sets, evaluated with the shared model
        eval_case("val json with an extra category (listed first)",
                  _cats([(5, "bird"), *TRAIN_CATS])),
        eval_case("val json without one of the training categories", _cats(TRAIN_CATS[:2])),
        eval_case("val annotations without area / iscrowd", _del_keys("area", "iscrowd")),
        eval_case("val json with a UTF-8 BOM", lambda ds: {"bom": True}),
        eval_case("val annotation with garbage RLE counts", _set_ann(
            "segmentation", {"size": [SIZE, SIZE], "counts": "~~garbage~~"}), "error",
            ("val.json", "annotation 502")),
        eval_case("val garbage RLE with on_bad_annotation=skip", _set_ann(
            "segmentation", {"size": [SIZE, SIZE], "counts": "~~garbage~~"}),
            over=("--config.data.on_bad_annotation=skip",)),
        eval_case("val polygon with NaN", _set_ann("segmentation", [[1, 2, float("nan"), 4, 9, 9]]),
                  "error", ("val.json", "annotation 502")),
        eval_case("val polygon with 2 points", _set_ann("segmentation", [[1, 2, 10, 12]]),
                  "error", ("val.json", "annotation 502")),
        eval_case("val set with images but no annotations",
                  lambda ds: ds.js.__setitem__("annotations", []), check=lambda *a: None),
        eval_case("val img_dir points at the wrong (empty) folder", _wrong_img_dir, "error",
                  ("wrong_images|000.png",)),
        eval_case("empty val set (no images)",
                  lambda ds: ds.js.update(images=[], annotations=[]), "error", ("val.json",)),
        # predict with the shared model
        predict_case("predict without the training json (table from the checkpoint)",
                     lambda f: _pred_folder(f, ["a.png", "b.png"]), n_expected=2,
                     over=("--config.data.train.img_dir=/nonexistent/images",
                           "--config.data.train.ann_file=/nonexistent/train.json")),
        predict_case("a 4000x1 strip among the predict images",
                     lambda f: _pred_folder(f, ["a.png", "b.png"], _strip),
                     check=_all_or_named(["a.png", "b.png"], "strip_4000x1.png")),
        predict_case("predict folder: symlink, .JPG, spaces and unicode in names",
                     lambda f: _pred_folder(f, ["IMG 01.JPG", "снимок 2.jpeg", "c.PNG"],
                                            link=True),
                     n_expected=3),
        predict_case("a FIFO in the predict folder (must not hang)",
                     lambda f: _pred_folder(f, ["a.png", "b.png"], _fifo),
                     check=_all_or_named(["a.png", "b.png"], "dead_mount.png")),
        predict_case("predict on an empty folder", lambda f: _pred_folder(f, []), ("input",),
                     expect="error"),
        # signals, workdirs, resume
        CliCase("SIGTERM to the process group during training (1 loader worker)", "signals",
                "runs", sigterm_group),
        CliCase("Ctrl-C (SIGINT to the group) during eval", "signals", "error", ctrl_c_in_eval,
                rcs=(1, 2, 130, -signal.SIGINT), needs_model=True),
        CliCase("two trainings on one workdir", "workdir", "error", two_trainings, ("pid",)),
        CliCase("disk full during the second checkpoint", "workdir", "error", full_disk,
                ("No space left|disk is full|disk full",), needs_model=True),
        CliCase("workdir is a file", "workdir", "error",
                simple(lambda ctx, f: train_args(ctx, _touch(os.path.join(f, "w"))), 90),
                ("--workdir",), fast=True),
        CliCase("workdir is read-only", "workdir", "error", readonly_workdir, ("--workdir",)),
        CliCase("resume after changing solver.optimizer", "resume", "error",
                resume_other_optimizer, ("solver.optimizer",), needs_model=True),
        CliCase("resume from a weights-only file", "resume", "error", resume_weights_only,
                ("model_0000002.pth",), needs_model=True),
        CliCase("smoke run: configs/shapes.py with solver.max_iter=40", "config", "runs",
                smoke_run, ("warmup_iters",)),
        # config values
        config_error("log_period=0", "--config.log_period=0", key="log_period"),
        config_error("data.num_workers=-1", "--config.data.num_workers=-1",
                     key="data.num_workers"),
        config_error("input.min_size_train=()", "--config.input.min_size_train=()",
                     key="input.min_size_train"),
        config_error("unknown solver.warmup_method", "--config.solver.warmup_method=cosine",
                     key="solver.warmup_method"),
        config_error("model.box_head.pooler_resolution=0",
                     "--config.model.box_head.pooler_resolution=0",
                     key="model.box_head.pooler_resolution"),
        config_error("eval.period=-1", "--config.eval.period=-1", key="eval.period"),
        config_error("a typo in the config argument (shapes.py:tinyy)", key="tinyy", rcs=(1, 2),
                     config="configs/shapes.py:tinyy"),
        config_error("a typo in a config key (solver.base_lrr)", "--config.solver.base_lrr=0.1",
                     key="base_lrr", rcs=(1, 2)),
        config_error("model.num_classes smaller than the categories",
                     "--config.model.num_classes=2", key="model.num_classes", fast=False),
        CliCase("device=cuda without a GPU", "config", "error",
                simple(_cuda_args, 90), ("device",), fast=True),
        CliCase("data.train.ann_file is a folder", "config", "error",
                simple(lambda ctx, f: train_args(ctx, os.path.join(f, "w"),
                       f"--config.data.train.ann_file={ctx.hand.img_dir}"), 90),
                ("images",), fast=True),
        CliCase("init.weights names a file that does not exist", "config", "error",
                simple(lambda ctx, f: train_args(ctx, os.path.join(f, "w"),
                       f"--config.init.weights={os.path.join(f, 'no_such_model.pth')}"), 90),
                ("no_such_model.pth",), fast=True),
        CliCase("train with a val json that does not exist (fails before training?)", "config",
                "error", simple(lambda ctx, f: train_args(
                    ctx, os.path.join(f, "w"), "--config.eval.final=True",
                    f"--config.data.val.ann_file={os.path.join(f, 'no_such_val.json')}"), 120),
                ("no_such_val.json",), check=_before_training),
        CliCase("eval with no checkpoint and no init.weights", "config", "error",
                simple(lambda ctx, f: [f"--config={TINY}", "--mode=eval",
                       f"--workdir={os.path.join(f, 'w')}", *data_args(ctx.hand, ctx.hand)], 90),
                ("init.weights",), fast=True),
    ]
    return c


def _before_training(ctx, folder, res):
    """A val set that cannot be read is reported before the training, not after it."""
    if re.search(r"iter: \d+ ", res.out):
        return ("wrong-error", "reported only after training: " + _short(error_line(res.out), 90))
    return None


def _edited(folder: str, edit: Callable[[Dataset], Any]) -> Dataset:
    ds = hand_dataset(folder)
    edit(ds)
    return ds


def _touch(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write("not a folder\n")
    return path


def _cuda_args(ctx: Ctx, folder: str) -> list[str]:
    import torch

    if torch.cuda.is_available():
        raise Skip("a GPU is present")
    return train_args(ctx, os.path.join(folder, "w"), "--config.device=cuda")


# --------------------------------------------------------------------------- running them
def run_one(ctx: Ctx, case: CliCase, folder: str) -> Outcome:
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    t0 = time.monotonic()
    try:
        res = case.run(ctx, folder)
    except Skip as e:
        return Outcome(case, "skipped", str(e), time.monotonic() - t0)
    cls, detail = classify(case, ctx, folder, res)
    return Outcome(case, cls, detail, res.wall_s, ctx.commands.get(folder, ""))


def run_cases(work: str, selected: list[CliCase] | None = None, jobs: int = 2,
              report: Callable[[str], None] | None = None) -> list[Outcome]:
    """Runs the cases (the shared model's training first when a selected case needs it), `jobs`
    at a time; returns their outcomes in catalogue order."""
    ctx = Ctx(work)
    all_cases = cases()
    selected = all_cases if selected is None else selected
    index = {cs.name: i for i, cs in enumerate(all_cases)}
    folders = {id(cs): os.path.join(work, "cases", f"{index.get(cs.name, 99):02d}_{_slug(cs.name)}")
               for cs in selected}
    out: dict[int, Outcome] = {}
    first = next((cs for cs in selected if cs.name == all_cases[0].name), all_cases[0])
    if any(cs.needs_model for cs in selected) or first in selected:
        out[id(first)] = run_one(ctx, first, ctx.model_dir)
        if report:
            report(_line(out[id(first)]))
    rest = [cs for cs in selected if cs is not first]
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        futs = {pool.submit(run_one, ctx, cs, folders[id(cs)]): cs for cs in rest}
        for f in concurrent.futures.as_completed(futs):
            o = f.result()
            out[id(futs[f])] = o
            if report:
                report(_line(o))
    return [out[id(cs)] for cs in selected if id(cs) in out]


def _line(o: Outcome) -> str:
    return f"  {o.cls:14s} {o.wall_s:5.0f} s  {o.case.name}: {_short(o.detail, 110)}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:40]


def by_class(outcomes: list[Outcome]) -> dict[str, int]:
    return {k: sum(o.cls == k for o in outcomes) for k in CLASSES}
