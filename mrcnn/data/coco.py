"""COCO-format datasets: training samples with targets, test samples without.

Records are validated once (annotations.py) and kept serialized (serialize.py); a sample is
decoded, preprocessed (transforms.py) and its annotations mapped into the resized image here.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ml_collections
import numpy as np
import torch
from pycocotools import mask as mask_util

from mrcnn.data import annotations as ann_lib
from mrcnn.data import lsj
from mrcnn.data import transforms as T
from mrcnn.data.image_io import ImageError, load_image
from mrcnn.data.meta import DatasetMeta, meta_from_categories
from mrcnn.data.samplers import aspect_groups
from mrcnn.data.serialize import SerializedList
from mrcnn.structures import ImageInfo, InstanceMasks, Targets

log = logging.getLogger(__name__)

# Consecutive unreadable images tolerated before training gives up (a missing folder, a full
# disk): skipping is for the odd corrupt file, not for a dataset that is not there.
MAX_CONSECUTIVE_BAD_IMAGES = 20


def read_checked_image(path: str, height: int, width: int) -> torch.Tensor:
    """`load_image`, checked against the annotation's size.

    When the EXIF-rotated image does not match the annotation but the stored pixels do, the
    annotation was made on the stored pixels: those are returned. Any other mismatch raises
    ImageError (boxes would land in the wrong place).
    """
    image = load_image(path)
    if tuple(image.shape[-2:]) == (height, width):
        return image
    raw = load_image(path, apply_exif=False)
    if tuple(raw.shape[-2:]) == (height, width):
        return raw
    raise ImageError(
        path,
        f"decoded size {tuple(image.shape[-2:])} (h, w) does not match the "
        f"annotation's ({height}, {width})",
    )


# What torch raises for an image it cannot process (an impossible size, no memory for a
# gigapixel file): such an image is reported like an unreadable one, never a crash of the run.
_PROCESSING_ERRORS = (RuntimeError, ValueError, MemoryError)


def _test_input(
    path: str, image: torch.Tensor, input_cfg: ml_collections.ConfigDict
) -> tuple[torch.Tensor, T.ScaleInfo]:
    try:
        return T.preprocess(image, input_cfg, train=False)
    except _PROCESSING_ERRORS as e:
        raise ImageError(path, f"cannot be processed: {type(e).__name__}: {e}") from e


def load_preprocessed(
    path: str, input_cfg: ml_collections.ConfigDict
) -> tuple[torch.Tensor, torch.Tensor, T.ScaleInfo]:
    """(decoded uint8 [3, H, W], preprocessed test input, ScaleInfo) of an image file; any
    failure to read or to process it is an ImageError naming the file (predict reports and
    skips that file; the others complete)."""
    image = load_image(path)
    x, info = _test_input(path, image, input_cfg)
    return image, x, info


def record_to_targets(rec: ann_lib.ImageRecord, info: T.ScaleInfo, with_masks: bool) -> Targets:
    """A record's instances in the preprocessed image: boxes float32 [N, 4] xyxy, labels int64
    [N], masks as InstanceMasks (polygons resized and flipped like the image; RLE instances
    decoded into uint8 bitmasks at the resized size)."""
    boxes = T.resize_boxes(torch.from_numpy(rec.boxes), info.orig_size, info.size)
    width = info.size[1]
    if info.flipped:
        boxes = T.flip_boxes(boxes, width)
    labels = torch.from_numpy(rec.labels)
    if not with_masks:
        return Targets(boxes, labels, None)
    polygons = []
    for parts in rec.polygons():
        out = []
        for p in parts:
            q = T.resize_polygon(torch.from_numpy(p), info.orig_size, info.size)
            out.append(T.flip_polygon(q, width) if info.flipped else q)
        polygons.append(out)
    bitmasks = None
    rle_rows = [i for i, r in enumerate(rec.rles) if r is not None]
    if rle_rows:
        h, w = info.orig_size
        decoded = mask_util.decode([{"size": [h, w], "counts": rec.rles[i]} for i in rle_rows])
        m = torch.from_numpy(np.ascontiguousarray(decoded.transpose(2, 0, 1)))
        m = T.resize_bitmasks(m, info.size)
        if info.flipped:
            m = m.flip(-1)
        bitmasks = torch.zeros((len(rec), info.size[0], info.size[1]), dtype=torch.uint8)
        bitmasks[rle_rows] = m
    return Targets(boxes, labels, InstanceMasks(polygons, bitmasks))


class CocoTrainDataset(torch.utils.data.Dataset):
    """Training images with targets.

    Keys are (index, augmentation seed) pairs from `TrainBatchSampler` (a bare int index uses
    the index as the seed). A sample is a dict: image (normalized float32 [3, h, w]), info
    (ImageInfo), target (Targets), skipped (paths of unreadable images replaced by the next
    image of the same aspect group; only with `on_bad_image="skip"`).

    Attributes: img_dir, ann_file, meta (DatasetMeta), bad_counts (dict of what was dropped at
    load time; the train loader adds "bad_image" as it goes), group_ids (int64 [N], 0 landscape
    / 1 portrait), heights / widths.
    """

    def __init__(
        self,
        img_dir: str,
        ann_file: str,
        input_cfg: ml_collections.ConfigDict,
        *,
        on_bad_annotation: str = "fail",
        on_bad_image: str = "skip",
        filter_empty: bool = True,
        ids_as_labels: bool = False,
        with_masks: bool = True,
    ):
        if on_bad_image not in ("fail", "skip"):
            raise ValueError(f"on_bad_image must be 'fail' or 'skip', got {on_bad_image!r}")
        self.img_dir, self.ann_file = img_dir, ann_file
        self.input_cfg = input_cfg
        self.on_bad_image, self.with_masks = on_bad_image, with_masks
        parsed = ann_lib.parse_coco_json(
            ann_file,
            on_bad=on_bad_annotation,
            training=True,
            with_masks=with_masks,
            ids_as_labels=ids_as_labels,
        )
        records = parsed.records
        counts = dict(parsed.counts)
        if filter_empty:
            kept = [r for r in records if len(r)]
            if len(kept) < len(records):
                counts["empty_image"] = len(records) - len(kept)
            records = kept
        if not records:
            raise ann_lib.AnnotationError(
                f"{ann_file}: no training image with a usable annotation "
                f"(dropped: {counts or 'nothing'})"
            )
        counts.setdefault("bad_image", 0)
        self.bad_counts: dict[str, int] = counts
        self.meta: DatasetMeta = meta_from_categories(parsed.categories, ids_as_labels)
        self.heights = np.array([r.height for r in records], dtype=np.int64)
        self.widths = np.array([r.width for r in records], dtype=np.int64)
        self.group_ids = aspect_groups(self.heights, self.widths)
        self.num_instances = int(sum(len(r) for r in records))
        self._next_in_group = self._cycle_within_groups(self.group_ids)
        self._records = SerializedList(records)

    @staticmethod
    def _cycle_within_groups(group_ids: np.ndarray) -> np.ndarray:
        nxt = np.empty_like(group_ids)
        for g in np.unique(group_ids):
            members = np.flatnonzero(group_ids == g)
            nxt[members] = np.roll(members, -1)
        return nxt

    def __len__(self) -> int:
        return len(self._records)

    def record(self, index: int) -> ann_lib.ImageRecord:
        return self._records[index]

    def _sample(
        self, path: str, rec: ann_lib.ImageRecord, image: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, T.ScaleInfo, Targets]:
        """(input, ScaleInfo, targets) of a decoded image; what torch cannot process is an
        ImageError naming the file (skipped like an unreadable one)."""
        try:
            if self.input_cfg.get("lsj_size"):  # large-scale jitter: a fixed S x S crop
                return lsj.lsj_sample(
                    image, self.input_cfg, rng, lambda i: record_to_targets(rec, i, self.with_masks)
                )
            x, info = T.preprocess(image, self.input_cfg, train=True, rng=rng)
            return x, info, record_to_targets(rec, info, self.with_masks)
        except _PROCESSING_ERRORS as e:
            raise ImageError(path, f"cannot be processed: {type(e).__name__}: {e}") from e

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, seed = (key, key) if isinstance(key, (int, np.integer)) else key
        rng = np.random.default_rng(int(seed))
        skipped: list[str] = []
        index = int(index)
        for _ in range(MAX_CONSECUTIVE_BAD_IMAGES):
            rec = self._records[index]
            path = os.path.join(self.img_dir, rec.file_name)
            try:
                image = read_checked_image(path, rec.height, rec.width)
                x, info, target = self._sample(path, rec, image, rng)
            except ImageError as e:
                e = e.with_image_id(rec.image_id)
                if self.on_bad_image == "fail":
                    raise e from None
                log.warning("skipping unusable training image (%s); taking the next one", e)
                skipped.append(path)
                index = int(self._next_in_group[index])
                continue
            image_info = ImageInfo(
                rec.image_id, rec.file_name, info.orig_size, info.size, info.flipped
            )
            return {"image": x, "info": image_info, "target": target, "skipped": skipped}
        raise ImageError(
            skipped[-1],
            f"{MAX_CONSECUTIVE_BAD_IMAGES} training images in a row "
            f"could not be read (is {self.img_dir} complete?)",
        )


class CocoTestDataset(torch.utils.data.Dataset):
    """Test images without targets, in image-id order (the first `num_images` when > 0).

    A sample is a dict: image (normalized float32 [3, h, w]), info (ImageInfo), skipped ([]).
    An unreadable image raises ImageError, or with `on_bad_image="skip"` gives a sample with
    image None and its path in skipped (the collate leaves it out).
    Attributes: img_dir, ann_file, parsed (the validated ParsedAnnotations: `coco_gt(dataset)`
    builds the evaluation ground truth from it; never give pycocotools the raw file), image_ids
    (the ids this dataset covers: evaluate on exactly these), meta, bad_counts.
    """

    def __init__(
        self,
        img_dir: str,
        ann_file: str,
        input_cfg: ml_collections.ConfigDict,
        *,
        on_bad_annotation: str = "fail",
        on_bad_image: str = "fail",
        num_images: int = 0,
        ids_as_labels: bool = False,
        with_masks: bool = True,
    ):
        self.img_dir, self.ann_file = img_dir, ann_file
        self.input_cfg, self.on_bad_image = input_cfg, on_bad_image
        parsed = ann_lib.parse_coco_json(
            ann_file,
            on_bad=on_bad_annotation,
            training=False,
            with_masks=with_masks,
            ids_as_labels=ids_as_labels,
        )
        records = parsed.records[:num_images] if num_images and num_images > 0 else parsed.records
        # What the evaluation ground truth is built from (`coco_gt`): the validated records,
        # never the raw file.
        self.parsed = parsed
        self.meta: DatasetMeta = meta_from_categories(parsed.categories, ids_as_labels)
        self.bad_counts: dict[str, int] = dict(parsed.counts)
        self.bad_counts.setdefault("bad_image", 0)
        self.image_ids: list[int] = [r.image_id for r in records]
        self._records = SerializedList(
            (r.image_id, r.file_name, r.height, r.width) for r in records
        )

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id, file_name, height, width = self._records[int(index)]
        path = os.path.join(self.img_dir, file_name)
        try:
            image = read_checked_image(path, height, width)
            x, info = _test_input(path, image, self.input_cfg)
        except ImageError as e:
            e = e.with_image_id(image_id)
            if self.on_bad_image == "fail":
                raise e from None
            log.warning("skipping unusable test image (%s)", e)
            return {"image": None, "info": None, "skipped": [path]}
        return {
            "image": x,
            "info": ImageInfo(image_id, file_name, info.orig_size, info.size),
            "skipped": [],
        }
