"""The catalog (names -> paths, the missing-dataset message) and the dataset meta (labels <->
category ids)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mrcnn import data
from mrcnn.data import catalog


def test_missing_dataset_names_the_path_and_the_remedy(small_config, tmp_path, monkeypatch):
    monkeypatch.delenv("MRCNN_DATA", raising=False)
    c = small_config(tmp_path)
    c.data.train.name = "coco_2017_train"
    with pytest.raises(data.DatasetMissingError) as e:
        data.build_train_loader(c)
    msg = str(e.value)
    assert "instances_train2017.json" in msg and "download_coco.sh" in msg
    assert "WORKSPACE.md" in msg and str(tmp_path) in msg
    c.data.train.name = "coco_2099"
    with pytest.raises(data.DatasetMissingError, match="unknown dataset name 'coco_2099'"):
        data.build_train_loader(c)


def test_catalog_paths_and_env_override(small_config, tmp_path, monkeypatch):
    c = small_config(tmp_path)
    monkeypatch.delenv("MRCNN_DATA", raising=False)
    img, ann = catalog.dataset_paths(c, {"name": "coco_2014_minival"})
    assert img == os.path.join(str(tmp_path), "coco", "val2017")
    assert ann == os.path.join(str(tmp_path), "coco", "annotations", "instances_val2017.json")
    monkeypatch.setenv("MRCNN_DATA", "/elsewhere")
    img, ann = catalog.dataset_paths(c, {"name": "coco_2014_train"})
    assert img == "/elsewhere/coco/train2014"
    img, ann = catalog.dataset_paths(c, {"name": "coco_2014_train", "img_dir": "/x"})
    assert img == "/x" and ann.endswith("instances_train2014.json")  # explicit wins, per field


def test_dataset_meta_mappings_and_coco_fallback(
    small_config, tmp_path, shapes_root, monkeypatch
):
    monkeypatch.delenv("MRCNN_DATA", raising=False)
    c = small_config(tmp_path)
    c.data.train.name = "coco_2017_train"  # not on disk: COCO's 80 categories
    meta = data.get_dataset_meta(c)
    assert len(meta.category_ids) == 80 and meta.num_classes == 81
    assert meta.category_ids == tuple(sorted(meta.category_ids))
    assert meta.label_to_category_id(1) == 1 and meta.label_to_category_id(80) == 90
    assert meta.category_id_to_label(13) == 12 and meta.names[11] == "stop sign"
    for label in range(1, 81):
        assert meta.category_id_to_label(meta.label_to_category_id(label)) == label
    labels = torch.tensor([1, 12, 80])
    assert meta.label_to_category_id(labels).tolist() == [1, 13, 90]
    with pytest.raises(ValueError):
        meta.label_to_category_id(0)
    with pytest.raises(ValueError):
        meta.category_id_to_label(12)  # a gap in COCO's ids
    c.data.category_ids_as_labels = True
    meta = data.get_dataset_meta(c)
    assert meta.num_classes == 91 and meta.label_to_category_id(90) == 90
    shapes_meta = data.get_dataset_meta(small_config(shapes_root))
    assert shapes_meta.names == ("square", "circle", "triangle") and shapes_meta.num_classes == 4


@pytest.mark.parametrize("num_classes", [3, 5])
def test_num_classes_that_does_not_fit_the_dataset_is_an_error(
    small_config, shapes_root, num_classes
):
    # Larger is an error too: the extra outputs would be labels no category id maps back to.
    c = small_config(shapes_root)
    c.model.num_classes = num_classes
    pattern = f"config.model.num_classes={num_classes}.*num_classes=4"
    with pytest.raises(data.CategoryTableError, match=pattern):
        data.build_train_loader(c)


def test_meta_of_coco_names_needs_no_file_and_explicit_files_are_read(small_config, tmp_path):
    c = small_config(tmp_path)
    c.data.train.name = "coco_2014_train"
    assert data.get_dataset_meta(c).num_classes == 81
    ann = tmp_path / "mine.json"
    ann.write_text(
        json.dumps(
            {
                "images": [],
                "annotations": [],
                "categories": [{"id": 5, "name": "b"}, {"id": 2, "name": "a"}],
            }
        )
    )
    c.data.train.ann_file = str(ann)  # explicit file wins over the COCO name
    meta = data.get_dataset_meta(c)
    assert meta.category_ids == (2, 5) and meta.names == ("a", "b") and meta.num_classes == 3
    assert meta.label_to_category_id(2) == 5 and meta.category_id_to_label(2) == 1


def _project_imports(path: str, package: str) -> set[str]:
    """The `mrcnn...` modules a source file imports (at any depth: function-level imports make
    cycles too)."""
    import ast

    tree = ast.parse(open(path).read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("mrcnn")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mrcnn"):
            # `from mrcnn.data import shapes` imports the module mrcnn.data.shapes.
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                sub_file = os.path.join(os.path.dirname(path), a.name + ".py")
                out.add(sub if node.module == package and os.path.isfile(sub_file) else node.module)
    return out


def test_the_data_package_has_no_import_cycle_and_shapes_imports_nothing_of_ours():
    import mrcnn.data as pkg

    folder = os.path.dirname(pkg.__file__)
    graph = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            mod = "mrcnn.data" + ("" if name == "__init__.py" else "." + name[:-3])
            deps = _project_imports(os.path.join(folder, name), "mrcnn.data")
            graph[mod] = {d for d in deps if d.startswith("mrcnn.data.") and d != mod}
    assert graph["mrcnn.data.shapes"] == set()
    assert not any(d.startswith("mrcnn") for d in _project_imports(
        os.path.join(folder, "shapes.py"), "mrcnn.data"
    ))
    # Depth-first search for a back edge.
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in graph.get(m, ()):
            assert state.get(d) != 1, f"import cycle: {' -> '.join(stack + [m, d])}"
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_only_the_catalog_interprets_dataset_names(small_config, tmp_path):
    c = small_config(tmp_path)
    assert catalog.is_shapes(c.data.train) and catalog.is_shapes({"name": "shapes_val"})
    assert not catalog.is_shapes({"name": "shapes_val", "img_dir": "/a", "ann_file": "/b.json"})
    assert not catalog.is_shapes({"name": "shapesX_train"})
    with pytest.raises(data.DatasetMissingError, match="unknown dataset name 'shapesX_train'"):
        catalog.dataset_paths(c, {"name": "shapesX_train"})
    shapes_cats = [(1, "square"), (2, "circle"), (3, "triangle")]
    assert catalog.known_categories(c, c.data.train) == shapes_cats
    assert len(catalog.known_categories(c, {"name": "coco_2017_val"})) == 80
    assert catalog.known_categories(c, {"name": "coco_2017_val", "ann_file": "/x.json"}) is None
    # Nothing was generated by asking.
    assert not os.path.exists(os.path.join(str(tmp_path), "shapes"))
    img_dir, ann_file = catalog.require_dataset(c, c.data.val)  # generates on demand
    assert os.path.isfile(ann_file) and len(os.listdir(img_dir)) == 5
