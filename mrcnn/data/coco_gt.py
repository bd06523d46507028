"""The evaluation ground truth, built from what the parser accepted.

pycocotools must never read a raw annotation file: garbage RLE counts hang its decoder, a NaN
polygon makes its rasterizer allocate gigabytes, a 2-point polygon raises TypeError, a missing
`area` or `iscrowd` raises KeyError after the whole inference, a UTF-8 BOM fails its json.load.
`coco_gt` returns the dict pycocotools' `COCO` indexes (`coco = COCO(); coco.dataset = d;
coco.createIndex()`), made only of validated records:

- images: the dataset's images (the evaluated ones, `image_ids`); images whose record was bad
  and skipped are not there;
- annotations: every accepted annotation, crowds included; skipped (bad) ones left out; boxes
  that are empty once clipped are left out (nothing can match them; training drops them too);
  `iscrowd` 0 when the file has none; `area` the file's, else the mask's pixel count as COCO
  defines it (polygons / RLE rasterized by pycocotools), else w x h without masks;
  segmentations as validated (polygon parts with fewer than 3 points removed, RLE compressed);
- categories: the file's (id, name); a category the model does not know stays: its objects are
  evaluated and never detected.

Box-only objects (`"segmentation": []`) have no mask: for `iou_type="segm"` they become crowd
regions of their box (a detection over them is neither a hit nor a false positive, and they are
not counted as missed); for "bbox" they are ordinary objects.
"""

from __future__ import annotations

from typing import Any

from pycocotools import mask as mask_util

from mrcnn.data.annotations import Instance, ParsedAnnotations


def _rle(inst: Instance, h: int, w: int) -> dict:
    """The instance's mask as compressed RLE (for the area), from validated data only."""
    if isinstance(inst.segm, bytes):
        return {"size": [h, w], "counts": inst.segm}
    parts = [p for p in inst.raw_polygons if len(p) >= 6]
    return mask_util.merge(mask_util.frPyObjects([[float(v) for v in p] for p in parts], h, w))


def _segmentation(inst: Instance) -> Any:
    if isinstance(inst.segm, bytes):
        return None  # filled by the caller, which knows the image size
    return [p for p in inst.raw_polygons if len(p) >= 6]


def _box_polygon(bbox: tuple[float, float, float, float]) -> list[list[float]]:
    x, y, w, h = bbox
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _annotation(inst: Instance, h: int, w: int, with_masks: bool, iou_type: str) -> dict:
    ann = {
        "id": inst.ann_id,
        "image_id": inst.image_id,
        "category_id": inst.category_id,
        "bbox": list(inst.bbox),
        "iscrowd": int(inst.iscrowd),
    }
    has_mask = with_masks and inst.segm is not None
    if has_mask:
        seg = _segmentation(inst)
        if seg is None:
            seg = {"size": [h, w], "counts": inst.segm.decode("ascii")}
        ann["segmentation"] = seg
    elif with_masks and iou_type == "segm":
        # Box-only: an ignored region of its box for mask AP (see the module docstring).
        ann["segmentation"], ann["iscrowd"] = _box_polygon(inst.bbox), 1
    if inst.area is not None:
        ann["area"] = inst.area
    elif has_mask:
        ann["area"] = float(mask_util.area(_rle(inst, h, w)))
    else:
        ann["area"] = float(inst.bbox[2] * inst.bbox[3])
    return ann


def coco_gt(source: Any, iou_type: str = "bbox") -> dict:
    """The ground truth of a test dataset (`CocoTestDataset`, or the `ParsedAnnotations` of a
    test-mode `parse_coco_json`) in the COCO json layout, restricted to its evaluated images.

    iou_type: "bbox" or "segm" (only box-only objects differ, see the module docstring).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    parsed: ParsedAnnotations = getattr(source, "parsed", source)
    wanted = set(getattr(source, "image_ids", [r.image_id for r in parsed.records]))
    images, sizes = [], {}
    for r in parsed.records:
        if r.image_id in wanted:
            images.append(
                {"id": r.image_id, "file_name": r.file_name, "height": r.height, "width": r.width}
            )
            sizes[r.image_id] = (r.height, r.width)
    anns = [
        _annotation(inst, *sizes[inst.image_id], parsed.with_masks, iou_type)
        for inst in parsed.instances
        if inst.image_id in sizes
    ]
    categories = [{"id": cid, "name": name} for cid, name in parsed.categories]
    return {"images": images, "annotations": anns, "categories": categories}


def coco_api(gt: dict):
    """A pycocotools `COCO` indexing `gt` (the output of `coco_gt`), without its prints."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
