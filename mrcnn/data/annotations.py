"""Reading a COCO-format annotation json into validated, compact per-image records.

The json is parsed as data (the stdlib parser pycocotools uses; nothing is evaluated; a UTF-8
BOM is accepted) and every record the pipeline relies on is checked before any C code
(pycocotools' RLE routines) sees it. The evaluation ground truth is built from what is accepted
here (`coco_gt.py`), never from the raw file.

What is checked, and what happens (`on_bad` is `data.on_bad_annotation`):
- not JSON (the message has the line and column), not an object, no "images" / "categories"
  list, bad or duplicate categories: `AnnotationError` always (the file is unusable);
- an image record without an integer id, positive integer height / width or a string
  file_name (relative, sub-folders allowed, no ".."), or a duplicate image id: "fail" ->
  `AnnotationError`; "skip" -> the image and its annotations are dropped and counted
  (`bad_image_record`);
- an annotation that is not an object, lacks id / image_id / category_id / bbox (/ segmentation
  when masks are wanted), names an unknown image or category, has a non-finite bbox, an `area`
  that is not a finite number >= 0, a duplicate id, or a malformed segmentation (polygons with
  NaN coordinates, odd length, coordinates far outside the image, no part with >= 3 points; RLE
  whose size is not the image's or whose counts do not cover it): "fail" -> `AnnotationError`
  naming the file, image id and annotation id; "skip" -> dropped and counted (`bad_annotation`);
- always dropped and counted, never an error: boxes of zero or negative size, thinner than
  `MIN_BOX_SIDE` or empty once clipped to the image (`zero_size_box`); polygon parts with fewer
  than 3 points when the instance has other, valid parts (`degenerate_polygon_part`, they enclose
  no area); crowd annotations in training (`crowd`, ignored as the seed does); box-only objects
  (`"segmentation": []`, as CVAT and Roboflow write rectangles) in mask training (`box_only`);
- missing `iscrowd` is 0, missing `area` is computed for evaluation; extra keys are ignored;
  categories that name no class and no annotation uses (Roboflow's group category, labelme's
  `_background_`) are left out with a warning.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import math
import os
import re
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Coordinates beyond this many image sizes outside the image are corrupt, not sloppy clicking
# (COCO has polygons a pixel or two outside); bounding them also keeps pycocotools' rasterizer
# away from integer overflow.
_MAX_OUTSIDE = 1.0
_LOGGED_PER_KIND = 10
# Boxes are float32 downstream and get scaled and flipped; a side below this (in original
# pixels) could round to zero there and make the box coder take log(0).
MIN_BOX_SIDE = 0.01


class AnnotationError(ValueError):
    """A malformed annotation file or record; the message names the file and, for a record, the
    image id and annotation id."""

    def __reduce__(self):
        # Rebuilt from its one-line message (it crosses from loader workers intact).
        return (type(self), (str(self),))


@dataclasses.dataclass
class ImageRecord:
    """One image and its usable instances, in original-image pixels.

    boxes: float32 [N, 4] xyxy, clipped to the image; labels: int64 [N] (contiguous 1..K, or
    category ids when the dataset maps ids to labels); category_ids: int64 [N].
    Masks, when kept: `poly_coords` float32 [sum of part lengths] holds every polygon part of
    the image back to back, `poly_part_lens` int32 [P] the length (2 x points) of each part,
    `poly_parts` int32 [N] how many parts each instance has (0 for an RLE instance), and
    `rles` one compressed RLE `bytes` per instance (None for polygon instances).
    """

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    category_ids: np.ndarray
    poly_coords: np.ndarray | None = None
    poly_part_lens: np.ndarray | None = None
    poly_parts: np.ndarray | None = None
    rles: list[bytes | None] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def polygons(self) -> list[list[np.ndarray]]:
        """Per instance, its polygon parts as float32 [2k] arrays ([] for RLE instances)."""
        if self.poly_parts is None:
            return [[] for _ in range(len(self))]
        parts = (
            np.split(self.poly_coords, np.cumsum(self.poly_part_lens)[:-1])
            if len(self.poly_part_lens)
            else []
        )
        out, k = [], 0
        for n in self.poly_parts.tolist():
            out.append(list(parts[k : k + n]))
            k += n
        return out


@dataclasses.dataclass
class ParsedAnnotations:
    """What `parse_coco_json` returns. categories: (id, name) sorted by id; instances: the
    accepted annotations of a test-mode parse (the evaluation ground truth), [] in training;
    with_masks: whether segmentations were checked and kept."""

    records: list[ImageRecord]
    categories: list[tuple[int, str]]
    counts: collections.Counter
    instances: list["Instance"] = dataclasses.field(default_factory=list)
    with_masks: bool = True


class _Bad(Exception):
    """A record-level problem; turned into AnnotationError or a skip by the caller."""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _pos_int(x: Any) -> int | None:
    if _is_int(x) and x > 0:
        return x
    if isinstance(x, float) and math.isfinite(x) and x.is_integer() and x > 0:
        return int(x)
    return None


def _finite_numbers(values: Any, what: str) -> np.ndarray:
    if not isinstance(values, list):
        raise _Bad(f"{what} must be a list of numbers, got {_short(values)}")
    try:
        # One C pass instead of a Python loop over every coordinate (COCO has ~40M of them).
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        raise _Bad(f"{what} must be a flat list of numbers, got {_short(values)}") from None
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "biuf"):
        raise _Bad(f"{what} must be a flat list of numbers, got {_short(values)}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise _Bad(f"{what} has NaN or infinite values: {_short(values)}")
    return arr


def _short(x: Any, n: int = 80) -> str:
    s = repr(x)
    return s if len(s) <= n else s[: n - 3] + "..."


def rle_string_counts(s: bytes) -> list[int] | None:
    """Decodes the run lengths of a compressed COCO RLE string (pycocotools' `rleFrString`), or
    None when the string is malformed. Pure Python so a corrupt string never reaches C."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None
            c = s[p] - 48
            if c < 0 or c > 63:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if k > 6:  # > 30 bits: no real image needs it, and C would overflow its shift
                return None
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _check_rle(seg: dict, h: int, w: int) -> bytes:
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise _Bad(f"RLE size must be [height, width], got {_short(size)}")
    if size != [h, w]:
        raise _Bad(f"RLE size {size} is not the image's [{h}, {w}]")
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != h * w:
            raise _Bad(f"uncompressed RLE counts must be >= 0 and sum to {h * w}")
        from pycocotools import mask as mask_util

        return mask_util.frPyObjects(seg, h, w)["counts"]
    if isinstance(counts, (str, bytes)):
        raw = counts.encode("ascii", "replace") if isinstance(counts, str) else counts
        decoded = rle_string_counts(raw)
        if decoded is None or any(c < 0 for c in decoded) or sum(decoded) != h * w:
            raise _Bad(f"compressed RLE counts do not decode to {h * w} pixels")
        return raw
    raise _Bad(f"RLE counts must be a string or a list, got {_short(counts)}")


def _check_polygons(seg: list, h: int, w: int, counts: collections.Counter) -> list[np.ndarray]:
    if not seg:
        raise _Bad("segmentation is an empty list")
    parts, degenerate = [], 0
    lo_x, hi_x, lo_y, hi_y = (
        -_MAX_OUTSIDE * w,
        (1 + _MAX_OUTSIDE) * w,
        -_MAX_OUTSIDE * h,
        (1 + _MAX_OUTSIDE) * h,
    )
    for part in seg:
        arr = _finite_numbers(part, "polygon")
        if arr.size % 2:
            raise _Bad(f"polygon has an odd number of coordinates ({arr.size})")
        if arr.size and (
            arr[0::2].min() < lo_x
            or arr[0::2].max() > hi_x
            or arr[1::2].min() < lo_y
            or arr[1::2].max() > hi_y
        ):
            raise _Bad(f"polygon coordinates far outside the {w}x{h} image: {_short(part)}")
        if arr.size < 6:
            degenerate += 1
            continue
        parts.append(arr.astype(np.float32))
    if not parts:
        raise _Bad(f"polygon with fewer than 3 points: {_short(seg)}")
    if degenerate:
        counts["degenerate_polygon_part"] += degenerate
    return parts


_NUMBER_TYPES = frozenset((int, float))


def _check_box(values: Any) -> tuple[float, float, float, float]:
    """[x, y, w, h] of four finite numbers (plain Python: numpy costs more for four values)."""
    if not isinstance(values, list) or len(values) != 4:
        raise _Bad(f"bbox must have 4 numbers [x, y, w, h], got {_short(values)}")
    if not _NUMBER_TYPES.issuperset(map(type, values)):
        raise _Bad(f"bbox must be a list of numbers, got {_short(values)}")
    try:
        box = tuple(float(v) for v in values)
    except OverflowError:
        raise _Bad(f"bbox has NaN or infinite values: {_short(values)}") from None
    if not all(map(math.isfinite, box)):
        raise _Bad(f"bbox has NaN or infinite values: {_short(values)}")
    return box


class _PolygonChecks:
    """Polygon segmentations gathered during the pass over the annotations, then checked all at
    once with a few numpy passes (COCO has ~1M polygons; per-polygon numpy calls cost ~10 s).

    `add` does the structural checks (a non-empty list of lists of numbers); `run` checks
    parity, finiteness and range of every part and returns, per item, the float32 parts or the
    reason it is bad.
    """

    def __init__(self) -> None:
        self.items: list[tuple[list, int, int]] = []

    def add(self, seg: list, h: int, w: int) -> int:
        if not seg:
            raise _Bad("segmentation is an empty list")
        for part in seg:
            if not isinstance(part, list) or not _NUMBER_TYPES.issuperset(map(type, part)):
                raise _Bad(f"polygon must be a flat list of numbers, got {_short(part)}")
        self.items.append((seg, h, w))
        return len(self.items) - 1

    def run(self, counts: collections.Counter) -> list[list[np.ndarray] | str]:
        parts = [p for seg, _, _ in self.items for p in seg]
        lens = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
        total = int(lens.sum())
        try:
            coords = np.fromiter(
                itertools.chain.from_iterable(parts), dtype=np.float64, count=total
            )
        except OverflowError:  # an integer beyond float range somewhere: check one by one
            return [self._one(seg, h, w, counts) for seg, h, w in self.items]
        starts = np.cumsum(lens) - lens
        part_of = np.repeat(np.arange(len(parts)), lens)
        pos = np.arange(total) - np.repeat(starts, lens)
        item_of_part = np.repeat(np.arange(len(self.items)), [len(seg) for seg, _, _ in self.items])
        hw = np.array([(h, w) for _, h, w in self.items], dtype=np.float64).reshape(-1, 2)
        # Per coordinate: its image's width for x, height for y.
        size = np.where(
            pos % 2 == 0,
            hw[item_of_part[part_of], 1] if total else 0,
            hw[item_of_part[part_of], 0] if total else 0,
        )
        nonfinite = np.bincount(part_of, weights=~np.isfinite(coords), minlength=len(parts))
        with np.errstate(invalid="ignore"):
            outside = (coords < -_MAX_OUTSIDE * size) | (coords > (1 + _MAX_OUTSIDE) * size)
        outside = np.bincount(part_of, weights=outside, minlength=len(parts))
        bad_part = (lens % 2 == 1) | (nonfinite > 0) | (outside > 0)
        short = lens < 6
        with np.errstate(over="ignore"):  # huge values overflow; their parts are bad anyway
            coords32 = coords.astype(np.float32)
        out: list[list[np.ndarray] | str] = []
        k = 0
        for seg, h, w in self.items:
            n_parts = len(seg)
            if not bad_part[k : k + n_parts].any():  # the common case: views, no checks
                kept = [
                    coords32[starts[j] : starts[j] + lens[j]]
                    for j in range(k, k + n_parts)
                    if not short[j]
                ]
                degenerate = n_parts - len(kept)
                if not kept:
                    out.append(f"polygon with fewer than 3 points: {_short(seg)}")
                else:
                    if degenerate:
                        counts["degenerate_polygon_part"] += degenerate
                    out.append(kept)
                k += n_parts
                continue
            for j, part in enumerate(seg, start=k):
                if lens[j] % 2:
                    reason = f"polygon has an odd number of coordinates ({int(lens[j])})"
                elif nonfinite[j]:
                    reason = f"polygon has NaN or infinite values: {_short(part)}"
                elif outside[j]:
                    reason = f"polygon coordinates far outside the {w}x{h} image: {_short(part)}"
                else:
                    continue
                break
            out.append(reason)
            k += n_parts
        return out

    @staticmethod
    def _one(seg: list, h: int, w: int, counts: collections.Counter) -> list[np.ndarray] | str:
        try:
            return _check_polygons(seg, h, w, counts)
        except _Bad as e:
            return str(e)


def _check_image(img: Any) -> tuple[int, str, int, int]:
    if not isinstance(img, dict):
        raise _Bad(f"image record is not an object: {_short(img)}")
    iid, name = img.get("id"), img.get("file_name")
    h, w = _pos_int(img.get("height")), _pos_int(img.get("width"))
    if not _is_int(iid):
        raise _Bad(f"image record without an integer id: {_short(img)}")
    if not isinstance(name, str) or not name:
        raise _Bad(f"image {iid} has no file_name")
    # Converters run on Windows write sub-folders with backslashes (labelme2coco's relpath);
    # a backslash inside a real file name is far rarer than that.
    rel = name.replace("\\", "/")
    # file_name is relative to img_dir: an absolute path, a drive or ".." would read outside it.
    if os.path.isabs(rel) or ".." in rel.split("/") or re.match(r"[A-Za-z]:", rel):
        raise _Bad(f"image {iid} file_name {name!r} leaves the image folder (absolute or '..')")
    name = rel
    if h is None or w is None:
        raise _Bad(
            f"image {iid} needs positive integer height and width, got "
            f"{img.get('height')!r} x {img.get('width')!r}"
        )
    return iid, name, h, w


def _read_json(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON (text encoding): {e}") from e
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read: {e}") from e
    except RecursionError as e:
        raise AnnotationError(f"{path}: JSON nested too deeply") from e
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: the top level must be an object, got {type(data).__name__}")
    return data


def _read_categories(path: str, data: dict) -> list[tuple[int, str]]:
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise AnnotationError(f"{path}: needs a non-empty 'categories' list")
    out: dict[int, str] = {}
    for c in cats:
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise AnnotationError(f"{path}: category without an integer id: {_short(c)}")
        if c["id"] < 0:
            raise AnnotationError(f"{path}: category id {c['id']} is negative")
        if c["id"] in out:
            raise AnnotationError(f"{path}: category id {c['id']} appears twice")
        name = c.get("name")
        out[c["id"]] = name if isinstance(name, str) else str(c["id"])
    for cid, why in _non_classes(data, cats, out):
        log.warning("%s: category %d (%r) is not a class: %s", path, cid, out.pop(cid), why)
    return sorted(out.items())


# What labelme's labelme2coco writes as category 0 (its labels.txt starts __ignore__,
# _background_); no object is ever annotated with it.
_LABELME_BACKGROUND = "_background_"


def _non_classes(data: dict, cats: list[dict], names: dict[int, str]) -> list[tuple[int, str]]:
    """(id, why) of categories that no annotation uses and that name no class: a group above
    the others (Roboflow writes one, id 0, as the supercategory of the real classes) or
    labelme's `_background_`. Never all of them."""
    group_names = {
        c.get("supercategory")
        for c in cats
        if isinstance(c.get("supercategory"), str) and c.get("supercategory") != c.get("name")
    }
    anns = data.get("annotations")
    anns = anns if isinstance(anns, list) else []
    used_ids = (a.get("category_id") for a in anns if isinstance(a, dict))
    used = {c for c in used_ids if _is_int(c)}  # only well-formed (hashable) ids can match
    out = []
    for cid, name in names.items():
        if cid in used:
            continue
        if name in group_names:
            out.append((cid, "only the supercategory of others, no annotation uses it"))
        elif name == _LABELME_BACKGROUND:
            out.append((cid, "labelme's background label, no annotation uses it"))
    return out if len(out) < len(names) else []


def read_categories(path: str) -> list[tuple[int, str]]:
    """(category id, name) of an annotation file, sorted by id."""
    return _read_categories(path, _read_json(path))


@dataclasses.dataclass(slots=True)
class Instance:
    """One annotation that passed the record checks, as the parser holds it until the polygons
    are checked in one batch.

    bbox: [x, y, w, h] as in the file; box: xyxy clipped to the image, None when it is empty
    (thinner than MIN_BOX_SIDE); area: the file's area, None when the file has none.
    segm: None (no mask kept), bytes (compressed RLE), int (an index into the pending polygon
    checks) and, once checked, list of float32 polygon parts; raw_polygons: the file's parts
    (the numbers evaluation must see). box_only: the file says `"segmentation": []`.
    """

    ann_id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    box: tuple[float, float, float, float] | None
    iscrowd: bool
    area: float | None
    segm: Any = None
    raw_polygons: list | None = None
    box_only: bool = False


@dataclasses.dataclass(frozen=True)
class _ImageInfo:
    file_name: str
    height: int
    width: int


class _BadRecords:
    """Turns record-level problems into AnnotationError ("fail") or a counted, logged skip."""

    def __init__(self, path: str, on_bad: str):
        if on_bad not in ("fail", "skip"):
            raise ValueError(f"on_bad must be 'fail' or 'skip', got {on_bad!r}")
        self.path, self.on_bad = path, on_bad
        self.counts: collections.Counter = collections.Counter()
        self._logged: collections.Counter = collections.Counter()

    def __call__(self, kind: str, where: str, why: str) -> None:
        msg = f"{self.path}: {where}: {why}"
        if self.on_bad == "fail":
            raise AnnotationError(
                msg + " (set --config.data.on_bad_annotation=skip to drop such records)"
            )
        self.counts[kind] += 1
        if self._logged[kind] < _LOGGED_PER_KIND:
            self._logged[kind] += 1
            log.warning("skipping a bad record: %s", msg)


def _read_images(images: list, bad: _BadRecords) -> tuple[dict[int, _ImageInfo], set[int]]:
    """(valid images by id, ids of bad or duplicated image records: their annotations go too)."""
    image_info: dict[int, _ImageInfo] = {}
    bad_ids: set[int] = set()
    for img in images:
        try:
            iid, name, h, w = _check_image(img)
            if iid in image_info or iid in bad_ids:
                raise _Bad(f"image id {iid} appears twice")
        except _Bad as e:
            where = f"image {img.get('id')!r}" if isinstance(img, dict) else "image record"
            bad("bad_image_record", where, str(e))
            if isinstance(img, dict) and _is_int(img.get("id")):
                bad_ids.add(img["id"])
                image_info.pop(img["id"], None)
            continue
        image_info[iid] = _ImageInfo(name, h, w)
    return image_info, bad_ids


@dataclasses.dataclass
class _AnnContext:
    """What the check of one annotation needs to know about the file and the caller."""

    images: dict[int, _ImageInfo]
    bad_image_ids: set[int]
    category_ids: frozenset[int]
    training: bool
    with_masks: bool
    counts: collections.Counter
    polys: _PolygonChecks = dataclasses.field(default_factory=lambda: _PolygonChecks())
    seen_ids: set[int] = dataclasses.field(default_factory=set)


_REQUIRED = ("id", "image_id", "category_id", "bbox")


def _check_ids(ann: Any, ctx: _AnnContext) -> bool:
    """Structure, keys and ids of one annotation; False when it goes with a bad image."""
    if not isinstance(ann, dict):
        raise _Bad(f"annotation record is not an object: {_short(ann)}")
    missing = [k for k in _REQUIRED if k not in ann]
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1, True, False):
        raise _Bad(f"iscrowd must be 0 or 1, got {_short(crowd)}")
    # Crowd regions need their mask only where evaluation uses them (they are not trained on).
    needs_segm = ctx.with_masks and not (crowd and ctx.training)
    if needs_segm and "segmentation" not in ann:
        missing.append("segmentation")
    if missing:
        raise _Bad(f"missing keys {missing}")
    aid, iid, cid = ann["id"], ann["image_id"], ann["category_id"]
    if not _is_int(aid):
        raise _Bad(f"annotation id must be an integer, got {_short(aid)}")
    if aid in ctx.seen_ids:
        raise _Bad(f"annotation id {aid} appears twice")
    ctx.seen_ids.add(aid)
    if not _is_int(iid):
        raise _Bad(f"image_id must be an integer, got {_short(iid)}")
    if iid in ctx.bad_image_ids:
        ctx.counts["dropped_with_image"] += 1
        return False
    if iid not in ctx.images:
        raise _Bad(f"image_id {iid} is not in 'images'")
    if not _is_int(cid) or cid not in ctx.category_ids:
        raise _Bad(f"category_id {_short(cid)} is not in 'categories'")
    return True


def _check_area(ann: dict) -> float | None:
    area = ann.get("area")
    if area is None:
        return None
    if type(area) not in _NUMBER_TYPES or not math.isfinite(area) or area < 0:
        raise _Bad(f"area must be a finite number >= 0, got {_short(area)}")
    return float(area)


def _check_segmentation(seg: Any, img: _ImageInfo, ctx: _AnnContext) -> tuple[Any, list | None]:
    """(segm, raw polygon parts) of a segmentation (see Instance.segm); [] is box-only."""
    if isinstance(seg, list):
        if not seg:
            return None, None
        return ctx.polys.add(seg, img.height, img.width), seg
    if isinstance(seg, dict):
        return _check_rle(seg, img.height, img.width), None
    raise _Bad(f"segmentation must be polygons or RLE, got {_short(seg)}")


def _check_annotation(ann: Any, ctx: _AnnContext) -> Instance | None:
    """One annotation as an Instance; None when it is dropped without being bad (a crowd in
    training, one of a bad image). Raises _Bad."""
    if not _check_ids(ann, ctx):
        return None
    crowd = bool(ann.get("iscrowd", 0))
    if crowd and ctx.training:
        ctx.counts["crowd"] += 1
        return None
    img = ctx.images[ann["image_id"]]
    x, y, bw, bh = _check_box(ann["bbox"])
    inst = Instance(
        ann["id"], ann["image_id"], ann["category_id"], (x, y, bw, bh), None, crowd, None
    )
    inst.area = _check_area(ann)
    if ctx.with_masks and "segmentation" in ann:
        inst.segm, inst.raw_polygons = _check_segmentation(ann["segmentation"], img, ctx)
        inst.box_only = ann["segmentation"] == []
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + bw, float(img.width)), min(y + bh, float(img.height))
    if bw > 0 and bh > 0 and x2 - x1 >= MIN_BOX_SIDE and y2 - y1 >= MIN_BOX_SIDE:
        inst.box = (x1, y1, x2, y2)
    return inst


def _read_annotations(anns: list, ctx: _AnnContext, bad: _BadRecords) -> list[Instance]:
    """Every usable annotation, polygons checked; bad ones reported, empty boxes dropped."""
    insts: list[Instance] = []
    for ann in anns:
        try:
            inst = _check_annotation(ann, ctx)
        except _Bad as e:
            aid = ann.get("id") if isinstance(ann, dict) else None
            iid = ann.get("image_id") if isinstance(ann, dict) else None
            bad("bad_annotation", f"image {iid!r}, annotation {aid!r}", str(e))
            continue
        if inst is not None:  # kept even when the box is empty: its polygon is still checked
            insts.append(inst)
    checked = ctx.polys.run(ctx.counts) if ctx.polys.items else []
    out = []
    for inst in insts:
        if isinstance(inst.segm, int):
            inst.segm = checked[inst.segm]
            if isinstance(inst.segm, str):
                where = f"image {inst.image_id!r}, annotation {inst.ann_id!r}"
                bad("bad_annotation", where, inst.segm)
                continue
        if inst.box is None:
            ctx.counts["zero_size_box"] += 1
            continue
        out.append(inst)
    return out


def _drop_box_only(insts: list[Instance], counts: collections.Counter) -> list[Instance]:
    """Training with masks: box-only objects (`"segmentation": []`, as CVAT and Roboflow write
    rectangles) have no mask to learn from; they are dropped and counted (detectron2 does the
    same), with one warning."""
    kept = [i for i in insts if not i.box_only]
    if len(kept) < len(insts):
        counts["box_only"] += len(insts) - len(kept)
        log.warning(
            "%d box-only annotations (\"segmentation\": []) have no mask to train on: dropped "
            "(first: image %d, annotation %d)",
            len(insts) - len(kept),
            next(i.image_id for i in insts if i.box_only),
            next(i.ann_id for i in insts if i.box_only),
        )
    return kept


def _top_level(path: str, data: dict, training: bool) -> tuple[list, list]:
    images = data.get("images")
    if not isinstance(images, list):
        raise AnnotationError(f"{path}: needs an 'images' list")
    anns = data.get("annotations", None if training else [])
    if not isinstance(anns, list):
        raise AnnotationError(f"{path}: needs an 'annotations' list")
    return images, anns


def parse_coco_json(
    path: str,
    *,
    on_bad: str = "fail",
    training: bool = True,
    with_masks: bool = True,
    ids_as_labels: bool = False,
) -> ParsedAnnotations:
    """Reads and validates `path`; returns one record per valid image, sorted by image id.

    training: crowd annotations are dropped (counted) and "annotations" must exist; otherwise
      the records carry no instances and `instances` holds every accepted annotation (crowds
      included) for the evaluation ground truth (`coco_gt`). with_masks: segmentations are
      required, checked and kept. ids_as_labels: label = category id (else 1..K over the
      sorted category ids).
    Raises AnnotationError (see the module docstring for what is an error and what a skip).
    """
    bad = _BadRecords(path, on_bad)
    data = _read_json(path)
    categories = _read_categories(path, data)
    images, anns = _top_level(path, data, training)
    image_info, bad_ids = _read_images(images, bad)
    ctx = _AnnContext(
        image_info, bad_ids, frozenset(c for c, _ in categories), training, with_masks, bad.counts
    )
    insts = _read_annotations(anns, ctx, bad)
    if training and with_masks:
        insts = _drop_box_only(insts, bad.counts)
    cat_to_label = {cid: (cid if ids_as_labels else i + 1) for i, (cid, _) in enumerate(categories)}
    per_image: dict[int, list[Instance]] = collections.defaultdict(list)
    if training:
        for inst in insts:
            per_image[inst.image_id].append(inst)
    records = [
        _make_record(iid, image_info[iid], per_image.get(iid, []), cat_to_label, with_masks)
        for iid in sorted(image_info)
    ]
    if bad.counts:
        log.info("%s: %d images; dropped or skipped: %s", path, len(records), dict(bad.counts))
    return ParsedAnnotations(
        records, categories, bad.counts, [] if training else insts, with_masks
    )


def _make_record(
    iid: int, img: _ImageInfo, insts: list[Instance], cat_to_label: dict, with_masks: bool
) -> ImageRecord:
    n = len(insts)
    boxes = np.array([i.box for i in insts], dtype=np.float32).reshape(n, 4)
    labels = np.array([cat_to_label[i.category_id] for i in insts], dtype=np.int64)
    cids = np.array([i.category_id for i in insts], dtype=np.int64)
    rec = ImageRecord(iid, img.file_name, img.height, img.width, boxes, labels, cids)
    if with_masks:
        coords, lens, parts, rles = [], [], [], []
        for inst in insts:
            if isinstance(inst.segm, bytes):
                parts.append(0)
                rles.append(inst.segm)
            else:
                parts.append(len(inst.segm))
                lens.extend(len(p) for p in inst.segm)
                coords.extend(inst.segm)
                rles.append(None)
        rec.poly_coords = (np.concatenate(coords) if coords else np.zeros(0)).astype(np.float32)
        rec.poly_part_lens = np.array(lens, dtype=np.int32)
        rec.poly_parts = np.array(parts, dtype=np.int32)
        rec.rles = rles
    return rec
