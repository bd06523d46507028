"""Which categories a model's labels mean: the table that travels with the weights.

- Our checkpoints carry the table they were trained with (`categories`), so eval and predict
  need no training json and can never map a label through another file's category list.
- torchvision's COCO weights carry none: they are COCO's 80 categories (ids as labels for its
  91-way head, `data.category_ids_as_labels`).
- Anything else (training from scratch, an old checkpoint without a table): the training data
  (`config.data.train`), read by `mrcnn.data.category_table`; never the val file.
"""

from __future__ import annotations

import logging
import pickle

import ml_collections
import torch

from mrcnn.data import CategoryTable, category_table
from mrcnn.weights import WeightsError

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "categories"


def stored_table(path: str) -> CategoryTable | None:
    """The table saved in one of our checkpoints, None when it has none. The file is memory
    mapped, so reading one small entry does not read the weights a second time."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) file cannot be mapped: read it whole
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        # Missing or truncated, not a torch file, or pickled code that weights_only refuses.
        raise WeightsError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from e
    raw = state.get(CHECKPOINT_KEY) if isinstance(state, dict) else None
    return None if raw is None else CategoryTable.from_dict(raw, where=f"{path}: categories")


def model_categories(config: ml_collections.ConfigDict, weights: str | None,
                     weights_format: str | None) -> CategoryTable:
    """The table of the model `build` returns (see the module docstring); checked against
    `model.num_classes` (an error naming the key when they do not fit)."""
    table = None
    if weights is not None and weights_format == "native":
        table = stored_table(weights)
        if table is None:
            log.info("%s carries no category table: the categories come from the training "
                     "data (config.data.train)", weights)
    elif weights is not None and weights_format == "torchvision":
        table = CategoryTable.coco(bool(config.data.category_ids_as_labels))
    if table is None:
        return category_table(config)
    table.check_num_classes(config.model.num_classes)
    return table
