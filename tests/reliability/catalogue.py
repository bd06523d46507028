"""The fault catalogue: the tiny config of the fault runs, helpers that run `main.py` and inspect
its workdir, the bad-input cases with the small COCO datasets they damage, and the checkpoint
corruption cases. The tests in tests/ import it from here; `python -m bench.faults` (the
campaign) runs all of it, plus the kill -9 rounds and the outside-in cases of `cli_cases.py`.

Bad inputs: each case damages a small COCO-format dataset (image files, annotation json) and
loads it through the real train loader with `data.on_bad_*` = fail and = skip; the case is
handled when it loads correctly (pixels under the boxes), is skipped and counted, or fails with
our error type naming the file (and the image and annotation ids for a record).

Checkpoint corruption: truncated, zero-byte, bit-flipped, pickled-code, missing and mis-pointed
checkpoints and a full disk while saving; each must resume from the newest good checkpoint (with
a warning) or stop with a clear error, never run code or lose a checkpoint.

This file is also the config those runs use:
`python main.py --config=tests/reliability/catalogue.py:root=DIR,max_iter=6 --mode=train
--workdir=W`, and, as `python -m tests.reliability.catalogue --die-in-save N -- ARGS`, a main.py
run that SIGKILLs itself half-way through its Nth torch.save.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import glob
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THIS_CONFIG = os.path.relpath(os.path.abspath(__file__), REPO)

# --------------------------------------------------------------------------- the tiny config
def tiny_config(root: str = "", max_iter: int = 6) -> ml_collections.ConfigDict:
    """shapes:runlocal at 64 px with a width-16 R18: ~0.1 s a step on 2 idle CPU cores.

    deterministic=True, one checkpoint per step (so random kills often land in a write), no
    evaluation. root: the data root (the shapes dataset is generated there on first use).
    """
    from configs import shapes

    c = shapes.get_config("tiny")
    if root:
        c.data.root = root
    c.solver.ims_per_batch = 2
    c.solver.max_iter = max_iter
    c.solver.steps = (max(3, max_iter - 2),)
    c.solver.warmup_iters = 2
    c.solver.checkpoint_period = 1
    c.log_period = 1
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`--config=tests/reliability/catalogue.py:root=DIR,max_iter=N`: the tiny config."""
    from configs import common

    opts = common.parse_arg(arg, root="", max_iter=6)
    return tiny_config(opts.root, opts.max_iter)


# --------------------------------------------------------------------------- running main.py
def main_argv(root: str, workdir: str, max_iter: int, *overrides: str) -> list[str]:
    """The command line of a training run of the tiny config (run it with cwd=REPO)."""
    return [
        sys.executable,
        "main.py",
        f"--config={THIS_CONFIG}:root={root},max_iter={max_iter}",
        "--mode=train",
        f"--workdir={workdir}",
        *overrides,
    ]


def die_in_save_argv(nth_save: int, argv: list[str]) -> list[str]:
    """`argv` (from `main_argv`) run so that the process SIGKILLs itself half-way through
    writing its `nth_save`-th torch.save (a checkpoint write cut short, deterministically)."""
    return [
        sys.executable,
        "-m",
        "tests.reliability.catalogue",
        "--die-in-save",
        str(nth_save),
        "--",
        *argv[2:],
    ]


def child_env(threads: int = 2) -> dict[str, str]:
    """Environment of the runs: a fixed thread count (float reductions, hence bitwise results,
    depend on it) and no $MRCNN_DATA (it would override the data root we pass)."""
    env = dict(os.environ)
    env.pop("MRCNN_DATA", None)
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def spawn(argv: list[str], log_path: str, env: dict[str, str]) -> subprocess.Popen:
    out = open(log_path, "ab")
    try:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()  # the child holds its own descriptor


def wait_for_line(
    proc: subprocess.Popen, log_path: str, pattern: str, timeout: float, poll_s: float = 0.01
) -> bool:
    """Polls `log_path` until a line matches `pattern` (True) or the process exits (False)."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log_path, errors="replace") as f:
            if rx.search(f.read()):
                return True
        if proc.poll() is not None:
            return False
        time.sleep(poll_s)
    raise TimeoutError(f"no line matching {pattern!r} in {log_path} after {timeout:.0f} s")


def wait_for_write(proc: subprocess.Popen, workdir: str, timeout: float) -> bool:
    """Polls `workdir` until a checkpoint write starts (a new temporary file: True) or the
    process exits (False)."""
    before = set(tmp_leftovers(workdir)) if os.path.isdir(workdir) else set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isdir(workdir) and set(tmp_leftovers(workdir)) - before:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    raise TimeoutError(f"no checkpoint write in {workdir} after {timeout:.0f} s")


def resumed_at(text: str) -> int | None:
    """The iteration a run's log says it resumed from (None: it started from scratch)."""
    m = re.findall(r"resumed from \S+ at iteration (\d+)", text)
    return int(m[-1]) if m else None


def tmp_leftovers(workdir: str) -> list[str]:
    """Temporary files of checkpoint writes that never finished (a kill during a save)."""
    return sorted(n for n in os.listdir(workdir) if n.startswith(".") and n.endswith(".tmp"))


def states_equal(a: dict, b: dict) -> bool:
    """Bitwise equality of two checkpoints' model weights and optimizer state."""
    import torch

    def flat(x: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(x, dict):
            return {k2: v2 for k, v in x.items() for k2, v2 in flat(v, f"{prefix}{k}.").items()}
        if isinstance(x, (list, tuple)):
            return {k2: v2 for i, v in enumerate(x) for k2, v2 in flat(v, f"{prefix}{i}.").items()}
        return {prefix: x}

    fa, fb = (
        flat({"m": a["model"], "o": a["optimizer"]}),
        flat({"m": b["model"], "o": b["optimizer"]}),
    )
    if fa.keys() != fb.keys():
        return False
    for k, va in fa.items():
        vb = fb[k]
        if isinstance(va, torch.Tensor):
            if not (
                isinstance(vb, torch.Tensor)
                and va.shape == vb.shape
                and va.dtype == vb.dtype
                and torch.equal(va, vb)
            ):
                return False
        elif va != vb:
            return False
    return True


def inspect_workdir(workdir: str) -> dict[str, Any]:
    """What a restart would find: the iteration `load_latest` resumes from (-1: none), whether
    `last_checkpoint` names a file that loads, leftover temporary files."""
    from mrcnn.engine import checkpoint

    with _quiet():
        pointer = checkpoint.find_last(workdir)
        pointer_ok = True
        if pointer is not None:
            try:
                checkpoint.load(pointer)
            except Exception:
                pointer_ok = False
        found = checkpoint.load_latest(workdir)
    return {
        "iteration": -1 if found is None else int(found[0]["iteration"]),
        "pointer_ok": pointer_ok,
        "tmp": tmp_leftovers(workdir),
    }


def run_in_process(mode: str, config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """`runner.run` as main.py calls it, in this process: None when the run succeeds, else the
    one line main.py would print for a user error (other exceptions propagate: main.py would
    show them with a traceback). The root logger's handlers, which `runner.run` replaces, are
    put back afterwards."""
    from mrcnn.engine import runner

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        runner.run(mode, config, workdir)
        return None
    except runner.UserError as e:
        return f"UserError: {e}"
    finally:
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)


@contextlib.contextmanager
def _quiet():
    """Silences our loggers below ERROR (the catalogue triggers hundreds of expected warnings)."""
    logger = logging.getLogger("mrcnn")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)



# --------------------------------------------------------------------------- 2. bad inputs
ANN = "ann.json"
SIZE = 64
BRIGHT, DARK = (230, 210, 190), (30, 25, 20)


def square(i: int) -> tuple[int, int, int]:
    """[x, y, side] of image i's square: in the top-left quarter, so a rotation moves it."""
    return 4 + 4 * (i % 4), 6 + 2 * (i % 5), 16


def write_coco(folder: str, n: int = 4) -> tuple[str, str, dict]:
    """A clean n-image COCO dataset: 64x64 RGB PNGs, dark noise with one bright square each,
    annotated by its polygon; categories 1..3. Returns (img_dir, ann_file, the json dict)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img_dir = os.path.join(folder, "images")
    os.makedirs(img_dir, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        x, y, s = square(i)
        arr = (np.array(DARK) + rng.integers(-10, 10, (SIZE, SIZE, 3))).astype(np.uint8)
        arr[y : y + s, x : x + s] = BRIGHT
        name = f"{i:03d}.png"
        Image.fromarray(arr).save(os.path.join(img_dir, name))
        images.append({"id": i + 1, "file_name": name, "height": SIZE, "width": SIZE})
        anns.append(
            {
                "id": 100 + i,
                "image_id": i + 1,
                "category_id": 1 + i % 3,
                "iscrowd": 0,
                "bbox": [x, y, s, s],
                "area": s * s,
                "segmentation": [[x, y, x + s, y, x + s, y + s, x, y + s]],
            }
        )
    cats = [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}, {"id": 3, "name": "triangle"}]
    return (
        img_dir,
        os.path.join(folder, ANN),
        {"images": images, "annotations": anns, "categories": cats},
    )


@dataclasses.dataclass
class Expect:
    """error: the load must raise one of our errors whose message holds every needle;
    otherwise it must load, with bad_counts[k] > 0 for every needle (a drop was counted)."""

    error: bool
    needles: tuple[str, ...] = ()


LOADS = Expect(False)


def _err(*needles: str) -> Expect:
    """An annotation-file error: names the file, and what else is given."""
    return Expect(True, (ANN, *needles))


def _img_err(*needles: str) -> Expect:
    """An image error: names the image file (needles), not the json."""
    return Expect(True, needles)


class RawJson(bytes):
    """Returned by a mutation: the exact bytes to write as the annotation file."""


NO_JSON = RawJson(b"")  # returned (by identity) when the annotation file must not exist


@dataclasses.dataclass
class Case:
    name: str
    # Changes (json dict, img_dir) in place; a RawJson result replaces the annotation file.
    mutate: Callable[[dict, str], Any]
    fail: Expect  # with data.on_bad_annotation = data.on_bad_image = "fail"
    skip: Expect  # with both "skip"
    # Extra check of what loaded: (batches, dataset) -> a problem, or None.
    check: Callable[[list, Any], str | None] | None = None


def _reformat(
    img_dir: str, data: dict, index: int, convert: Callable, ext: str = ".png", **save_kw
) -> None:
    """Rewrites image `index` through `convert(PIL image) -> PIL image` as `ext`."""
    from PIL import Image

    old = os.path.join(img_dir, data["images"][index]["file_name"])
    img = convert(Image.open(old).convert("RGB"))
    os.remove(old)
    name = f"{index:03d}{ext}"
    img.save(os.path.join(img_dir, name), **save_kw)
    data["images"][index]["file_name"] = name


def _to_16bit(img):
    from PIL import Image

    a = np.asarray(img.convert("L")).astype(np.uint16) * 257
    return Image.fromarray(a)  # mode I;16


def _exif_rotated(img_dir: str, data: dict, index: int = 0) -> None:
    """Image `index` stored on its side with EXIF orientation 6 (display = rotate 90 degrees
    clockwise), the way a phone saves a portrait photo; the annotation is in display
    coordinates."""
    from PIL import Image

    def convert(img):
        return img.transpose(Image.Transpose.ROTATE_90)  # exif_transpose undoes this

    exif = Image.Exif()
    exif[0x0112] = 6
    _reformat(img_dir, data, index, convert, ".jpg", exif=exif, quality=95)


def _many_instances(img_dir: str, data: dict) -> None:
    """Image 0 with 300 bright 2x2 squares (a dense crowd of small objects), 300 annotations."""
    from PIL import Image

    arr = np.full((SIZE, SIZE, 3), DARK, np.uint8)
    anns = [a for a in data["annotations"] if a["image_id"] != 1]
    k = 0
    for gy in range(15):
        for gx in range(20):
            x, y = 2 + 3 * gx, 2 + 4 * gy
            arr[y : y + 2, x : x + 2] = BRIGHT
            anns.append(
                {
                    "id": 1000 + k,
                    "image_id": 1,
                    "category_id": 1 + k % 3,
                    "iscrowd": 0,
                    "bbox": [x, y, 2, 2],
                    "area": 4,
                    "segmentation": [[x, y, x + 2, y, x + 2, y + 2, x, y + 2]],
                }
            )
            k += 1
    Image.fromarray(arr).save(os.path.join(img_dir, data["images"][0]["file_name"]))
    data["annotations"] = anns


SENTINEL = "FAULTS_SENTINEL"


def _code_strings(img_dir: str, data: dict) -> None:
    """Strings that would run code if anything evaluated them (Python, shell, templates)."""
    evil_name = "$(touch " + SENTINEL + ");`touch " + SENTINEL + "`.png"
    os.rename(
        os.path.join(img_dir, data["images"][0]["file_name"]), os.path.join(img_dir, evil_name)
    )
    data["images"][0]["file_name"] = evil_name
    data["categories"][0]["name"] = f"__import__('os').system('touch {SENTINEL}')"
    data["categories"][1]["name"] = "{{ 7*7 }} ${jndi:ldap://x/a} !!python/object/apply:os.system"
    data["annotations"][0]["note"] = {"__class__": "os.system", "__reduce__": ["touch", SENTINEL]}
    data["info"] = {"description": "eval(compile('1', 'x', 'eval'))"}


def _check_code_strings(folder: str) -> Callable[[list, Any], str | None]:
    def check(batches, dataset) -> str | None:
        if glob.glob(os.path.join(folder, "**", SENTINEL), recursive=True) or os.path.exists(
            os.path.join(REPO, SENTINEL)
        ):
            return "a string in the json was executed"
        if not dataset.meta.names[0].startswith("__import__('os')"):
            return f"category name changed: {dataset.meta.names[0]!r}"
        names = {i.file_name for b in batches for i in b.infos}
        if not any(n.startswith("$(touch") for n in names):
            return "the image with the odd file name was not loaded verbatim"
        return None

    return check


def _centres_bright(batches, dataset) -> str | None:
    """Every target box sits on bright pixels and every image has dark background: decoding,
    orientation, resizing and flipping kept the boxes on their objects."""
    for b in batches:
        for img, (h, w), t, info in zip(b.images.tensor, b.images.image_sizes, b.targets, b.infos):
            img = img[:, :h, :w].mean(0)
            if not (img < 0).float().mean() > 0.5:
                return f"{info.file_name}: no dark background after decoding"
            for x1, y1, x2, y2 in t.boxes.tolist():
                cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
                if img[cy, cx] <= 0.5:
                    return f"{info.file_name}: box centre ({cx}, {cy}) is not on the object"
    return None


def _count_instances(n: int) -> Callable:
    def check(batches, dataset) -> str | None:
        counts = {i.image_id: len(t.labels) for b in batches for i, t in zip(b.infos, b.targets)}
        if counts.get(1) != n:
            return f"image 1 has {counts.get(1)} instances, expected {n}"
        return _centres_bright(batches, dataset)

    return check


def _ann(i: int) -> Callable[[Callable[[dict], None]], Callable[[dict, str], None]]:
    """Mutates annotation i (image i + 1, annotation id 100 + i)."""
    return lambda f: lambda d, _: f(d["annotations"][i])


def _nested(depth: int) -> str:
    return '{"images": ' + "[" * depth + "]" * depth + "}"


def bad_input_cases(folder: str) -> list[Case]:
    """The catalogue. Annotation records damaged are those of image 2 (annotation 101)."""
    a1 = _ann(1)
    rec = ("image 2", "annotation 101")  # what a record error must name (besides the file)

    def set_(key, value):
        return a1(lambda a: a.__setitem__(key, value))

    def pop(key):
        return a1(lambda a: a.pop(key))

    def image_file(fn):
        return lambda d, img_dir: fn(os.path.join(img_dir, d["images"][1]["file_name"]), img_dir)

    def raw(text: str | bytes):
        return lambda d, _: RawJson(text.encode() if isinstance(text, str) else text)

    def all_bad(d, _):
        for a in d["annotations"]:
            a["category_id"] = 99

    def write_bytes(data: bytes):
        return image_file(lambda p, _: open(p, "wb").write(data))

    def truncate(p, _):
        data = open(p, "rb").read()
        open(p, "wb").write(data[: len(data) // 2])

    def replace_by_dir(p, _):
        os.remove(p)
        os.mkdir(p)

    def small_image(p, _):
        from PIL import Image

        Image.new("RGB", (32, 32)).save(p)

    def jpeg_named_png(d, img_dir):
        from PIL import Image

        p = os.path.join(img_dir, d["images"][1]["file_name"])
        Image.open(p).convert("RGB").save(p, format="JPEG", quality=95)

    def unicode_name(d, img_dir):
        name = "图像 one.png"
        os.rename(os.path.join(img_dir, d["images"][1]["file_name"]), os.path.join(img_dir, name))
        d["images"][1]["file_name"] = name

    def extra_keys(d, _):
        d["licenses"] = [{"id": 1}]
        d["images"][1]["coco_url"] = "http://x"
        d["annotations"][1]["extra"] = [1, {"a": None}]
        d["categories"][0]["supercategory"] = "shape"

    def dup_image_id(d, _):
        d["images"][2]["id"] = 2

    def fmt(index, convert, ext=".png", **kw):
        return lambda d, img_dir: _reformat(img_dir, d, index, convert, ext, **kw)

    def loads(name, mutate, check=_centres_bright):  # in both modes, boxes on the objects
        return Case(name, mutate, LOADS, LOADS, check)

    def unreadable(name, mutate, *needles):  # fail: names the file; skip: replaced, counted
        return Case(name, mutate, _img_err("001.png", *needles), Expect(False, ("bad_image",)))

    def bad_record(name, mutate, *needles, where=rec, kind="bad_annotation"):
        return Case(name, mutate, _err(*where, *needles), Expect(False, (kind,)))

    def dropped(name, mutate, kind):  # never an error: dropped and counted in both modes
        return Case(name, mutate, Expect(False, (kind,)), Expect(False, (kind,)))

    def unusable(name, mutate, needle, skip_needle=None):  # an error in both modes
        return Case(name, mutate, _err(needle), _err(skip_needle or needle))

    img2 = ("image 2",)
    return [
        loads("grayscale PNG", fmt(0, lambda im: im.convert("L"))),
        loads("RGBA PNG", fmt(0, lambda im: (im.putalpha(90), im)[1])),
        loads("palette PNG", fmt(0, lambda im: im.convert("P"))),
        loads("16-bit grayscale PNG", fmt(0, _to_16bit)),
        loads("CMYK JPEG", fmt(0, lambda im: im.convert("CMYK"), ".jpg", quality=95)),
        loads("EXIF-rotated JPEG", lambda d, img_dir: _exif_rotated(img_dir, d)),
        loads("JPEG content in a .png file", jpeg_named_png),
        loads("unicode file name", unicode_name),
        loads(
            "300 instances in one image",
            lambda d, img_dir: _many_instances(img_dir, d),
            _count_instances(300),
        ),
        loads(
            "code-like strings in the json",
            lambda d, img_dir: _code_strings(img_dir, d),
            _check_code_strings(folder),
        ),
        loads("unknown extra keys", extra_keys),
        unreadable("missing image file", image_file(lambda p, _: os.remove(p))),
        unreadable("zero-byte image file", write_bytes(b"")),
        unreadable("random bytes as image", write_bytes(os.urandom(3000))),
        unreadable("truncated PNG", image_file(truncate)),
        unreadable("a directory instead of an image", image_file(replace_by_dir)),
        unreadable("image size differs from the json", image_file(small_image), "does not match"),
        bad_record("annotation without bbox", pop("bbox"), "bbox"),
        bad_record("annotation without segmentation", pop("segmentation"), "segmentation"),
        bad_record("annotation without category_id", pop("category_id"), "category_id"),
        bad_record(
            "annotation without image_id", pop("image_id"), "image_id", where=("annotation 101",)
        ),
        bad_record("category id not in categories", set_("category_id", 99), "99"),
        bad_record(
            "image id not in images", set_("image_id", 77), "image 77", where=("annotation 101",)
        ),
        bad_record("annotation id is a string", set_("id", "101"), where=("annotation '101'",)),
        bad_record("duplicate annotation id", set_("id", 100), "twice", where=("annotation 100",)),
        bad_record("bbox with NaN", set_("bbox", [1, 2, float("nan"), 3]), "NaN"),
        bad_record("bbox with Infinity", set_("bbox", [1, 2, float("inf"), 3]), "NaN"),
        bad_record("bbox of strings", set_("bbox", ["1", "2", "3", "4"]), "bbox"),
        bad_record("bbox with 3 numbers", set_("bbox", [1, 2, 3]), "4 numbers"),
        bad_record(
            "polygon with NaN", set_("segmentation", [[1, 2, float("nan"), 4, 5, 6]]), "NaN"
        ),
        bad_record(
            "polygon with 2 points", set_("segmentation", [[1, 2, 10, 12]]), "fewer than 3 points"
        ),
        bad_record("polygon with an odd length", set_("segmentation", [[1, 2, 10, 12, 5]]), "odd"),
        bad_record(
            "polygon far outside the image",
            set_("segmentation", [[1e6, 0, 2e6, 0, 2e6, 9]]),
            "outside",
        ),
        bad_record("segmentation is a string", set_("segmentation", "polygon"), "segmentation"),
        bad_record(
            "RLE of the wrong size",
            set_("segmentation", {"size": [3, 3], "counts": "a0"}),
            "RLE size",
        ),
        bad_record(
            "RLE with garbage counts",
            set_("segmentation", {"size": [SIZE, SIZE], "counts": "~~"}),
            "RLE counts",
        ),
        bad_record("iscrowd = 5", set_("iscrowd", 5), "iscrowd"),
        bad_record(
            "image record without height",
            lambda d, _: d["images"][1].pop("height"),
            "height",
            where=img2,
            kind="bad_image_record",
        ),
        bad_record(
            "image with negative width",
            lambda d, _: d["images"][1].update(width=-64),
            "width",
            where=img2,
            kind="bad_image_record",
        ),
        bad_record(
            "image record without file_name",
            lambda d, _: d["images"][1].pop("file_name"),
            "file_name",
            where=img2,
            kind="bad_image_record",
        ),
        bad_record(
            "duplicate image id", dup_image_id, "twice", where=img2, kind="bad_image_record"
        ),
        dropped("zero-width box", set_("bbox", [5, 5, 0, 10]), "zero_size_box"),
        dropped("negative-size box", set_("bbox", [20, 20, -5, -5]), "zero_size_box"),
        dropped("box outside the image", set_("bbox", [70, 70, 5, 5]), "zero_size_box"),
        dropped(
            "polygon with an extra 2-point part",
            a1(lambda a: a["segmentation"].append([1, 1, 2, 2])),
            "degenerate_polygon_part",
        ),
        dropped("crowd annotation", set_("iscrowd", 1), "crowd"),
        unusable("truncated json", raw('{"images": [{"id": 1, "file_'), "not valid JSON"),
        unusable("empty json file", raw(""), "not valid JSON"),
        unusable("json that is not UTF-8", raw(b"\xff\xfe\x00garbage"), "not valid JSON"),
        unusable("json nested 100000 deep", raw(_nested(100000)), "nested"),
        unusable("top level is a list", raw("[]"), "top level"),
        unusable("no 'images'", lambda d, _: d.pop("images"), "'images'"),
        unusable("no 'annotations'", lambda d, _: d.pop("annotations"), "'annotations'"),
        unusable("no 'categories'", lambda d, _: d.pop("categories"), "'categories'"),
        unusable(
            "duplicate category id", lambda d, _: d["categories"][1].update(id=1), "category id 1"
        ),
        unusable("every annotation bad", all_bad, "annotation 100", "no training image"),
        Case(
            "annotation file missing", lambda d, _: NO_JSON, *[Expect(True, ("not found", ANN))] * 2
        ),
        Case(
            "image folder missing",
            lambda d, img_dir: shutil.rmtree(img_dir),
            *[Expect(True, ("not found", "images"))] * 2,
        ),
    ]


def _load_case(folder: str, img_dir: str, ann_file: str, mode: str) -> tuple[list, Any]:
    """Loads the dataset through the real train loader, three epochs' worth of batches."""
    from mrcnn import data

    c = tiny_config(os.path.join(folder, "root"))
    c.data.train = ml_collections.ConfigDict({"name": "", "img_dir": img_dir, "ann_file": ann_file})
    c.data.on_bad_annotation = mode
    c.data.on_bad_image = mode
    loader = data.build_train_loader(c)
    n = 3 * max(1, len(loader.dataset) // c.solver.ims_per_batch)
    return [next(loader) for _ in range(n)], loader.dataset


def run_case(case: Case, folder: str) -> list[tuple[str, str, bool]]:
    """(mode, outcome, as expected) for mode fail and skip, each on a fresh copy of the data."""
    from mrcnn import config_check, data

    ours = (
        data.AnnotationError,
        data.ImageError,
        data.DatasetMissingError,
        config_check.ConfigError,
    )
    rows = []
    for mode, want in (("fail", case.fail), ("skip", case.skip)):
        d = os.path.join(folder, mode)
        shutil.rmtree(d, ignore_errors=True)
        img_dir, ann_file, js = write_coco(d)
        text = case.mutate(js, img_dir)
        if text is NO_JSON:
            pass
        elif isinstance(text, RawJson):
            with open(ann_file, "wb") as f:
                f.write(text)
        else:
            with open(ann_file, "w") as f:
                json.dump(js, f)  # NaN / Infinity are written as the JSON extensions they are
        try:
            with _quiet():
                batches, dataset = _load_case(d, img_dir, ann_file, mode)
        except ours as e:
            msg = f"{type(e).__name__}: {e}"
            missing = [n for n in want.needles if n not in msg]
            ok = want.error and not missing
            outcome = _short(msg.replace(d + os.sep, ""), 110)
            if missing and want.error:
                outcome += f"  [missing {missing}]"
            rows.append((mode, outcome, ok))
            continue
        except Exception as e:  # anything else is a crash: not handled
            rows.append((mode, f"CRASH {type(e).__name__}: {_short(str(e), 90)}", False))
            continue
        counts = {k: v for k, v in dataset.bad_counts.items() if v}
        problem = None
        if want.error:
            problem = "loaded, expected an error"
        elif any(not counts.get(k) for k in want.needles):
            problem = f"counts {counts}, expected {list(want.needles)}"
        elif case.check is not None:
            problem = case.check(batches, dataset)
        outcome = "loads" + (f", counted {counts}" if counts else "")
        rows.append((mode, outcome + (f"  [{problem}]" if problem else ""), problem is None))
    return rows


def _short(s: str, n: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def bad_input_catalogue(work: str) -> list[tuple[str, list[tuple[str, str, bool]]]]:
    """Runs every case in `bad_input_cases`; returns (case name, run_case rows)."""
    out = []
    for i, case in enumerate(bad_input_cases(os.path.join(work, "catalogue"))):
        folder = os.path.join(work, "catalogue", f"{i:02d}")
        out.append((case.name, run_case(case, folder)))
    return out


# --------------------------------------------------------------------------- 3. checkpoints
def _ckpt_state(i: int) -> dict:
    import torch

    return {"model": {"w": torch.arange(4096, dtype=torch.float32) + i}, "iteration": i}


class _Evil:
    """Unpickling this runs `touch <path>`; a loader that allows it would create the file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _flip_tensor_byte(path: str) -> None:
    import struct

    data = bytearray(open(path, "rb").read())
    off = bytes(data).find(struct.pack("<f", 2002.0))  # inside model_0000002's tensor
    data[off] ^= 0x40
    open(path, "wb").write(bytes(data))


def checkpoint_cases(work: str) -> list[tuple[str, str, str, bool]]:
    """(case, expected, got, handled) for each corruption of a workdir holding checkpoints 1, 2.

    Expected: a restart resumes from the newest checkpoint that is intact (with a warning when
    a newer one was skipped), or stops with CheckpointError when none is; a failed save raises
    and leaves checkpoint 2 and its pointer intact; pickled code never runs.
    """
    import torch

    from mrcnn.engine import checkpoint

    base = os.path.join(work, "checkpoints")
    rows = []

    def setup(name: str) -> str:
        d = os.path.join(base, re.sub(r"\W+", "_", name))
        shutil.rmtree(d, ignore_errors=True)
        for i in (1, 2):
            checkpoint.save(d, _ckpt_state(i), i)
        return d

    def latest(d: str) -> tuple[str, bool]:
        """(what load_latest gave, whether it warned)."""
        handler = _ListHandler()
        logger = logging.getLogger(checkpoint.__name__)
        old = logger.level, logger.propagate
        logger.setLevel(logging.WARNING)
        logger.propagate = False  # captured here, not printed
        logger.addHandler(handler)
        try:
            found = checkpoint.load_latest(d)
        except checkpoint.CheckpointError as e:
            named = all(checkpoint.checkpoint_name(i) in str(e) for i in (1, 2))
            return (
                "CheckpointError naming both files"
                if named
                else f"CheckpointError: {_short(str(e), 60)}"
            ), bool(handler.records)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old[0])
            logger.propagate = old[1]
        got = "none" if found is None else f"iteration {found[0]['iteration']}"
        if found is not None and not torch.equal(
            found[0]["model"]["w"], _ckpt_state(found[0]["iteration"])["model"]["w"]
        ):
            got += " WITH CORRUPT WEIGHTS"
        return got, bool(handler.records)

    def case(
        name: str,
        expected: str,
        corrupt: Callable[[str], None],
        warn: bool = True,
        extra: Callable[[str], str | None] | None = None,
    ) -> None:
        d = setup(name)
        try:
            corrupt(d)
            got, warned = latest(d)
        except Exception as e:
            got, warned = f"CRASH {type(e).__name__}: {_short(str(e), 60)}", False
        problem = extra(d) if extra else None
        ok = got == expected and warned == warn and problem is None
        rows.append(
            (
                name,
                expected + (" + warning" if warn else ""),
                got + (" + warning" if warned else "") + (f" [{problem}]" if problem else ""),
                ok,
            )
        )

    p2 = lambda d: os.path.join(d, checkpoint.checkpoint_name(2))  # noqa: E731
    sentinel = os.path.join(base, "PWNED")

    def truncate(d):
        data = open(p2(d), "rb").read()
        open(p2(d), "wb").write(data[: len(data) // 2])

    def pickled_code(d):
        torch.save({"model": {"w": _Evil(sentinel)}, "iteration": 2}, p2(d))

    def no_side_effect(d):
        return "pickled code ran" if os.path.exists(sentinel) else None

    def pointer(text):
        return lambda d: open(os.path.join(d, checkpoint.POINTER), "w").write(text)

    def stale_tmp(d):
        for n in (".model_0000003.pth.abc123.tmp", ".last_checkpoint.xyz.tmp"):
            open(os.path.join(d, n), "wb").write(b"partial")

    def tmp_removed_by_next_save(d):
        checkpoint.save(d, _ckpt_state(3), 3)
        left = tmp_leftovers(d)
        return f"left behind: {left}" if left else None

    def all_corrupt(d):
        for i in (1, 2):
            open(os.path.join(d, checkpoint.checkpoint_name(i)), "wb").write(b"garbage")

    def full_disk(where: str):
        """save(3) with ENOSPC raised at `where`; must raise, leave 2 loadable, no tmp files."""

        def corrupt(d):
            err = OSError(errno.ENOSPC, "No space left on device")
            real_replace, real_save = os.replace, torch.save
            calls = {"n": 0}

            def bad_save(obj, f, *a, **k):
                f.write(b"partial")
                raise err

            def bad_replace(src, dst):
                calls["n"] += 1
                if (where == "rename" and calls["n"] == 1) or (
                    where == "pointer" and calls["n"] == 2
                ):
                    raise err
                return real_replace(src, dst)

            try:
                if where == "torch.save":
                    torch.save = bad_save
                else:
                    os.replace = bad_replace
                checkpoint.save(d, _ckpt_state(3), 3)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
            else:
                raise AssertionError("save did not report the full disk")
            finally:
                torch.save, os.replace = real_save, real_replace

        return corrupt

    def no_tmp(d):
        return f"left behind: {tmp_leftovers(d)}" if tmp_leftovers(d) else None

    case("intact", "iteration 2", lambda d: None, warn=False)
    case("truncated newest", "iteration 1", truncate)
    case("zero-byte newest", "iteration 1", lambda d: open(p2(d), "wb").close())
    case("bit flip in newest's tensor data", "iteration 1", lambda d: _flip_tensor_byte(p2(d)))
    case(
        "newest replaced by a directory",
        "iteration 1",
        lambda d: (os.remove(p2(d)), os.mkdir(p2(d))),
    )
    case("newest is pickled code", "iteration 1", pickled_code, extra=no_side_effect)
    case("newest deleted, pointer dangling", "iteration 1", lambda d: os.remove(p2(d)), warn=False)
    case(
        "pointer deleted",
        "iteration 2",
        lambda d: os.remove(os.path.join(d, checkpoint.POINTER)),
        warn=False,
    )
    case("pointer holds garbage", "iteration 2", pointer("\x00\xffgarbage"))
    case(
        "pointer holds invalid UTF-8",
        "iteration 2",
        lambda d: open(os.path.join(d, checkpoint.POINTER), "wb").write(b"\xff\xfe\x80\n"),
    )
    case("pointer escapes the workdir", "iteration 2", pointer("../../etc/model_0000009.pth"))
    case(
        "pointer names an older checkpoint",
        "iteration 1",
        pointer(checkpoint.checkpoint_name(1)),
        warn=False,
    )
    case(
        "stale .tmp files of a killed save",
        "iteration 2",
        stale_tmp,
        warn=False,
        extra=tmp_removed_by_next_save,
    )
    case("every checkpoint corrupt", "CheckpointError naming both files", all_corrupt)
    case(
        "disk full inside torch.save",
        "iteration 2",
        full_disk("torch.save"),
        warn=False,
        extra=no_tmp,
    )
    case("disk full at the rename", "iteration 2", full_disk("rename"), warn=False, extra=no_tmp)
    case(
        "disk full writing the pointer",
        "iteration 2",
        full_disk("pointer"),
        warn=False,
        extra=no_tmp,
    )
    return rows


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)



def _die_in_save(nth: int, main_args: list[str]) -> None:
    """Child mode: runs main.py, SIGKILLing this process in the middle of its nth torch.save."""
    import runpy

    import torch

    real_save, calls = torch.save, {"n": 0}

    def dying_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < nth:
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = dying_save
    sys.argv = ["main.py", *main_args]
    os.chdir(REPO)
    runpy.run_path(os.path.join(REPO, "main.py"), run_name="__main__")



def _table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    def line(r):
        return "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]
    )


if __name__ == "__main__":
    _p = argparse.ArgumentParser(description="child mode of the kill tests")
    _p.add_argument("--die-in-save", type=int, required=True)
    _a, _rest = _p.parse_known_args()
    _die_in_save(_a.die_in_save, [a for a in _rest if a != "--"])
