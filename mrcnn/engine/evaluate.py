"""Evaluation of a model on a validation set: inference -> COCO records -> pycocotools AP.

`evaluate` runs a model over a validation set (sharded across ranks, gathered on rank 0) and is
used both by `--mode=eval` (`evaluate_checkpoint`) and by training's periodic evaluation.
Files written into an output directory (all atomically: a temporary file, then a rename):
`bbox.json` and `segm.json` (the COCO results format that pycocotools' `loadRes` reads) and
`metrics.json` (the dict `evaluate` returns). For TensorBoard, rank 0's result also carries a few
drawn predictions under "_vis" (see `evaluate`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any

import ml_collections
import torch
from torch import nn

from mrcnn import data as data_lib
from mrcnn import dist
from mrcnn.build import build, fast_paths
from mrcnn.coco import bbox_and_segm, coco_evaluate, detection_records
from mrcnn.data import CategoryTable
from mrcnn.engine.inference import InferenceStats, run_inference
from mrcnn.fileio import write_json_atomic
from mrcnn.structures import Detections, ImageInfo
from mrcnn.visualize import draw_detections

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the loop


# The call into the data pipeline, module-level so that tests can substitute a fake one.
def _build_test_loader(config, dataset_cfg, rank: int, world_size: int):
    return data_lib.build_test_loader(config, dataset_cfg, rank=rank, world_size=world_size)


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


def label_names(table: CategoryTable, num_classes: int) -> dict[int, str]:
    """Model label -> class name, from the model's category table."""
    names = {}
    for label in range(1, num_classes):
        try:
            names[label] = table.name_of_label(label)
        except (KeyError, IndexError, ValueError):  # an id-as-label the table has no name for
            continue
    return names


class ValSetError(ValueError):
    """A validation set that cannot give a meaningful AP (no images, none readable)."""


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
    if missing and len(missing) == len(expected):
        return None, None  # nothing was evaluated: `_val_set_error` says why
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
    categories: CategoryTable | None = None,
) -> dict[str, Any]:
    """COCO bbox / segm AP of `model` on `dataset_cfg` (default `config.data.val`).

    categories: what the model's labels mean (`Built.categories`; default: the training data's
      table, `mrcnn.data.category_table`). Detections are mapped through it, and the val set is
      matched to it by category id (`match_categories`): val categories the model does not know
      are named in a warning and evaluated as never detected. The ground truth pycocotools sees
      is built from what our parser accepted (`mrcnn.data.coco_gt`), never the raw file.

    Every rank runs its shard of the images (`test.ims_per_batch` per batch, the first
    `eval.num_images` images when > 0, in `config.dtype` as resolved by the build, "auto"
    included); the records are gathered on rank 0,
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
    table = categories if categories is not None else data_lib.category_table(config)
    data_lib.match_categories(table, dataset.parsed.categories, where=dataset.ann_file)
    to_cat = table.label_to_category_id
    mask_on = bool(config.model.mask_on)

    bbox, segm, seen, vis_items, stats = _run_shard(model, loader, config, device, to_cat,
                                                     num_vis if rank == 0 else 0)
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
    if "user_error" in result:
        raise ValSetError(result["user_error"])
    if "error" in result:
        raise RuntimeError(f"evaluation: {result['error']}")
    metrics = result["metrics"]
    if rank == 0 and vis_items:
        metrics = dict(metrics)
        metrics["_vis"] = _draw_vis(
            dataset, vis_items, label_names(table, config.model.num_classes),
            config.predict.score_thresh
        )
    return metrics


def _run_shard(model: nn.Module, loader, config, device, to_cat, num_vis: int):
    """This rank's images through the inference loop: (bbox records, segm records, image ids
    seen, the first `num_vis` (info, detections) for drawing, InferenceStats)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # inference needs no gradient synchronization
    was_training = model.training
    model.eval()
    stats = InferenceStats()
    bbox, segm, seen, vis_items = [], [], [], []
    try:
        for info, det in run_inference(model, loader, device, fast_paths(config, device, "eval"),
                                       log_period=config.log_period, stats=stats):
            b, s = bbox_and_segm(detection_records(info, det, to_cat))
            bbox.extend(b)
            segm.extend(s)
            seen.append(int(info.image_id))
            if len(vis_items) < num_vis:
                vis_items.append((info, det))
    finally:
        model.train(was_training)
    return bbox, segm, seen, vis_items, stats


def _val_set_error(dataset, seen: list[int], expected: set[int]) -> str | None:
    """Why this val set gives no meaningful AP, or None: AP over no image, or over images none
    of which could be read, would be a number (-1 or 0) that means nothing."""
    where = getattr(dataset, "ann_file", "the validation set")
    if not expected:
        return f"{where}: the validation set has no images to evaluate (config.data.val)"
    if not seen:
        return (f"none of the {len(expected)} images of {where} could be read from "
                f"{getattr(dataset, 'img_dir', '?')} (config.data.val.img_dir): nothing was "
                "evaluated")
    return None


def _evaluate_gathered(gathered, dataset, config, mask_on: bool, output_dir: str | None) -> dict:
    """Rank 0's half of `evaluate`: merge, check coverage, evaluate, write files."""
    bbox = [r for g in gathered for r in g[0]]
    segm = [r for g in gathered for r in g[1]]
    seen = [i for g in gathered for i in g[2]]
    expected = {i for g in gathered for i in g[3]}
    user_error = _val_set_error(dataset, seen, expected)
    if user_error:
        return {"user_error": user_error}
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
    ids = sorted(expected)
    gt_bbox = data_lib.coco_gt(dataset, "bbox")
    if not gt_bbox["annotations"]:
        log.warning("evaluation: %s has no annotated object in its %d images: every AP is -1 "
                    "(undefined), not a score", getattr(dataset, "ann_file", "the val set"),
                    len(ids))
    metrics = coco_evaluate(gt_bbox, bbox, None, ids)
    if mask_on:  # box-only objects differ between the two ground truths (see coco_gt)
        metrics.update(coco_evaluate(data_lib.coco_gt(dataset, "segm"), [], segm, ids,
                                     bbox=False))
    if output_dir:
        write_json_atomic(os.path.join(output_dir, "metrics.json"), metrics)
    return {"metrics": metrics}


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, device: torch.device
) -> dict[str, Any]:
    """`--mode=eval`: the model with `init.weights` (or the workdir's last checkpoint), evaluated
    on `config.data.val`; bbox.json, segm.json and metrics.json are written into the workdir."""
    built = build(config, device, "eval", workdir)
    metrics = evaluate(built.model, config, device, output_dir=workdir, num_vis=0,
                       categories=built.categories)
    write_run_report(workdir, config)  # the same page a training ends with
    if dist.is_main():
        log.info(
            "%s",
            "  ".join(
                f"{task} AP {m['AP']:.4f} AP50 {m['AP50']:.4f} AP75 {m['AP75']:.4f}"
                for task, m in metrics.items()
            ),
        )
    return metrics


def write_run_report(workdir: str, config) -> None:
    """The run's report page (report/index.html) from what the workdir holds; a failure to draw
    it never fails a finished training."""
    if not dist.is_main():
        return
    try:
        from mrcnn.analysis.report import write_report

        log.info("report: %s", write_report(workdir, config))
    except Exception as e:  # matplotlib missing, an unreadable file: the run itself is done
        log.warning("could not write the report page (%s: %s)", type(e).__name__, e)
