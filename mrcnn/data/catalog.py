"""Where datasets live: catalog names -> (image folder, COCO json), and COCO's 80 categories.

Every path is under the data root: `$MRCNN_DATA` when set, else `config.data.root`. The COCO
layout is the one `launch/download_coco.sh ROOT` extracts:

    ROOT/coco/annotations/instances_{train,val}{2014,2017}.json  (download_coco.sh ROOT/coco)
    ROOT/coco/{train2014,val2014,train2017,val2017}/*.jpg
    ROOT/shapes/<params>/...            (generated on first use, see shapes.py)

A dataset config is {"name", "img_dir", "ann_file"}; a non-empty `img_dir` / `ann_file` overrides
what the name gives, so any COCO-format dataset works without touching this file. This module is
the only one that interprets a dataset name (loaders and meta ask it; shapes.py knows no names).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from mrcnn.data import coco_categories, shapes

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
# annotation file is at hand (COCO catalog names, predicting with COCO-trained weights).
COCO_CATEGORIES: tuple[tuple[int, str], ...] = coco_categories.id_name_pairs()


class DatasetMissingError(FileNotFoundError):
    """A dataset folder or annotation file that is not on disk; the message says how to get it."""

    def __reduce__(self):
        # Rebuilt from the message alone, so it crosses from a loader worker intact.
        return (type(self), (str(self),))


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


def _shapes_split(dataset_cfg: Any) -> str | None:
    """"train" / "val" for a shapes name that the generator serves (no explicit img_dir and
    ann_file), else None. The one place that decides "is this the shapes dataset?"."""
    name = dataset_name(dataset_cfg)
    explicit = _field(dataset_cfg, "img_dir") and explicit_ann_file(dataset_cfg)
    if name not in SHAPES_NAMES or explicit:
        return None
    return name[len("shapes_") :]


def is_shapes(dataset_cfg: Any) -> bool:
    """A shapes dataset without explicit paths: generated on demand."""
    return _shapes_split(dataset_cfg) is not None


def shapes_params(config: ml_collections.ConfigDict) -> shapes.ShapesParams:
    """`config.data.shapes` as the generator's parameters (a bad value is a ValueError naming
    the key)."""
    s = config.data.shapes
    return shapes.ShapesParams(
        int(s.seed),
        int(s.num_train),
        int(s.num_val),
        int(s.image_size),
        int(s.num_classes),
        int(s.max_objects),
        s.get("image_format", "jpg"),
    )


def _unknown(name: str) -> DatasetMissingError:
    known = sorted(DATASETS) + list(SHAPES_NAMES)
    if not name:
        return DatasetMissingError(
            "dataset config has neither a catalog name nor img_dir + ann_file; "
            f"known names: {known}"
        )
    return DatasetMissingError(
        f"unknown dataset name {name!r}: use one of {known} "
        "or set img_dir and ann_file (any COCO-format dataset)"
    )


def dataset_paths(config: ml_collections.ConfigDict, dataset_cfg: Any) -> tuple[str, str]:
    """(img_dir, ann_file) of a dataset config: explicit paths win over the catalog name.

    Does not check that they exist nor generate anything (see `require_dataset`); shapes names
    give the folder the generator writes for the current `data.shapes` parameters.
    """
    img_dir, ann_file = _field(dataset_cfg, "img_dir"), _field(dataset_cfg, "ann_file")
    if img_dir and ann_file:
        return img_dir, ann_file
    name = dataset_name(dataset_cfg)
    if name in DATASETS:
        rel_img, rel_ann = DATASETS[name]
        root = data_root(config)
        base_img, base_ann = os.path.join(root, rel_img), os.path.join(root, rel_ann)
    elif name in SHAPES_NAMES:
        split = name[len("shapes_") :]
        base_img, base_ann = shapes.split_paths(shapes_params(config), split, data_root(config))
    else:
        raise _unknown(name)
    return img_dir or base_img, ann_file or base_ann


def known_categories(
    config: ml_collections.ConfigDict, dataset_cfg: Any
) -> list[tuple[int, str]] | None:
    """(category id, name) of a dataset known by its name alone, without reading or generating
    anything: shapes from its parameters, COCO catalog names (without an explicit ann_file)
    from COCO's table, every COCO release having the same 80. None: read the annotation file."""
    if is_shapes(dataset_cfg):
        cats = shapes.categories(shapes_params(config).num_classes)
        return [(c["id"], c["name"]) for c in cats]
    if dataset_name(dataset_cfg) in DATASETS and not explicit_ann_file(dataset_cfg):
        return list(COCO_CATEGORIES)
    return None


def ensure_shapes_dataset(
    config: ml_collections.ConfigDict,
) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """Generates the shapes dataset of `config.data.shapes` under the data root unless it is
    there; returns (train, val) dataset configs with explicit img_dir and ann_file."""
    params, root = shapes_params(config), data_root(config)
    shapes.ensure_generated(params, root)
    out = []
    for split in ("train", "val"):
        img_dir, ann_file = shapes.split_paths(params, split, root)
        out.append(
            ml_collections.ConfigDict(
                {"name": f"shapes_{split}", "img_dir": img_dir, "ann_file": ann_file}
            )
        )
    return out[0], out[1]


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
    """(img_dir, ann_file) of a dataset that is on disk: a shapes dataset is generated first;
    anything else missing raises `DatasetMissingError` naming the path and the remedy."""
    if is_shapes(dataset_cfg):
        shapes.ensure_generated(shapes_params(config), data_root(config))
    img_dir, ann_file = dataset_paths(config, dataset_cfg)
    name, root = dataset_name(dataset_cfg), data_root(config)
    if need_annotations and not os.path.isfile(ann_file):
        raise _missing(name, "annotation file", ann_file, root)
    if not os.path.isdir(img_dir):
        raise _missing(name, "image folder", img_dir, root)
    return img_dir, ann_file
