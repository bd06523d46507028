"""A three-image COCO dataset whose every error is known, and detections on it.

    image 1: a [2, 2, 20, 20], b [30, 30, 20, 20]
    image 2: c [10, 10, 30, 30], a crowd region [44, 44, 16, 16]
    image 3: nothing
    categories: a, b (supercategory x), c (supercategory y)

Detections (bbox and the same rectangles as RLE masks for segm):
    d1 image 1  a on a           0.9   true positive
    d2 image 1  c on b           0.8   b confused with c (another supercategory)
    d3 image 2  c [10, 10, 30, 10] 0.7  c badly localized (IoU 1/3)
    d4 image 2  a on the crowd   0.6   ignored
    d5 image 3  b on nothing     0.95  background
    d6 image 1  a [45, 2, 10, 10] 0.1  below the analysis' score threshold
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

SIZE = 64
CATEGORIES = [{"id": 1, "name": "a", "supercategory": "x"},
              {"id": 2, "name": "b", "supercategory": "x"},
              {"id": 3, "name": "c", "supercategory": "y"}]
DETECTIONS = [  # image, category, box, score
    (1, 1, [2, 2, 20, 20], 0.9),
    (1, 3, [30, 30, 20, 20], 0.8),
    (2, 3, [10, 10, 30, 10], 0.7),
    (2, 1, [44, 44, 16, 16], 0.6),
    (3, 2, [5, 5, 20, 20], 0.95),
    (1, 1, [45, 2, 10, 10], 0.1),
]


def rect_polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def rect_rle(x, y, w, h):
    m = np.zeros((SIZE, SIZE), dtype=np.uint8, order="F")
    m[y : y + h, x : x + w] = 1
    rle = mask_util.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _ann(aid, iid, cid, box, crowd=0):
    return {"id": aid, "image_id": iid, "category_id": cid, "bbox": box, "area": box[2] * box[3],
            "iscrowd": crowd, "segmentation": rect_polygon(*box)}


def write_images(img_dir, ids):
    os.makedirs(img_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in ids:
        pixels = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(img_dir, f"{i:03d}.png"))


def val_dataset():
    images = [{"id": i, "file_name": f"{i:03d}.png", "height": SIZE, "width": SIZE}
              for i in (1, 2, 3)]
    anns = [_ann(11, 1, 1, [2, 2, 20, 20]), _ann(12, 1, 2, [30, 30, 20, 20]),
            _ann(21, 2, 3, [10, 10, 30, 30]), _ann(22, 2, 1, [44, 44, 16, 16], crowd=1)]
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def results():
    bbox = [{"image_id": i, "category_id": c, "bbox": [float(v) for v in b], "score": s}
            for i, c, b, s in DETECTIONS]
    segm = [{"image_id": i, "category_id": c, "segmentation": rect_rle(*b), "score": s}
            for i, c, b, s in DETECTIONS]
    return bbox, segm


@pytest.fixture
def tiny(tmp_path):
    """{"img_dir", "ann_file", "bbox", "segm"} of the dataset above, on disk."""
    img_dir = str(tmp_path / "images")
    write_images(img_dir, (1, 2, 3))
    ann_file = str(tmp_path / "val.json")
    with open(ann_file, "w") as f:
        json.dump(val_dataset(), f)
    bbox, segm = results()
    return {"img_dir": img_dir, "ann_file": ann_file, "bbox": bbox, "segm": segm,
            "root": str(tmp_path)}


@pytest.fixture
def tiny_config(tiny):
    """The shapes config pointed at the tiny dataset (val and train)."""
    from configs import shapes

    c = shapes.get_config()
    for split in ("train", "val"):
        c.data[split].img_dir = tiny["img_dir"]
        c.data[split].ann_file = tiny["ann_file"]
    c.data.root = tiny["root"]
    c.data.num_workers = 0
    return c
