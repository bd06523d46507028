"""Category identity: the label <-> category id <-> name table of a model (`CategoryTable`).

The table comes from the TRAINING data (`category_table(config)`), travels with the model as a
plain JSON-able dict (`to_dict` / `from_dict`, for checkpoints and config.json) and is what
detections are mapped back through. A val set is matched to it by category id, never by
position (`match_categories`). Label 0 is background.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections
import numpy as np
import torch

from mrcnn.config_check import ConfigError
from mrcnn.data import catalog, coco_categories

log = logging.getLogger(__name__)

TABLE_FORMAT = 1


class CategoryTableError(ConfigError):
    """A category table (in a checkpoint, config.json or a dataset) that cannot be used, or a
    `model.num_classes` that does not fit it; the message names where."""

    def __reduce__(self):
        return (type(self), (str(self),))


@dataclasses.dataclass(frozen=True)
class CategoryTable:
    """The categories of a model and how its labels map to them.

    category_ids: sorted category ids; names: their names, same order.
    ids_as_labels: False -> label i (1..K) is category_ids[i - 1] (contiguous, in id order);
      True -> label = category id (torchvision's 91-way COCO head).
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]
    ids_as_labels: bool = False

    def __post_init__(self):
        ids = self.category_ids
        if not ids:
            raise CategoryTableError("a category table needs at least one category")
        if len(set(ids)) != len(ids) or list(ids) != sorted(ids) or len(self.names) != len(ids):
            raise CategoryTableError(f"category ids must be unique and sorted: {list(ids)}")
        if any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in ids):
            raise CategoryTableError(f"category ids must be integers >= 0: {list(ids)}")
        if self.ids_as_labels and ids[0] == 0:
            raise CategoryTableError(
                "category id 0 cannot be a label with data.category_ids_as_labels=True "
                "(label 0 is background)"
            )

    @classmethod
    def from_categories(
        cls, categories: Iterable[tuple[int, str]], ids_as_labels: bool = False
    ) -> CategoryTable:
        pairs = sorted((int(c), str(n)) for c, n in categories)
        return cls(tuple(c for c, _ in pairs), tuple(n for _, n in pairs), bool(ids_as_labels))

    @classmethod
    def coco(cls, ids_as_labels: bool = False) -> CategoryTable:
        """COCO's 80 categories: the table of torchvision's COCO weights (ids_as_labels=True)."""
        return cls.from_categories(coco_categories.id_name_pairs(), ids_as_labels)

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
        return self.names[self._index[self.label_to_category_id(int(label))]]

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict (checkpoints, config.json); `from_dict` reads it back."""
        return {
            "format": TABLE_FORMAT,
            "ids_as_labels": self.ids_as_labels,
            "categories": [{"id": c, "name": n} for c, n in zip(self.category_ids, self.names)],
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "category table") -> CategoryTable:
        """The table `to_dict` wrote (also once stored in a ConfigDict, lists then possibly
        tuples); anything else is a CategoryTableError naming `where`."""
        if isinstance(d, ml_collections.ConfigDict):
            d = d.to_dict()
        if not isinstance(d, Mapping) or d.get("format") != TABLE_FORMAT:
            raise CategoryTableError(f"{where}: not a category table (format {TABLE_FORMAT})")
        cats, ids_as_labels = d.get("categories"), d.get("ids_as_labels")
        ok = isinstance(cats, (list, tuple)) and isinstance(ids_as_labels, bool)
        ok = ok and all(
            isinstance(c, Mapping)
            and type(c.get("id")) is int
            and isinstance(c.get("name"), str)
            for c in cats
        )
        if not ok:
            raise CategoryTableError(
                f"{where}: a category table needs 'ids_as_labels' (bool) and 'categories' "
                "([{'id': int, 'name': str}, ...])"
            )
        try:
            return cls.from_categories([(c["id"], c["name"]) for c in cats], ids_as_labels)
        except CategoryTableError as e:
            raise CategoryTableError(f"{where}: {e}") from None

    def check_num_classes(self, num_classes: int, key: str = "model.num_classes") -> None:
        """One error naming `key` when a head of `num_classes` outputs cannot hold the table
        exactly (contiguous labels: exactly K + 1; ids as labels: at least max id + 1)."""
        need, have = self.num_classes, int(num_classes)
        fits = have >= need if self.ids_as_labels else have == need
        if not fits:
            what = "at least" if self.ids_as_labels else "exactly"
            raise CategoryTableError(
                f"config.{key}={have} does not fit the {len(self.category_ids)} training "
                f"categories (ids {_ids_text(self.category_ids)}): it must be {what} {need}; "
                f"set --config.{key}={need}"
            )


# The name the rest of the code has used; the same class.
DatasetMeta = CategoryTable


def _ids_text(ids: Iterable[int], n: int = 12) -> str:
    ids = list(ids)
    return str(ids) if len(ids) <= n else f"{ids[:n]} ... ({len(ids)})"


@dataclasses.dataclass(frozen=True)
class CategoryMatch:
    """How a val set's categories relate to a model's table, by id.

    shared: ids in both; unknown: val ids the model does not know (their objects are evaluated
    and never detected); absent: table ids the val set does not list (their detections have
    nothing to match); renamed: (id, model name, val name) where the names differ.
    """

    shared: tuple[int, ...]
    unknown: tuple[int, ...]
    absent: tuple[int, ...]
    renamed: tuple[tuple[int, str, str], ...]


def match_categories(
    table: CategoryTable, val_categories: Iterable[tuple[int, str]], where: str = "val set"
) -> CategoryMatch:
    """Matches `val_categories` ((id, name) of the evaluated file) to `table` by id.

    A subset or a superset of the model's categories works; unknown val categories are named
    in one warning, differing names in another; no shared id at all is a CategoryTableError
    (nothing could be evaluated), naming `where`.
    """
    val = dict(val_categories)
    known = dict(zip(table.category_ids, table.names))
    shared = tuple(sorted(set(val) & set(known)))
    unknown = tuple(sorted(set(val) - set(known)))
    absent = tuple(sorted(set(known) - set(val)))
    renamed = tuple((c, known[c], val[c]) for c in shared if known[c] != val[c])
    if not shared:
        raise CategoryTableError(
            f"{where}: none of its category ids {_ids_text(sorted(val))} is one of the model's "
            f"{_ids_text(table.category_ids)}"
        )
    if unknown:
        log.warning(
            "%s: %d categories the model was not trained on are evaluated as never detected: %s",
            where,
            len(unknown),
            ", ".join(f"{c} ({val[c]!r})" for c in unknown[:20]),
        )
    if renamed:
        log.warning(
            "%s: same category id, different name (matched by id): %s",
            where,
            ", ".join(f"{c}: model {a!r} / val {b!r}" for c, a, b in renamed[:20]),
        )
    return CategoryMatch(shared, unknown, absent, renamed)


def meta_from_categories(categories: list[tuple[int, str]], ids_as_labels: bool) -> CategoryTable:
    return CategoryTable.from_categories(categories, ids_as_labels)


def coco_meta(ids_as_labels: bool = False) -> CategoryTable:
    """COCO's 80 categories (hard-coded; no file needed)."""
    return CategoryTable.coco(ids_as_labels)


def _file_categories(config: ml_collections.ConfigDict, dataset_cfg: Any) -> list[tuple[int, str]]:
    from mrcnn.data import annotations

    known = catalog.known_categories(config, dataset_cfg)
    if known is not None:
        return known
    _, ann_file = catalog.dataset_paths(config, dataset_cfg)
    if not os.path.isfile(ann_file):
        raise catalog.DatasetMissingError(
            f"annotation file not found: {os.path.abspath(ann_file)} (the categories of the "
            "model come from the training annotations)"
        )
    return annotations.read_categories(ann_file)


def category_table(config: ml_collections.ConfigDict) -> CategoryTable:
    """The model's table, from the training set (`config.data.train`), never the val file.

    Datasets the catalog knows by name (shapes, COCO names) need no file; otherwise the
    training json is read (a missing one is a DatasetMissingError, never a silent fallback).
    Checks `model.num_classes` against it (a CategoryTableError naming the key).
    """
    table = CategoryTable.from_categories(
        _file_categories(config, config.data.train), bool(config.data.category_ids_as_labels)
    )
    table.check_num_classes(config.model.num_classes)
    return table


def get_dataset_meta(config: ml_collections.ConfigDict, dataset_cfg: Any = None) -> CategoryTable:
    """The categories of `dataset_cfg` (default `config.data.train`) as a table; when its
    annotation file is not on disk, COCO's 80 categories with a warning (what predict did
    before tables travelled with checkpoints: prefer `category_table` or the checkpoint's)."""
    ids_as_labels = bool(config.data.category_ids_as_labels)
    dataset_cfg = dataset_cfg if dataset_cfg is not None else config.data.train
    try:
        return CategoryTable.from_categories(_file_categories(config, dataset_cfg), ids_as_labels)
    except catalog.DatasetMissingError as e:
        log.warning("no dataset to read categories from (%s); using COCO's 80 categories", e)
        return coco_meta(ids_as_labels)
