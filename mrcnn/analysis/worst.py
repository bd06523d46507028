"""The images an evaluation gets most wrong: most false positives plus misses among the
detections scoring >= `score_thresh`, by pycocotools' matching at IoU 0.5 (per class, as AP50
counts them). Each is drawn as ground truth | predictions, errors named: "MISSED" on an object
no detection matched, "FP" on a detection that matched no object of its class."""

from __future__ import annotations

import os

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from mrcnn.analysis import plots
from mrcnn.analysis.sources import results_coco, run_cocoeval
from mrcnn.visualize import (
    class_color,
    draw_instances,
    enlarge,
    save_png,
    side_by_side,
    with_caption,
)

# Small images (the shapes demo is 128 px) are enlarged to about this long side before
# drawing, so box labels stay readable.
MIN_SIDE = 384
LABEL_FONT = {"font": plots.font_path(), "font_size": 14}
MISSED = " MISSED"
FALSE_POS = " FP"


def image_errors(gt: COCO, results: list[dict], iou_type: str, image_ids,
                 score_thresh: float = 0.5, iou_thresh: float = 0.5) -> tuple[dict, COCO]:
    """({image_id: {"fp": [dt ids], "fn": [gt ids], "tp": [dt ids]}}, the results COCO)."""
    dt = results_coco(gt, [r for r in results if float(r["score"]) >= score_thresh])
    per_image = max([len(dt.getAnnIds(imgIds=[i])) for i in image_ids] + [1])
    ev = run_cocoeval(gt, dt, iou_type, image_ids, iou_thrs=(iou_thresh,),
                      max_dets=(per_image,), accumulate=False)
    out = {int(i): {"fp": [], "fn": [], "tp": []} for i in image_ids}
    all_area = ev.params.areaRng[0]
    for e in ev.evalImgs:
        if e is None or e["aRng"] != all_area:
            continue
        o = out[int(e["image_id"])]
        for d, m, ign in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0]):
            if not ign:
                o["tp" if m else "fp"].append(int(d))
        for g, m, ign in zip(e["gtIds"], e["gtMatches"][0], e["gtIgnore"]):
            if not ign and not m:
                o["fn"].append(int(g))
    return out, dt


def rank(errors: dict, n: int) -> list[tuple[int, int, int]]:
    """The `n` images with the most errors, as (image_id, false positives, misses); images
    without errors are left out; ties broken by image id."""
    scored = [(len(e["fp"]) + len(e["fn"]), -i, i, len(e["fp"]), len(e["fn"]))
              for i, e in errors.items()]
    scored.sort(reverse=True)
    return [(i, fp, fn) for total, _, i, fp, fn in scored[:n] if total > 0]


def _masks(coco: COCO, anns: list[dict], h: int, w: int) -> torch.Tensor:
    """Masks at h x w: decoded at the image's size, enlarged by the whole factor h / its h."""
    if not anns:
        return torch.zeros((0, h, w), dtype=torch.uint8)
    ms = []
    for a in anns:
        seg = a.get("segmentation")
        if isinstance(seg, dict) and isinstance(seg.get("counts"), str):
            seg = {**seg, "counts": seg["counts"].encode()}
            ms.append(mask_util.decode(seg))
        else:
            ms.append(coco.annToMask(a))
    m = torch.from_numpy(np.stack(ms)).to(torch.uint8)
    s = h // m.shape[1]
    return m.repeat_interleave(s, 1).repeat_interleave(s, 2) if s > 1 else m


def _boxes(anns: list[dict], scale: int = 1) -> torch.Tensor:
    b = torch.from_numpy(np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4))
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1) * scale


def draw_image(gt: COCO, dt: COCO, image: torch.Tensor, image_id: int, err: dict,
               names: dict[int, str], with_masks: bool) -> torch.Tensor:
    """ground truth | predictions for one image (uint8 [3, H, 2W + gap + caption])."""
    image, s = enlarge(image, MIN_SIDE)
    h, w = image.shape[1:]
    label = {c: k + 1 for k, c in enumerate(sorted(names))}
    gts = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[image_id])) if not a.get("iscrowd")]
    dts = sorted(dt.loadAnns(dt.getAnnIds(imgIds=[image_id])), key=lambda a: a["score"])
    missed, fps = set(err["fn"]), set(err["fp"])
    gt_texts = [names.get(a["category_id"], "?") + (MISSED if a["id"] in missed else "")
                for a in gts]
    dt_texts = [f"{names.get(a['category_id'], '?')} {a['score']:.2f}"
                + (FALSE_POS if a["id"] in fps else "") for a in dts]
    left = draw_instances(image, _boxes(gts, s), [class_color(label.get(a["category_id"], 0))
                                                for a in gts], gt_texts,
                          _masks(gt, gts, h, w) if with_masks else None, **LABEL_FONT)
    right = draw_instances(image, _boxes(dts, s), [class_color(label.get(a["category_id"], 0))
                                                 for a in dts], dt_texts,
                           _masks(dt, dts, h, w) if with_masks else None, **LABEL_FONT)
    return side_by_side([with_caption(left, ["ground truth"]),
                         with_caption(right, ["predictions"])])


def draw_worst(gt: COCO, results: list[dict], iou_type: str, image_ids, img_dir: str,
               out_dir: str, names: dict[int, str], n: int = 8, score_thresh: float = 0.5,
               ) -> list[dict]:
    """Draws the `n` worst images into out_dir; returns [{image_id, file_name, png, fp, fn}].
    An image file that cannot be read is listed with png None (the analysis goes on)."""
    from mrcnn.data import ImageError, load_image

    errors, dt = image_errors(gt, results, iou_type, image_ids, score_thresh)
    listed = []
    for image_id, fp, fn in rank(errors, n):
        info = gt.imgs[image_id]
        entry = {"image_id": image_id, "file_name": info["file_name"], "fp": fp, "fn": fn,
                 "png": None}
        try:
            image = load_image(os.path.join(img_dir, info["file_name"]))
        except (ImageError, OSError) as e:
            entry["error"] = str(e)
            listed.append(entry)
            continue
        drawn = draw_image(gt, dt, image, image_id, errors[image_id], names,
                           with_masks=iou_type == "segm")
        entry["png"] = save_png(drawn, os.path.join(out_dir, f"{image_id}.png"))
        listed.append(entry)
    return listed
