"""`--mode=browse`: the ground truth of `data.train` / `data.val` drawn, to check a dataset
before training on it.

    python main.py --config=configs/shapes.py --mode=browse --workdir=runs/shapes \
        [--config.browse.split=train] [--config.browse.images='(3, 17)'] \
        [--config.browse.augmented=True]

Writes `browse/<split>/<image id>.png` (or `browse/<split>_augmented/`), a contact sheet
`sheet.png` and `index.json` (per image: what was kept, crowd regions, what the parser skipped
and why). Each image shows the instances the parser keeps (mask, box, class name), crowd
regions in grey ("crowd": ignored in training, absorbing detections in evaluation) and the
annotations it drops in red with their number; the reasons are the parser's own messages.
With `browse.augmented=True` each image is what the training loader feeds the model (resized,
maybe flipped; crowd and dropped annotations are not in it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from typing import Any

import ml_collections
import numpy as np
import torch
from pycocotools import mask as mask_util

from mrcnn.analysis.plots import font_path
from mrcnn.analysis.sources import write_file
from mrcnn.data import annotations as ann_lib
from mrcnn.visualize import (
    class_color,
    contact_sheet,
    draw_instances,
    enlarge,
    save_png,
    with_caption,
)

log = logging.getLogger(__name__)

CROWD_COLOR = (150, 150, 150)
SKIPPED_COLOR = (230, 30, 30)
MIN_SIDE = 384
LABEL_FONT = {"font": font_path(), "font_size": 14}


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the parser does with one raw annotation. status: "kept" | "crowd" | "skipped";
    why: its reason; region: a crowd's segmentation as the parser validated it (None else)."""

    status: str
    why: str
    region: Any = None


def _parse_one(data: dict, training: bool, with_masks: bool) -> ann_lib.ParsedAnnotations:
    fd, tmp = tempfile.mkstemp(suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        try:
            return ann_lib.parse_coco_json(tmp, on_bad="fail", training=training,
                                           with_masks=with_masks)
        except ann_lib.AnnotationError as e:
            # The message starts with the temporary file's name and ends with a hint about
            # on_bad_annotation: keep the part about the record.
            raise ann_lib.AnnotationError(
                str(e).replace(tmp + ": ", "").split(" (set --config.data.on_bad")[0]) from None
    finally:
        os.unlink(tmp)


def annotation_verdict(image: dict, ann: Any, categories: list, with_masks: bool) -> Verdict:
    """The parser's verdict on one raw annotation: it parses a file holding only this image
    and annotation, so the reason is exactly what training would log (checks across
    annotations, such as duplicate ids, are not seen). Raw segmentations never reach
    pycocotools (a garbage RLE hangs it): a crowd region is drawn from the test-mode parse,
    which validates crowds too; a skipped annotation is drawn as its box."""
    data = {"images": [image], "categories": categories, "annotations": [ann]}
    try:
        parsed = _parse_one(data, True, with_masks)
    except ann_lib.AnnotationError as e:
        return Verdict("skipped", str(e))
    if parsed.counts.get("crowd"):
        region = None
        if with_masks:
            from mrcnn.data import coco_gt

            anns = coco_gt(_parse_one(data, False, with_masks), "segm")["annotations"]
            region = anns[0]["segmentation"] if anns else None
        return Verdict("crowd", "iscrowd=1: ignored in training", region)
    if parsed.records and len(parsed.records[0]):
        n = parsed.counts.get("degenerate_polygon_part", 0)
        return Verdict("kept", f"{n} polygon part(s) with < 3 points dropped" if n else "")
    return Verdict("skipped", ", ".join(k.replace("_", " ") for k in parsed.counts) or "dropped")


def _region_masks(regions: list, h: int, w: int) -> torch.Tensor:
    """Masks of validated segmentations (polygons or RLE); zeros for None."""
    out = np.zeros((len(regions), h, w), dtype=np.uint8)
    for i, seg in enumerate(regions):
        if isinstance(seg, list) and seg:
            out[i] = mask_util.decode(mask_util.merge(mask_util.frPyObjects(seg, h, w)))
        elif isinstance(seg, dict):
            counts = seg["counts"]
            rle = {"size": seg["size"], "counts": counts.encode() if isinstance(counts, str)
                   else counts}
            out[i] = mask_util.decode(rle)
    return torch.from_numpy(out)


def _raw_box(a: dict) -> list[float] | None:
    b = a.get("bbox") if isinstance(a, dict) else None
    ok = isinstance(b, list) and len(b) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
    if ok and all(np.isfinite(b)) and b[2] > 0 and b[3] > 0:
        return [b[0], b[1], b[0] + b[2], b[1] + b[3]]
    return None


def record_masks(rec: ann_lib.ImageRecord) -> torch.Tensor:
    """uint8 [N, H, W] of a parsed record's instances (polygons rasterised by pycocotools)."""
    h, w = rec.height, rec.width
    out = np.zeros((len(rec), h, w), dtype=np.uint8)
    if rec.rles is None:
        return torch.from_numpy(out)
    for i, (parts, rle) in enumerate(zip(rec.polygons(), rec.rles)):
        if rle is not None:
            out[i] = mask_util.decode({"size": [h, w], "counts": rle})
        elif parts:
            out[i] = mask_util.decode(mask_util.merge(
                mask_util.frPyObjects([p.astype(np.float64).tolist() for p in parts], h, w)))
    return torch.from_numpy(out)


def draw_original(image: torch.Tensor, rec: ann_lib.ImageRecord | None, raw: list[dict],
                  verdicts: list[Verdict], names, with_masks: bool) -> torch.Tensor:
    """Kept instances in their class colours, crowd regions grey, skipped annotations red
    with their number in `raw` order ("#3 skipped"), enlarged when small."""
    h, w = image.shape[1:]
    big, s = enlarge(image, MIN_SIDE)
    n_kept = len(rec) if rec is not None else 0
    boxes = rec.boxes.tolist() if n_kept else []
    colors = [class_color(int(lab)) for lab in rec.labels] if n_kept else []
    texts = [names(int(lab)) for lab in rec.labels] if n_kept else []
    marked = [(i, _raw_box(a)) for i, (a, v) in enumerate(zip(raw, verdicts))
              if v.status != "kept"]
    marked = [(i, b) for i, b in marked if b is not None]  # no box: listed, not drawn
    for i, b in marked:
        crowd = verdicts[i].status == "crowd"
        boxes.append(b)
        colors.append(CROWD_COLOR if crowd else SKIPPED_COLOR)
        texts.append("crowd" if crowd else f"#{i} skipped")
    masks = None
    if with_masks:
        kept = record_masks(rec) if n_kept else torch.zeros((0, h, w), dtype=torch.uint8)
        masks = torch.cat([kept, _region_masks([verdicts[i].region for i, _ in marked], h, w)])
        masks = masks.repeat_interleave(s, 1).repeat_interleave(s, 2) if s > 1 else masks
    box_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * s
    return draw_instances(big, box_t, colors, texts, masks, **LABEL_FONT)


def denormalize(x: torch.Tensor, input_cfg: ml_collections.ConfigDict) -> torch.Tensor:
    """The training transform's normalized float [3, h, w] back to uint8 RGB."""
    mean = torch.as_tensor(input_cfg.pixel_mean, dtype=x.dtype)[:, None, None]
    if input_cfg.to_bgr255:
        rgb = (x + mean).flip(0)
    else:
        std = torch.as_tensor(input_cfg.pixel_std, dtype=x.dtype)[:, None, None]
        rgb = (x * std + mean) * 255.0
    return rgb.round().clamp(0, 255).to(torch.uint8)


def draw_augmented(sample: dict, input_cfg, names) -> torch.Tensor:
    """A training sample as the model gets it: its image and targets after the transforms."""
    image = denormalize(sample["image"], input_cfg)
    big, s = enlarge(image, MIN_SIDE)
    t = sample["target"]
    h, w = image.shape[1:]
    m = None
    if t.masks is not None:
        m = np.zeros((len(t.labels), h, w), dtype=np.uint8)
        for i, parts in enumerate(t.masks.polygons):
            if parts:
                m[i] = mask_util.decode(mask_util.merge(mask_util.frPyObjects(
                    [p.double().tolist() for p in parts], h, w)))
            elif t.masks.bitmasks is not None:
                m[i] = t.masks.bitmasks[i].numpy()
        m = torch.from_numpy(m)
        m = m.repeat_interleave(s, 1).repeat_interleave(s, 2) if s > 1 else m
    labels = t.labels.tolist()
    return draw_instances(big, t.boxes * s, [class_color(lab) for lab in labels],
                          [names(lab) for lab in labels], m, **LABEL_FONT)


def pick(records: list[ann_lib.ImageRecord], wanted, num: int, seed: int) -> list[int]:
    """Positions in `records`: the images named in `wanted` (ids or file names, in that
    order), else `num` drawn at random with `seed`, in id order."""
    if wanted:
        by_id = {r.image_id: i for i, r in enumerate(records)}
        by_name = {r.file_name: i for i, r in enumerate(records)}
        out, unknown = [], []
        for x in wanted:
            i = by_id.get(x) if isinstance(x, int) else by_name.get(str(x), by_id.get(
                int(x)) if str(x).isdigit() else None)
            (unknown if i is None else out).append(x if i is None else i)
        if unknown:
            raise ValueError(f"browse.images: not in the annotation file: {unknown}")
        return out
    n = min(max(int(num), 0), len(records))
    rng = np.random.default_rng(int(seed))
    return sorted(rng.choice(len(records), size=n, replace=False).tolist()) if n else []


def _label_namer(categories, ids_as_labels: bool):
    from mrcnn.data.meta import meta_from_categories

    meta = meta_from_categories(categories, ids_as_labels)

    def name(label: int) -> str:
        try:
            return meta.name_of_label(label)
        except (ValueError, IndexError):
            return str(label)

    return name


def _draw_one(config, ctx: dict, rec: ann_lib.ImageRecord, j: int) -> tuple[torch.Tensor, dict]:
    """(drawing, index entry) of one record, in the original or the augmented view."""
    from mrcnn.data import load_image

    raw = ctx["anns"].get(rec.image_id, [])
    verdicts = [annotation_verdict(ctx["images"][rec.image_id], a, ctx["categories"],
                                   ctx["with_masks"]) for a in raw]
    entry = {"image_id": rec.image_id, "file_name": rec.file_name, "kept": len(rec),
             "crowd": sum(v.status == "crowd" for v in verdicts),
             "skipped": [{"index": i, "annotation_id": a.get("id") if isinstance(a, dict)
                          else None, "why": v.why}
                         for i, (a, v) in enumerate(zip(raw, verdicts)) if v.status == "skipped"]}
    caption = [f"image {rec.image_id} ({rec.file_name}): {len(rec)} kept, "
               f"{entry['crowd']} crowd, {len(entry['skipped'])} skipped"]
    if ctx["dataset"] is not None:
        pos = ctx["positions"].get(rec.image_id)
        if pos is None:
            entry["note"] = "not fed to the model: no usable annotation (data.filter_empty)"
            image = load_image(os.path.join(ctx["img_dir"], rec.file_name))
            return with_caption(enlarge(image, MIN_SIDE)[0], caption + [entry["note"]]), entry
        sample = ctx["dataset"][(pos, int(config.browse.seed) + j)]
        info = sample["info"]
        caption.append(f"as fed: {info.size[1]}x{info.size[0]}"
                       f"{', flipped' if info.flipped else ''}")
        return with_caption(draw_augmented(sample, config.input, ctx["names"]), caption), entry
    image = load_image(os.path.join(ctx["img_dir"], rec.file_name))
    drawn = draw_original(image, rec, raw, verdicts, ctx["names"], ctx["with_masks"])
    caption += [f"#{s['index']}: {s['why'][:90]}" for s in entry["skipped"][:4]]
    return with_caption(drawn, caption), entry


def _context(config, split: str) -> dict:
    """What drawing needs, read once: the parser's records, the raw json, the dataset."""
    from mrcnn.data import catalog
    from mrcnn.data.coco import CocoTrainDataset

    img_dir, ann_file = catalog.require_dataset(config, config.data[split])
    with_masks = bool(config.model.mask_on)
    ids_as_labels = bool(config.data.category_ids_as_labels)
    # "skip": browsing is for finding bad records; failing on the first would hide the others.
    parsed = ann_lib.parse_coco_json(ann_file, on_bad="skip", training=True,
                                     with_masks=with_masks, ids_as_labels=ids_as_labels)
    with open(ann_file, "rb") as f:
        raw = json.load(f)
    anns: dict[int, list] = {}
    for a in raw.get("annotations") or []:
        if isinstance(a, dict) and isinstance(a.get("image_id"), int):
            anns.setdefault(a["image_id"], []).append(a)
    ctx = {"img_dir": img_dir, "ann_file": ann_file, "with_masks": with_masks,
           "records": parsed.records, "counts": dict(parsed.counts), "anns": anns,
           "images": {i["id"]: i for i in raw["images"] if isinstance(i, dict) and "id" in i},
           "categories": raw["categories"],
           "names": _label_namer(parsed.categories, ids_as_labels), "dataset": None}
    if config.browse.augmented:
        ds = CocoTrainDataset(img_dir, ann_file, config.input, on_bad_annotation="skip",
                              on_bad_image="fail", filter_empty=config.data.filter_empty,
                              ids_as_labels=ids_as_labels, with_masks=with_masks)
        ctx["dataset"] = ds
        ctx["positions"] = {ds.record(i).image_id: i for i in range(len(ds))}
    return ctx


def run(config: ml_collections.ConfigDict, workdir: str, device=None) -> dict:
    """Draws `browse.num_images` images of `data.<browse.split>` (or `browse.images`); returns
    {"dir", "sheet", "index", "images": [entries], "counts": the parser's drop counts,
    "report": report/index.html, rewritten to show them}."""
    b = config.browse
    if b.split not in ("train", "val"):
        raise ValueError(f"browse.split must be 'train' or 'val', got {b.split!r}")
    ctx = _context(config, b.split)
    positions = pick(ctx["records"], tuple(b.images), b.num_images, b.seed)
    out_dir = os.path.join(workdir, "browse", b.split + ("_augmented" if b.augmented else ""))
    drawings, entries = [], []
    for j, pos in enumerate(positions):
        rec = ctx["records"][pos]
        drawn, entry = _draw_one(config, ctx, rec, j)
        entry["png"] = f"{rec.image_id}.png"
        save_png(drawn, os.path.join(out_dir, entry["png"]))
        drawings.append(drawn)
        entries.append(entry)
    sheet = None
    if drawings:
        sheet = save_png(contact_sheet(drawings, int(b.columns), tile=int(b.tile)),
                         os.path.join(out_dir, "sheet.png"))
    index = {"split": b.split, "augmented": bool(b.augmented), "ann_file": ctx["ann_file"],
             "counts": ctx["counts"], "images": entries,
             "sheet": "sheet.png" if sheet else None}
    index_path = write_file(os.path.join(out_dir, "index.json"), json.dumps(index, indent=1))
    from mrcnn.analysis import report  # the page links the new sheet

    page = report.write_report(workdir, config)
    log.info("browse: %d images of %s drawn into %s (parser dropped: %s); report: %s",
             len(entries), b.split, out_dir, ctx["counts"] or "nothing", page)
    return {"dir": out_dir, "sheet": sheet, "index": index_path, "images": entries,
            "counts": ctx["counts"], "report": page}
