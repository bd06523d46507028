"""COCO evaluation: detections -> COCO results records -> pycocotools bbox / segm AP.

`evaluate` runs a model over a validation set (sharded across ranks, gathered on rank 0) and is
used both by `--mode=eval` (`evaluate_checkpoint`) and by training's periodic evaluation.
Files written into an output directory (all atomically: a temporary file, then a rename):
`bbox.json` and `segm.json` (the COCO results format that pycocotools' `loadRes` reads) and
`metrics.json` (the dict `evaluate` returns). For TensorBoard, rank 0's result also carries a few
drawn predictions under "_vis" (see `evaluate`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from mrcnn import data as data_lib
from mrcnn import dist
from mrcnn.inference import InferenceStats, build_inference_model, run_inference
from mrcnn.structures import Detections, ImageInfo
from mrcnn.visualize import draw_detections

log = logging.getLogger(__name__)

# pycocotools' stats[0..5], in its order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ----------------------------------------------------------------------------- records


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """COCO compressed RLEs of binary masks uint8/bool [K, H, W], `counts` as str (JSON-ready)."""
    if masks.shape[0] == 0:
        return []
    # pycocotools wants [H, W, K] in Fortran (column-major) order, uint8.
    arr = np.asfortranarray(masks.to(torch.uint8).cpu().numpy().transpose(1, 2, 0))
    rles = mask_util.encode(arr)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def detections_to_coco(
    info: ImageInfo, det: Detections, label_to_category_id: Callable[[int], int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """COCO results records of one image: (bbox records, segm records).

    det: in original-image pixels: boxes float [K, 4] xyxy, scores [K], labels int64 [K] (model
      labels >= 1), masks uint8/bool [K, H, W] or None (then no segm records).
    label_to_category_id: model label -> the dataset's category id.
    bbox record: {"image_id", "category_id", "bbox": [x, y, w, h] floats, "score"}.
    segm record: {"image_id", "category_id", "segmentation": RLE, "score"}, deliberately without
      "bbox": pycocotools' loadRes would then take the box area instead of the mask area, which
      puts masks in the wrong small / medium / large bucket.
    """
    n = len(det)
    if n == 0:
        return [], []
    boxes = det.boxes.detach().float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = det.scores.detach().float().cpu().tolist()
    cats = [int(label_to_category_id(int(lab))) for lab in det.labels.cpu().tolist()]
    image_id = int(info.image_id)
    bbox_records = [
        {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
        for c, b, s in zip(cats, xywh, scores)
    ]
    segm_records = []
    if det.masks is not None:
        masks = det.masks
        if masks.dim() == 4:  # [K, 1, H, W]
            masks = masks[:, 0]
        if tuple(masks.shape[-2:]) != tuple(info.orig_size):
            raise ValueError(
                f"image {image_id}: masks are {tuple(masks.shape[-2:])}, expected the original "
                f"size {tuple(info.orig_size)} (paste them with detections_to_original first)"
            )
        rles = encode_masks(masks)
        segm_records = [
            {"image_id": image_id, "category_id": c, "segmentation": r, "score": s}
            for c, r, s in zip(cats, rles, scores)
        ]
    return bbox_records, segm_records


def label_to_category_fn(config: ml_collections.ConfigDict, meta) -> Callable[[int], int]:
    """Model label -> dataset category id: the identity when `data.category_ids_as_labels`
    (torchvision's 91-way COCO head), else the dataset meta's contiguous mapping."""
    if config.data.category_ids_as_labels:
        return int
    return meta.label_to_category_id


# ----------------------------------------------------------------------------- pycocotools


def _load_gt(coco_gt: str | COCO) -> COCO:
    if isinstance(coco_gt, COCO):
        return coco_gt
    with contextlib.redirect_stdout(io.StringIO()):  # "loading annotations into memory..."
        return COCO(coco_gt)


def _empty_results(gt: COCO) -> COCO:
    """A results object with no detections (pycocotools' loadRes cannot take an empty list)."""
    res = COCO()
    res.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": list(gt.dataset.get("categories", [])),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def _run_cocoeval(
    gt: COCO, results: list[dict[str, Any]], iou_type: str, image_ids: Sequence[int] | None
) -> dict[str, float]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if results:
            # loadRes adds keys ("area", "id", ...) to the records it gets: give it copies.
            dt = gt.loadRes([dict(r) for r in results])
        else:
            dt = _empty_results(gt)
        ev = COCOeval(gt, dt, iouType=iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        ev.summarize()
    log.info(
        "COCO %s evaluation (%d detections):\n%s", iou_type, len(results), table.getvalue().rstrip()
    )
    return {name: float(v) for name, v in zip(METRIC_NAMES, ev.stats[:6])}


def coco_evaluate(
    coco_gt: str | COCO,
    bbox_results: list[dict[str, Any]],
    segm_results: list[dict[str, Any]] | None = None,
    image_ids: Sequence[int] | None = None,
) -> dict[str, dict[str, float]]:
    """pycocotools' bbox (and segm) evaluation of COCO results records.

    coco_gt: an annotation file path or a loaded `COCO`. segm_results None: bbox only.
    image_ids: the images evaluated (default: every image of the annotation file); an image in
      this list without detections counts as all of its objects missed.
    Returns {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...}} as pycocotools'
    stats[0..5]: AP in [0, 1], -1 where the annotations have no object of that size. Empty
    results give 0 (not an error). The standard summary table is written to the log.
    """
    gt = _load_gt(coco_gt)
    metrics = {"bbox": _run_cocoeval(gt, bbox_results, "bbox", image_ids)}
    if segm_results is not None:
        metrics["segm"] = _run_cocoeval(gt, segm_results, "segm", image_ids)
    return metrics


# ----------------------------------------------------------------------------- files


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes JSON to a temporary file in the same folder, then renames it over `path`, so a
    reader never sees a half-written file."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- the loop


# The two calls into the data pipeline, module-level so that tests can substitute a fake one.
def _build_test_loader(config, dataset_cfg, rank: int, world_size: int):
    return data_lib.build_test_loader(config, dataset_cfg, rank=rank, world_size=world_size)


def _get_dataset_meta(config, dataset_cfg):
    # The evaluated set's own categories: they are the ones its annotation file uses.
    return data_lib.get_dataset_meta(config, dataset_cfg)


def _draw_vis(dataset, items: list[tuple[ImageInfo, Detections]], names, thresh: float) -> list:
    """Best-effort drawings for TensorBoard: an image that cannot be read is left out."""
    out = []
    for info, det in items:
        try:
            image = data_lib.load_image(os.path.join(dataset.img_dir, info.file_name))
        except Exception as e:  # never fail an evaluation over a picture
            log.warning("evaluation drawing: cannot read %s (%s)", info.file_name, e)
            continue
        out.append(draw_detections(image, det, names, thresh))
    return out


def label_names(config: ml_collections.ConfigDict, meta) -> dict[int, str]:
    """Model label -> class name, from the dataset meta (`category_ids`, `names`)."""
    to_cat = label_to_category_fn(config, meta)
    by_cat = dict(zip(meta.category_ids, meta.names))
    names = {}
    for label in range(1, config.model.num_classes):
        try:
            cat = to_cat(label)
        except (KeyError, IndexError, ValueError):
            continue
        if cat in by_cat:
            names[label] = by_cat[cat]
    return names


def _check_coverage(
    seen: list[int], expected: set[int], on_bad_image: str
) -> tuple[str | None, str | None]:
    """(error, warning) about the gathered image ids: each expected image exactly once."""
    counts = Counter(seen)
    dups = sorted(i for i, c in counts.items() if c > 1)
    extra = sorted(set(counts) - expected)
    missing = sorted(expected - set(counts))
    if dups:
        return f"images evaluated more than once across ranks: {dups[:10]} ({len(dups)})", None
    if extra:
        return f"images evaluated that are not in the dataset: {extra[:10]} ({len(extra)})", None
    if missing:
        msg = f"{len(missing)} of {len(expected)} images were not evaluated: {missing[:10]}"
        if on_bad_image == "skip":  # the loader dropped unreadable images: count them as missed
            return None, msg + " (unreadable, skipped: their objects count as missed)"
        return msg, None
    return None, None


def evaluate(
    model: nn.Module,
    config: ml_collections.ConfigDict,
    device: torch.device,
    output_dir: str | None = None,
    dataset_cfg: ml_collections.ConfigDict | None = None,
    num_vis: int | None = None,
) -> dict[str, Any]:
    """COCO bbox / segm AP of `model` on `dataset_cfg` (default `config.data.val`).

    Every rank runs its shard of the images (`test.ims_per_batch` per batch, the first
    `eval.num_images` images when > 0, in `config.dtype`); the records are gathered on rank 0,
    which checks that every image was seen exactly once, evaluates with pycocotools and, when
    `output_dir` is given, writes bbox.json, segm.json and metrics.json there. All ranks return
    the same metrics: {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...}}
    ("segm" only when `model.mask_on`).
    num_vis: rank 0 also returns that many drawn predictions (default `eval.vis_images`; the
      first images of its shard, detections scoring >= `predict.score_thresh`) as
      metrics["_vis"], a list of uint8 [3, H, W] tensors for TensorBoard; pop it before
      serializing. Other ranks never have "_vis".
    The model's train/eval mode is restored on return.
    """
    rank, world_size = dist.rank(), dist.world_size()
    dataset_cfg = dataset_cfg if dataset_cfg is not None else config.data.val
    num_vis = config.eval.vis_images if num_vis is None else num_vis
    loader, dataset = _build_test_loader(config, dataset_cfg, rank, world_size)
    meta = _get_dataset_meta(config, dataset_cfg)
    to_cat = label_to_category_fn(config, meta)
    mask_on = bool(config.model.mask_on)

    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # inference needs no gradient synchronization
    was_training = model.training
    model.eval()
    stats = InferenceStats()
    bbox, segm, seen, vis_items = [], [], [], []
    try:
        for info, det in run_inference(
            model,
            loader,
            device,
            config.dtype,
            log_period=config.log_period,
            stats=stats,
            channels_last=bool(config.perf.channels_last),
        ):
            b, s = detections_to_coco(info, det, to_cat)
            bbox.extend(b)
            segm.extend(s)
            seen.append(int(info.image_id))
            if rank == 0 and len(vis_items) < num_vis:
                vis_items.append((info, det))
    finally:
        model.train(was_training)

    expected_here = [int(i) for i in dataset.image_ids]
    gathered = dist.all_gather_object(
        (bbox, segm, seen, expected_here, stats.timed_images, stats.seconds)
    )
    result: dict[str, Any] = {}
    if rank == 0:
        try:
            result = _evaluate_gathered(gathered, dataset, config, mask_on, output_dir)
        except Exception as e:
            # The other ranks wait in broadcast_object: release them before failing here.
            dist.broadcast_object({"error": f"failed on rank 0: {type(e).__name__}: {e}"})
            raise
    result = dist.broadcast_object(result)
    if "error" in result:
        raise RuntimeError(f"evaluation: {result['error']}")
    metrics = result["metrics"]
    if rank == 0 and vis_items:
        metrics = dict(metrics)
        metrics["_vis"] = _draw_vis(
            dataset, vis_items, label_names(config, meta), config.predict.score_thresh
        )
    return metrics


def _evaluate_gathered(gathered, dataset, config, mask_on: bool, output_dir: str | None) -> dict:
    """Rank 0's half of `evaluate`: merge, check coverage, evaluate, write files."""
    bbox = [r for g in gathered for r in g[0]]
    segm = [r for g in gathered for r in g[1]]
    seen = [i for g in gathered for i in g[2]]
    expected = {i for g in gathered for i in g[3]}
    error, warning = _check_coverage(seen, expected, config.data.on_bad_image)
    if error:
        return {"error": error}
    if warning:
        log.warning("evaluation: %s", warning)
    images = sum(g[4] for g in gathered)
    seconds = max(g[5] for g in gathered)
    log.info(
        "evaluation: %d images on %d rank(s), %d detections, %.2f images/s (after warm-up)",
        len(seen),
        len(gathered),
        len(bbox),
        images / seconds if seconds > 0 else 0.0,
    )
    if output_dir:
        write_json_atomic(os.path.join(output_dir, "bbox.json"), bbox)
        if mask_on:
            write_json_atomic(os.path.join(output_dir, "segm.json"), segm)
    metrics = coco_evaluate(dataset.ann_file, bbox, segm if mask_on else None, sorted(expected))
    if output_dir:
        write_json_atomic(os.path.join(output_dir, "metrics.json"), metrics)
    return {"metrics": metrics}


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, device: torch.device
) -> dict[str, Any]:
    """`--mode=eval`: the model with `init.weights` (or the workdir's last checkpoint), evaluated
    on `config.data.val`; bbox.json, segm.json and metrics.json are written into the workdir."""
    model = build_inference_model(config, workdir, device)
    metrics = evaluate(model, config, device, output_dir=workdir, num_vis=0)
    if dist.is_main():
        log.info(
            "%s",
            "  ".join(
                f"{task} AP {m['AP']:.4f} AP50 {m['AP50']:.4f} AP75 {m['AP75']:.4f}"
                for task, m in metrics.items()
            ),
        )
    return metrics
