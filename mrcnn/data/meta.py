"""Category ids, names and the model's labels: `DatasetMeta` and `get_dataset_meta`."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import ml_collections
import numpy as np
import torch

from mrcnn.data import catalog

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
    """The categories of a dataset and how model labels map to them.

    category_ids: sorted dataset category ids; names: their names, same order.
    ids_as_labels: False -> label i (1..K) is category_ids[i - 1]; True -> label = category id
      (torchvision's 91-way COCO head). Label 0 is background either way.
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]
    ids_as_labels: bool = False

    @property
    def num_classes(self) -> int:
        """Model outputs including background: K + 1, or max category id + 1 with ids_as_labels."""
        if self.ids_as_labels:
            return max(self.category_ids) + 1
        return len(self.category_ids) + 1

    def label_to_category_id(self, label):
        """Label(s) >= 1 -> category id(s): an int, or an int64 Tensor / ndarray elementwise."""
        if self.ids_as_labels:
            return label if not isinstance(label, (int, np.integer)) else int(label)
        if isinstance(label, torch.Tensor):
            table = torch.tensor((-1,) + self.category_ids, dtype=torch.int64, device=label.device)
            return table[label.long()]
        if isinstance(label, np.ndarray):
            return np.asarray((-1,) + self.category_ids, dtype=np.int64)[label]
        label = int(label)
        if not 1 <= label <= len(self.category_ids):
            raise ValueError(f"label {label} outside 1..{len(self.category_ids)}")
        return self.category_ids[label - 1]

    def category_id_to_label(self, category_id: int) -> int:
        """Category id -> label (1..K, or the id itself with ids_as_labels)."""
        category_id = int(category_id)
        if category_id not in self._index:
            raise ValueError(f"category id {category_id} not in {list(self.category_ids)}")
        return category_id if self.ids_as_labels else self._index[category_id] + 1

    @functools.cached_property
    def _index(self) -> dict[int, int]:
        return {c: i for i, c in enumerate(self.category_ids)}

    def name_of_label(self, label: int) -> str:
        return self.names[self.category_ids.index(self.label_to_category_id(int(label)))]


def meta_from_categories(categories: list[tuple[int, str]], ids_as_labels: bool) -> DatasetMeta:
    categories = sorted(categories)
    return DatasetMeta(
        tuple(c for c, _ in categories), tuple(n for _, n in categories), bool(ids_as_labels)
    )


def coco_meta(ids_as_labels: bool = False) -> DatasetMeta:
    """COCO's 80 categories (hard-coded; no file needed)."""
    return meta_from_categories(list(catalog.COCO_CATEGORIES), ids_as_labels)


def get_dataset_meta(config: ml_collections.ConfigDict, dataset_cfg: Any = None) -> DatasetMeta:
    """The categories that define the model's labels.

    dataset_cfg defaults to `config.data.train` (the labels are the training set's). Datasets the
    catalog knows by name (shapes, COCO catalog names without an explicit ann_file) answer
    without reading or generating anything; otherwise the annotation file's categories; when it
    is not on disk (predicting with COCO weights), COCO's 80 categories.
    """
    from mrcnn.data import annotations

    ids_as_labels = bool(config.data.category_ids_as_labels)
    dataset_cfg = dataset_cfg if dataset_cfg is not None else config.data.train
    known = catalog.known_categories(config, dataset_cfg)
    if known is not None:
        return meta_from_categories(known, ids_as_labels)
    try:
        _, ann_file = catalog.dataset_paths(config, dataset_cfg)
    except catalog.DatasetMissingError as e:
        log.warning("no dataset to read categories from (%s); using COCO's 80 categories", e)
        return coco_meta(ids_as_labels)
    if not os.path.isfile(ann_file):
        log.warning("annotation file %s not found; using COCO's 80 categories", ann_file)
        return coco_meta(ids_as_labels)
    return meta_from_categories(annotations.read_categories(ann_file), ids_as_labels)
