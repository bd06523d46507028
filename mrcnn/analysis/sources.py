"""What the analysis reads: a workdir's evaluation files, the ground truth, and COCOeval runs.

An evaluation is a folder holding `bbox.json` (and `segm.json`, `metrics.json`): the workdir
itself after `--mode=eval`, or `eval/iter_<step>/` after a training evaluation. Every number the
analysis shows comes from pycocotools' COCOeval (its matching, its precision array); nothing
here matches detections to objects by itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import json
import os
import re
import tempfile
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import ml_collections
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

TASKS = ("bbox", "segm")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluation's folder. iteration: the training step (None for `--mode=eval`)."""

    path: str
    iteration: int | None

    @property
    def label(self) -> str:
        return f"step {self.iteration}" if self.iteration is not None else "--mode=eval"

    def results_file(self, task: str) -> str:
        return os.path.join(self.path, f"{task}.json")


def find_evaluations(workdir: str) -> list[Evaluation]:
    """Every evaluation in `workdir` that has a bbox.json, oldest first (by that file's time,
    so the `--mode=eval` one sorts by when it ran)."""
    found = []
    for path in [workdir, *glob.glob(os.path.join(workdir, "eval", "iter_*"))]:
        bbox = os.path.join(path, "bbox.json")
        if not os.path.isfile(bbox):
            continue
        m = re.fullmatch(r"iter_(\d+)", os.path.basename(os.path.normpath(path)))
        it = int(m.group(1)) if m and path != workdir else None
        found.append((os.path.getmtime(bbox), it or 0, Evaluation(path, it)))
    return [e for _, _, e in sorted(found, key=lambda t: (t[0], t[1]))]


def pick_evaluation(workdir: str, eval_dir: str = "") -> Evaluation | None:
    """`eval_dir` (relative to the workdir, or absolute) when given, else the newest one."""
    if eval_dir:
        path = eval_dir if os.path.isabs(eval_dir) else os.path.join(workdir, eval_dir)
        if not os.path.isfile(os.path.join(path, "bbox.json")):
            raise FileNotFoundError(f"analyze.eval_dir: no bbox.json in {path}")
        m = re.fullmatch(r"iter_(\d+)", os.path.basename(os.path.normpath(path)))
        return Evaluation(path, int(m.group(1)) if m else None)
    evals = find_evaluations(workdir)
    return evals[-1] if evals else None


@dataclasses.dataclass
class GroundTruth:
    """The evaluated dataset: img_dir, ann_file, image_ids (the images the evaluation covered:
    all, or the first `eval.num_images` by id, as the test dataset takes them) and, per task,
    the ground truth the evaluation scored against (`coco(task)`)."""

    img_dir: str
    ann_file: str
    image_ids: list[int]
    parsed: Any
    supercategories: dict[int, str]
    _cache: dict = dataclasses.field(default_factory=dict)

    def coco(self, task: str) -> COCO:
        """`mrcnn.data.coco_gt` of the validated records (pycocotools never reads the raw
        file), with the file's supercategories, which the error breakdown's "Sim" needs."""
        if task not in self._cache:
            from mrcnn.data import coco_api, coco_gt

            d = coco_gt(SimpleNamespace(parsed=self.parsed, image_ids=self.image_ids), task)
            for c in d["categories"]:
                if c["id"] in self.supercategories:
                    c["supercategory"] = self.supercategories[c["id"]]
            self._cache[task] = coco_api(d)
        return self._cache[task]


def _supercategories(ann_file: str) -> dict[int, str]:
    """Category id -> supercategory from the file, best effort (the parser does not keep it;
    without it "Sim" equals "Loc")."""
    try:
        with open(ann_file, "rb") as f:
            cats = json.load(f).get("categories") or []
        return {c["id"]: str(c["supercategory"]) for c in cats
                if isinstance(c, dict) and isinstance(c.get("id"), int) and c.get("supercategory")}
    except (OSError, ValueError, AttributeError):
        return {}


def ground_truth(config: ml_collections.ConfigDict) -> GroundTruth:
    """The ground truth of `config.data.val` (a shapes dataset is generated if missing), parsed
    and validated as the evaluation does (`data.on_bad_annotation`)."""
    from mrcnn.data import annotations, catalog

    img_dir, ann_file = catalog.require_dataset(config, config.data.val)
    parsed = annotations.parse_coco_json(
        ann_file, on_bad=config.data.on_bad_annotation, training=False,
        with_masks=bool(config.model.mask_on),
        ids_as_labels=bool(config.data.category_ids_as_labels))
    ids = sorted(r.image_id for r in parsed.records)
    n = int(config.eval.num_images)
    ids = ids[:n] if n > 0 else ids
    return GroundTruth(img_dir, ann_file, ids, parsed, _supercategories(ann_file))


def load_gt(ann_file: str) -> COCO:
    """pycocotools reading a (trusted) annotation file itself: for tests and tools."""
    with contextlib.redirect_stdout(io.StringIO()):  # "loading annotations into memory..."
        return COCO(ann_file)


def load_results(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of COCO results records")
    return records


def results_coco(gt: COCO, results: list[dict[str, Any]]) -> COCO:
    """Results as a COCO object (loadRes), an empty one when there are none (loadRes cannot
    take an empty list)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            unknown = {int(r["image_id"]) for r in results} - set(gt.getImgIds())
            if unknown:
                raise ValueError(
                    f"results name {len(unknown)} images that the ground truth does not have "
                    f"(e.g. {sorted(unknown)[:5]}): is config.data.val the evaluated dataset?"
                )
            # loadRes adds keys ("area", "id", ...) to the records it gets: give it copies.
            return gt.loadRes([dict(r) for r in results])
        res = COCO()
        res.dataset = {"images": list(gt.dataset["images"]),
                       "categories": list(gt.dataset.get("categories", [])), "annotations": []}
        res.createIndex()
        return res


def run_cocoeval(
    gt: COCO,
    dt: COCO,
    iou_type: str,
    image_ids: Sequence[int],
    *,
    iou_thrs: Sequence[float] | None = None,
    max_dets: Sequence[int] | None = None,
    use_cats: bool = True,
    cat_ids: Sequence[int] | None = None,
    accumulate: bool = True,
    evaluator: type[COCOeval] = COCOeval,
) -> COCOeval:
    """An evaluated (and accumulated) COCOeval with the parameters given (pycocotools'
    defaults otherwise). Its output is swallowed: the caller reads `evalImgs` / `eval`."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = evaluator(gt, dt, iouType=iou_type)
        ev.params.imgIds = sorted(int(i) for i in image_ids)
        if iou_thrs is not None:
            ev.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        if max_dets is not None:
            ev.params.maxDets = list(max_dets)
        ev.params.useCats = int(use_cats)
        if cat_ids is not None:
            ev.params.catIds = [int(c) for c in cat_ids]
        ev.evaluate()
        if accumulate:
            ev.accumulate()
    return ev


def category_names(gt: COCO) -> dict[int, str]:
    """Category id -> name, in id order."""
    return {int(c["id"]): str(c.get("name", c["id"])) for c in sorted(
        gt.dataset.get("categories", []), key=lambda c: c["id"])}


def write_file(path: str, data: bytes | str) -> str:
    """Writes `data` to a temporary file beside `path`, then renames it over `path`: a page
    open in a browser while the analysis reruns never shows half an image. Returns `path`."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def safe_name(name: str) -> str:
    """A class name as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"
