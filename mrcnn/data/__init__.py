"""The data pipeline: COCO-format datasets, transforms, deterministic samplers, loaders, the
evaluation ground truth, category tables and the synthetic shapes dataset.

    from mrcnn.data import build_train_loader, build_test_loader, category_table, coco_gt

Files, one subject each: catalog (the only resolver of dataset names: names -> paths, shapes
parameters), annotations (json parsing and validation), coco_gt (the ground truth pycocotools
sees, from the validated records), image_io (bounded reads, decoding), transforms (resize / flip
/ normalize), lsj (large-scale jitter), collate (padding, Batch), samplers (which images each
step sees), coco (datasets), meta (CategoryTable: labels <-> category ids <-> names, matching a
val set by id), coco_categories (COCO's 80), shapes (the generator: a pure function of its
parameters and a root), loaders (the builders; worker errors re-raised as themselves),
serialize (worker-friendly storage).
"""

from mrcnn.data.annotations import AnnotationError
from mrcnn.data.catalog import (
    COCO_CATEGORIES,
    DatasetMissingError,
    data_root,
    ensure_shapes_dataset,
)
from mrcnn.data.coco import load_preprocessed
from mrcnn.data.coco_gt import coco_api, coco_gt
from mrcnn.data.collate import collate_images
from mrcnn.data.image_io import ImageError, load_image
from mrcnn.data.loaders import build_test_loader, build_train_loader, iters_per_epoch
from mrcnn.data.meta import (
    CategoryMatch,
    CategoryTable,
    CategoryTableError,
    DatasetMeta,
    category_table,
    get_dataset_meta,
    match_categories,
)
from mrcnn.data.transforms import ScaleInfo, preprocess

__all__ = [
    "AnnotationError",
    "COCO_CATEGORIES",
    "CategoryMatch",
    "CategoryTable",
    "CategoryTableError",
    "DatasetMeta",
    "DatasetMissingError",
    "ImageError",
    "ScaleInfo",
    "build_test_loader",
    "build_train_loader",
    "category_table",
    "coco_api",
    "coco_gt",
    "collate_images",
    "data_root",
    "ensure_shapes_dataset",
    "get_dataset_meta",
    "iters_per_epoch",
    "load_image",
    "load_preprocessed",
    "match_categories",
    "preprocess",
]
