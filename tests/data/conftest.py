"""Fixtures of the data tests: a small shapes configuration and its generated dataset."""

from __future__ import annotations

import ml_collections
import pytest

from configs import shapes as shapes_config
from mrcnn import data


def _small_config(root, **kw) -> ml_collections.ConfigDict:
    c = shapes_config.get_config("runlocal")
    c.data.root = str(root)
    c.data.shapes.num_train = 16
    c.data.shapes.num_val = 5
    c.data.shapes.image_size = 64
    c.data.num_workers = 0
    c.input.min_size_train = (48, 64, 80)
    c.input.max_size_train = 100
    c.input.min_size_test = 72
    c.input.max_size_test = 100
    c.solver.ims_per_batch = 4
    c.test.ims_per_batch = 2
    for k, v in kw.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


@pytest.fixture
def small_config():
    """small_config(root, **{"a.b": value}) -> a 16 + 5 image shapes config rooted at root."""
    return _small_config


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A data root holding the generated small shapes dataset (generated once per session)."""
    root = tmp_path_factory.mktemp("data")
    data.ensure_shapes_dataset(_small_config(root))
    return root
