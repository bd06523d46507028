"""Category identity: the table from the training data, its JSON round trip, COCO's default,
matching a val set by id (subset, superset, renamed, disjoint), num_classes checked against it."""

from __future__ import annotations

import json
import logging
import pickle

import ml_collections
import numpy as np
import pytest
import torch

from mrcnn import data
from mrcnn.data import annotations as A
from mrcnn.data.meta import CategoryTable, CategoryTableError, match_categories


def _ann_file(tmp_path, name: str, cats: list, anns: list | None = None) -> str:
    d = {
        "images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
        "annotations": anns or [],
        "categories": cats,
    }
    path = tmp_path / name
    path.write_text(json.dumps(d))
    return str(path)


@pytest.mark.parametrize("seed", range(5))
def test_labels_are_contiguous_in_id_order_and_round_trip(seed):
    rng = np.random.default_rng(seed)
    ids = [int(i) for i in rng.choice(2000, size=int(rng.integers(1, 40)), replace=False)]
    pairs = [(i, f"n{i}") for i in ids]
    rng.shuffle(pairs)
    t = CategoryTable.from_categories(pairs)
    assert list(t.category_ids) == sorted(ids) and t.num_classes == len(ids) + 1
    for label in range(1, len(ids) + 1):
        cid = t.label_to_category_id(label)
        assert cid == sorted(ids)[label - 1] and t.category_id_to_label(cid) == label
        assert t.name_of_label(label) == f"n{cid}"
    labels = torch.arange(1, len(ids) + 1)
    assert t.label_to_category_id(labels).tolist() == sorted(ids)
    back = CategoryTable.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back == t and back.to_dict() == t.to_dict()
    # As the lead stores it: inside the config (a ConfigDict) and back out of config.json.
    assert CategoryTable.from_dict(ml_collections.ConfigDict({"t": t.to_dict()}).t) == t
    by_id = CategoryTable.from_categories(pairs, ids_as_labels=max(ids) > 0 and min(ids) > 0)
    assert CategoryTable.from_dict(json.loads(json.dumps(by_id.to_dict()))) == by_id


def test_the_table_of_catalog_datasets_needs_no_file():
    from configs import shapes as shapes_config

    c = shapes_config.get_config()
    assert data.category_table(c).names == ("square", "circle", "triangle")
    coco = {"name": "coco_2017_train", "img_dir": "", "ann_file": ""}
    c.data.train = ml_collections.ConfigDict(coco)
    c.data.category_ids_as_labels, c.model.num_classes = True, 91
    assert data.category_table(c) == CategoryTable.coco(ids_as_labels=True)


def test_cocos_default_table_is_torchvisions_91_way_head():
    t = CategoryTable.coco(ids_as_labels=True)
    assert len(t.category_ids) == 80 and t.num_classes == 91
    assert t.label_to_category_id(90) == 90 and t.name_of_label(1) == "person"
    c = CategoryTable.coco()
    assert c.num_classes == 81 and c.category_id_to_label(90) == 80
    assert c.name_of_label(12) == "stop sign"  # id 13: labels skip COCO's id gaps
    t.check_num_classes(91)
    t.check_num_classes(100)  # a 100-way head holds ids up to 90
    with pytest.raises(CategoryTableError, match="model.num_classes=81.*at least 91"):
        t.check_num_classes(81)


@pytest.mark.parametrize("have", [3, 5])
def test_num_classes_that_does_not_fit_is_one_error_naming_the_key(have):
    t = CategoryTable.from_categories([(7, "a"), (42, "b"), (1000, "c")])
    t.check_num_classes(4)
    with pytest.raises(CategoryTableError) as e:
        t.check_num_classes(have)
    msg = str(e.value)
    assert f"config.model.num_classes={have}" in msg and "--config.model.num_classes=4" in msg
    assert "\n" not in msg and isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"format": 2, "ids_as_labels": False, "categories": []},
        {"format": 1, "ids_as_labels": "no", "categories": [{"id": 1, "name": "a"}]},
        {"format": 1, "ids_as_labels": False, "categories": [{"id": "1", "name": "a"}]},
        {"format": 1, "ids_as_labels": False, "categories": []},
        {"format": 1, "ids_as_labels": False, "categories": [{"id": 1, "name": "a"}] * 2},
        {"format": 1, "ids_as_labels": True, "categories": [{"id": 0, "name": "a"}]},
        {"format": 1, "ids_as_labels": False, "categories": [{"id": -3, "name": "a"}]},
    ],
)
def test_a_bad_table_is_one_error_naming_where_it_came_from(bad):
    with pytest.raises(CategoryTableError, match=r"^model_10\.pth: "):
        CategoryTable.from_dict(bad, where="model_10.pth")


def test_errors_survive_pickling():
    e = pickle.loads(pickle.dumps(CategoryTableError("x.pth: bad")))
    assert type(e) is CategoryTableError and str(e) == "x.pth: bad"


def _config(train_ann: str, val_ann: str, num_classes: int) -> ml_collections.ConfigDict:
    from configs import shapes as shapes_config

    c = shapes_config.get_config()
    c.data.train = ml_collections.ConfigDict({"name": "", "img_dir": "/i", "ann_file": train_ann})
    c.data.val = ml_collections.ConfigDict({"name": "", "img_dir": "/i", "ann_file": val_ann})
    c.model.num_classes = num_classes
    return c


def test_the_table_comes_from_the_training_data_never_the_val_file(tmp_path):
    train = _ann_file(tmp_path, "train.json", [{"id": i, "name": f"c{i}"} for i in (1000, 7, 42)])
    val = _ann_file(tmp_path, "val.json", [{"id": i, "name": f"c{i}"} for i in (5, 7, 42)])
    t = data.category_table(_config(train, val, 4))
    assert t.category_ids == (7, 42, 1000) and t.label_to_category_id(3) == 1000
    with pytest.raises(CategoryTableError, match="model.num_classes=5"):
        data.category_table(_config(train, val, 5))
    with pytest.raises(data.DatasetMissingError, match="nope.json"):  # no silent COCO fallback
        data.category_table(_config(str(tmp_path / "nope.json"), val, 4))


def test_a_val_set_is_matched_by_id_superset_subset_renamed(caplog):
    t = CategoryTable.from_categories([(7, "cat"), (42, "dog"), (1000, "eel")])
    with caplog.at_level(logging.WARNING):
        m = match_categories(t, [(5, "ant"), (7, "cat"), (42, "dog"), (1000, "eel"), (1001, "x")])
    assert m.shared == (7, 42, 1000) and m.unknown == (5, 1001) and m.absent == ()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "5 ('ant')" in warnings[0] and "1001 ('x')" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        m = match_categories(t, [(42, "hound")], where="val.json")
    assert m.shared == (42,) and m.absent == (7, 1000) and m.unknown == ()
    assert m.renamed == ((42, "dog", "hound"),)
    assert "val.json" in caplog.text and "'hound'" in caplog.text
    # The labels still map through the model's table: nothing moved by position.
    assert t.label_to_category_id(2) == 42
    with pytest.raises(CategoryTableError, match="val.json: none of its category ids"):
        match_categories(t, [(1, "cat"), (2, "dog")], where="val.json")


def test_a_roboflow_group_category_is_not_a_class(tmp_path, caplog):
    cats = [
        {"id": 0, "name": "cells", "supercategory": "none"},
        {"id": 1, "name": "rbc", "supercategory": "cells"},
        {"id": 2, "name": "wbc", "supercategory": "cells"},
    ]
    ann = {"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 3, 3]}
    with caplog.at_level(logging.WARNING):
        cats_read = A.read_categories(_ann_file(tmp_path, "r.json", cats, [ann]))
    assert cats_read == [(1, "rbc"), (2, "wbc")]
    assert "category 0 ('cells') is not a class" in caplog.text
    # Used by an annotation, it is a class after all.
    used = _ann_file(tmp_path, "u.json", cats, [dict(ann, category_id=0)])
    assert [c for c, _ in A.read_categories(used)] == [0, 1, 2]


def test_a_superset_val_set_is_evaluated_by_id_with_unknown_objects_never_detected(tmp_path):
    """The scenario that went silently wrong: trained on [7, 42, 1000], evaluated on a val set
    listing [5, 7, 42]. Perfect detections mapped through the model's table score AP 1 on 7 and
    42, and category 5's objects count as missed: AP (1 + 1 + 0) / 3; a mapping through the val
    file's list by position would have reported category ids 5 and 7 for labels 1 and 2."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    table = CategoryTable.from_categories([(7, "cat"), (42, "dog"), (1000, "eel")])
    val_cats = [{"id": 5, "name": "ant"}, {"id": 7, "name": "cat"}, {"id": 42, "name": "dog"}]
    boxes = {5: [2, 2, 10, 10], 7: [20, 5, 12, 10], 42: [5, 25, 15, 10]}
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3],
         "iscrowd": 0}
        for i, (c, b) in enumerate(boxes.items())
    ]
    d = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 40}],
        "annotations": anns,
        "categories": val_cats,
    }
    path = tmp_path / "val.json"
    path.write_text(json.dumps(d))
    parsed = A.parse_coco_json(str(path), training=False, with_masks=False)
    match = match_categories(table, parsed.categories, where=str(path))
    assert match.unknown == (5,) and match.absent == (1000,)
    gt = data.coco_api(data.coco_gt(parsed))
    # The model predicts labels 1 (cat) and 2 (dog) on their objects, 3 (eel) somewhere empty.
    labels = torch.tensor([1, 2, 3])
    cats = table.label_to_category_id(labels).tolist()
    assert cats == [7, 42, 1000]
    dets = [
        {"image_id": 1, "category_id": c, "bbox": b, "score": 0.9}
        for c, b in zip(cats, [boxes[7], boxes[42], [30, 30, 5, 5]])
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(gt, gt.loadRes(dets), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    assert e.stats[1] == pytest.approx(2 / 3, abs=1e-6)  # AP50 over the val set's categories
