"""Where datasets live: catalog names -> (image folder, COCO json), and COCO's 80 categories.

Every path is under the data root: `$MRCNN_DATA` when set, else `config.data.root`. The COCO
layout is the one `launch/download_coco.sh ROOT` extracts:

    ROOT/coco/annotations/instances_{train,val}{2014,2017}.json  (download_coco.sh ROOT/coco)
    ROOT/coco/{train2014,val2014,train2017,val2017}/*.jpg
    ROOT/shapes/<params>/...            (generated on first use, see shapes.py)

A dataset config is {"name", "img_dir", "ann_file"}; a non-empty `img_dir` / `ann_file` overrides
what the name gives, so any COCO-format dataset works without touching this file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ml_collections

# name -> (image folder, annotation json), relative to the data root.
DATASETS: dict[str, tuple[str, str]] = {
    "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
    "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
    # The seed's minival is the 5k images that became val2017 (same pictures, 2017 file names).
    "coco_2014_minival": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    # = the seed's train2014 + valminusminival (118k images).
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}
SHAPES_NAMES = ("shapes_train", "shapes_val")

# COCO's 80 categories as (category id, name): ids run 1..90 with ten gaps. Used when no
# annotation file is at hand (predicting with COCO-trained weights).
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"),
    (2, "bicycle"),
    (3, "car"),
    (4, "motorcycle"),
    (5, "airplane"),
    (6, "bus"),
    (7, "train"),
    (8, "truck"),
    (9, "boat"),
    (10, "traffic light"),
    (11, "fire hydrant"),
    (13, "stop sign"),
    (14, "parking meter"),
    (15, "bench"),
    (16, "bird"),
    (17, "cat"),
    (18, "dog"),
    (19, "horse"),
    (20, "sheep"),
    (21, "cow"),
    (22, "elephant"),
    (23, "bear"),
    (24, "zebra"),
    (25, "giraffe"),
    (27, "backpack"),
    (28, "umbrella"),
    (31, "handbag"),
    (32, "tie"),
    (33, "suitcase"),
    (34, "frisbee"),
    (35, "skis"),
    (36, "snowboard"),
    (37, "sports ball"),
    (38, "kite"),
    (39, "baseball bat"),
    (40, "baseball glove"),
    (41, "skateboard"),
    (42, "surfboard"),
    (43, "tennis racket"),
    (44, "bottle"),
    (46, "wine glass"),
    (47, "cup"),
    (48, "fork"),
    (49, "knife"),
    (50, "spoon"),
    (51, "bowl"),
    (52, "banana"),
    (53, "apple"),
    (54, "sandwich"),
    (55, "orange"),
    (56, "broccoli"),
    (57, "carrot"),
    (58, "hot dog"),
    (59, "pizza"),
    (60, "donut"),
    (61, "cake"),
    (62, "chair"),
    (63, "couch"),
    (64, "potted plant"),
    (65, "bed"),
    (67, "dining table"),
    (70, "toilet"),
    (72, "tv"),
    (73, "laptop"),
    (74, "mouse"),
    (75, "remote"),
    (76, "keyboard"),
    (77, "cell phone"),
    (78, "microwave"),
    (79, "oven"),
    (80, "toaster"),
    (81, "sink"),
    (82, "refrigerator"),
    (84, "book"),
    (85, "clock"),
    (86, "vase"),
    (87, "scissors"),
    (88, "teddy bear"),
    (89, "hair drier"),
    (90, "toothbrush"),
)


class DatasetMissingError(FileNotFoundError):
    """A dataset folder or annotation file that is not on disk; the message says how to get it."""


def data_root(config: ml_collections.ConfigDict) -> str:
    """`$MRCNN_DATA` when set (so one machine-wide location serves every config), else
    `config.data.root`."""
    return os.environ.get("MRCNN_DATA") or config.data.root


def _field(dataset_cfg: Any, key: str) -> str:
    if isinstance(dataset_cfg, Mapping) or isinstance(dataset_cfg, ml_collections.ConfigDict):
        value = dataset_cfg.get(key, "")
    else:
        value = getattr(dataset_cfg, key, "")
    return value or ""


def dataset_name(dataset_cfg: Any) -> str:
    return _field(dataset_cfg, "name")


def explicit_ann_file(dataset_cfg: Any) -> str:
    """The annotation file a dataset config names itself ("" when the catalog name decides)."""
    return _field(dataset_cfg, "ann_file")


def is_shapes(dataset_cfg: Any) -> bool:
    """A shapes dataset without explicit paths: generated on demand."""
    return dataset_name(dataset_cfg).startswith("shapes") and not (
        _field(dataset_cfg, "img_dir") and _field(dataset_cfg, "ann_file")
    )


def dataset_paths(config: ml_collections.ConfigDict, dataset_cfg: Any) -> tuple[str, str]:
    """(img_dir, ann_file) of a dataset config: explicit paths win over the catalog name.

    Does not check that they exist (see `require_dataset`); shapes names give the folder the
    generator writes for the current `data.shapes` parameters.
    """
    img_dir, ann_file = _field(dataset_cfg, "img_dir"), _field(dataset_cfg, "ann_file")
    if img_dir and ann_file:
        return img_dir, ann_file
    name = dataset_name(dataset_cfg)
    if name in DATASETS:
        rel_img, rel_ann = DATASETS[name]
        root = data_root(config)
        base_img, base_ann = os.path.join(root, rel_img), os.path.join(root, rel_ann)
    elif name.startswith("shapes"):
        from mrcnn.data import shapes

        split = shapes.split_of(name)
        base_img, base_ann = shapes.split_paths(
            shapes.params_from_config(config), split, data_root(config)
        )
    elif not name:
        raise DatasetMissingError(
            "dataset config has neither a catalog name nor img_dir + ann_file; "
            f"known names: {sorted(DATASETS) + list(SHAPES_NAMES)}"
        )
    else:
        raise DatasetMissingError(
            f"unknown dataset name {name!r}: use one of {sorted(DATASETS) + list(SHAPES_NAMES)} "
            "or set img_dir and ann_file (any COCO-format dataset)"
        )
    return img_dir or base_img, ann_file or base_ann


def _missing(name: str, what: str, path: str, root: str) -> DatasetMissingError:
    return DatasetMissingError(
        f"dataset {name or '(explicit paths)'}: {what} not found: {os.path.abspath(path)}. "
        f"COCO: run `bash launch/download_coco.sh {os.path.join(root, 'coco')}` (layout in "
        "WORKSPACE.md); or set "
        "$MRCNN_DATA / --config.data.root to where the data is; or point "
        "--config.data.train.img_dir / ann_file (and data.val.*) at any COCO-format dataset."
    )


def resolve(config: ml_collections.ConfigDict, dataset_cfg: Any) -> tuple[str, str]:
    """(img_dir, ann_file) of a dataset config; the name scripts use (`launch/demo.sh`)."""
    return dataset_paths(config, dataset_cfg)


def require_dataset(
    config: ml_collections.ConfigDict, dataset_cfg: Any, need_annotations: bool = True
) -> tuple[str, str]:
    """`dataset_paths`, raising `DatasetMissingError` (naming the path) when one is missing."""
    img_dir, ann_file = dataset_paths(config, dataset_cfg)
    name, root = dataset_name(dataset_cfg), data_root(config)
    if need_annotations and not os.path.isfile(ann_file):
        raise _missing(name, "annotation file", ann_file, root)
    if not os.path.isdir(img_dir):
        raise _missing(name, "image folder", img_dir, root)
    return img_dir, ann_file
