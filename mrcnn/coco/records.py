"""Detections of one image as COCO results records: the one builder behind eval and predict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_util

from mrcnn.structures import Detections, ImageInfo


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


def detection_records(
    info: ImageInfo,
    det: Detections,
    label_to_category_id: Callable[[int], int],
    score_thresh: float | None = None,
    with_file_name: bool = False,
) -> list[dict[str, Any]]:
    """One record per detection: {"image_id", "category_id", "bbox": [x, y, w, h], "score",
    "segmentation": RLE (when det.masks is set)}, plus "file_name" when asked.

    det: in original-image pixels: boxes float [K, 4] xyxy, scores [K], labels int64 [K] (model
      labels >= 1), masks uint8/bool [K, H, W] (or [K, 1, H, W]) of the original size, or None.
    score_thresh: keep only detections scoring >= it (None: all).
    """
    if score_thresh is not None:
        keep = det.scores >= score_thresh
        det = Detections(det.boxes[keep], det.scores[keep], det.labels[keep],
                         None if det.masks is None else det.masks[keep])
    if len(det) == 0:
        return []
    boxes = det.boxes.detach().float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = det.scores.detach().float().cpu().tolist()
    cats = [int(label_to_category_id(int(lab))) for lab in det.labels.cpu().tolist()]
    image_id = int(info.image_id)
    rles: list[Any] = [None] * len(det)
    if det.masks is not None:
        masks = det.masks[:, 0] if det.masks.dim() == 4 else det.masks
        if tuple(masks.shape[-2:]) != tuple(info.orig_size):
            raise ValueError(
                f"image {image_id}: masks are {tuple(masks.shape[-2:])}, expected the original "
                f"size {tuple(info.orig_size)} (paste them with detections_to_original first)")
        rles = encode_masks(masks)
    records = []
    for c, b, s, rle in zip(cats, xywh, scores, rles):
        r: dict[str, Any] = {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
        if with_file_name:
            r = {"file_name": info.file_name, **r}
        if rle is not None:
            r["segmentation"] = rle
        records.append(r)
    return records


def bbox_and_segm(records: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Splits combined records into pycocotools' bbox results and segm results.

    The segm records deliberately have no "bbox": pycocotools' loadRes would then take the box
    area instead of the mask area, which puts masks in the wrong small / medium / large bucket.
    """
    bbox = [{k: v for k, v in r.items() if k != "segmentation"} for r in records]
    segm = [{k: v for k, v in r.items() if k != "bbox"} for r in records if "segmentation" in r]
    return bbox, segm
