"""--mode=browse on a file with bad records, the training curves, and the report on workdirs that
hold little or garbage."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from mrcnn.analysis import browse, curves, report
from mrcnn.data import transforms

BAD_TRAIN = {
    "images": [{"id": i, "file_name": f"{i:03d}.png", "height": 64, "width": 64}
               for i in (1, 2, 3)],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    "annotations": [
        {"id": 101, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20], "iscrowd": 0,
         "segmentation": [[2, 2, 22, 2, 22, 22, 2, 22]]},
        {"id": 102, "image_id": 1, "category_id": 2, "bbox": [30, 30, 20, 20], "iscrowd": 1,
         "segmentation": [[30, 30, 50, 30, 50, 50, 30, 50]]},
        {"id": 103, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0,
         "segmentation": [[5, 5, 5, 15, 6, 15]]},
        {"id": 104, "image_id": 1, "category_id": 1, "bbox": [40, 2, 10, 10], "iscrowd": 0,
         "segmentation": [[40, 2, 50, 2, 50]]},
        {"id": 105, "image_id": 1, "category_id": 99, "bbox": [2, 40, 10, 10], "iscrowd": 0,
         "segmentation": [[2, 40, 12, 40, 12, 50, 2, 50]]},
        # Garbage RLE counts (they would hang pycocotools' decoder): skipped, drawn as a box.
        {"id": 106, "image_id": 1, "category_id": 2, "bbox": [40, 40, 10, 10], "iscrowd": 0,
         "segmentation": {"size": [64, 64], "counts": "\u00ff\u00fe garbage"}},
        {"id": 201, "image_id": 2, "category_id": 2, "bbox": [10, 10, 30, 30], "iscrowd": 0,
         "segmentation": [[10, 10, 40, 10, 40, 40, 10, 40]]},
    ],
}


@pytest.fixture
def bad_train(tiny, tiny_config, tmp_path):
    path = str(tmp_path / "train.json")
    with open(path, "w") as f:
        json.dump(BAD_TRAIN, f)
    tiny_config.data.train.ann_file = path
    tiny_config.browse.split = "train"
    return tiny_config


def _read(path):
    with open(path) as f:
        return f.read()


def test_browse_names_what_the_parser_skipped(bad_train, tmp_path):
    bad_train.browse.images = (1, "002.png")
    out = browse.run(bad_train, str(tmp_path / "wd"), None)
    first, second = out["images"]
    assert (first["image_id"], first["kept"], first["crowd"]) == (1, 1, 1)
    why = {s["annotation_id"]: s["why"] for s in first["skipped"]}
    assert set(why) == {103, 104, 105, 106}
    assert "zero size box" in why[103]
    assert "odd number of coordinates" in why[104]
    assert "category_id 99" in why[105]
    assert second["image_id"] == 2 and second["kept"] == 1 and not second["skipped"]
    assert "RLE" in why[106] or "counts" in why[106]
    assert out["counts"]["crowd"] == 1 and out["counts"]["bad_annotation"] == 3
    for e in out["images"]:
        assert os.path.isfile(os.path.join(out["dir"], e["png"]))
    assert os.path.isfile(out["sheet"])
    with open(out["index"]) as f:
        assert json.load(f)["images"][0]["skipped"][0]["index"] == 2
    page = report.write_report(str(tmp_path / "wd"), bad_train)
    text = _read(page)
    assert "odd number of coordinates" in text and "sheet.png" in text


def test_verdicts_and_crowd_region():
    image, cats = BAD_TRAIN["images"][0], BAD_TRAIN["categories"]
    anns = {a["id"]: a for a in BAD_TRAIN["annotations"]}
    crowd = browse.annotation_verdict(image, anns[102], cats, with_masks=True)
    assert crowd.status == "crowd" and crowd.region  # the validated polygon, to be drawn
    masks = browse._region_masks([crowd.region, None], 64, 64)
    assert masks[0].sum() == 400 and masks[1].sum() == 0
    assert browse.annotation_verdict(image, anns[101], cats, True).status == "kept"
    assert browse.annotation_verdict(image, anns[104], cats, False).status == "kept"  # boxes only


def test_browse_augmented_and_random_pick(bad_train, tmp_path):
    bad_train.browse.augmented = True
    bad_train.browse.images = (1, 3)
    bad_train.input.min_size_train = (96,)
    bad_train.input.max_size_train = 96
    out = browse.run(bad_train, str(tmp_path / "wd"), None)
    assert out["dir"].endswith("train_augmented")
    assert "note" not in out["images"][0]
    assert "filter_empty" in out["images"][1]["note"]  # image 3 has nothing: never fed
    bad_train.browse.images = ()
    bad_train.browse.num_images = 2
    a = [e["image_id"] for e in browse.run(bad_train, str(tmp_path / "a"), None)["images"]]
    b = [e["image_id"] for e in browse.run(bad_train, str(tmp_path / "b"), None)["images"]]
    assert a == b and len(a) == 2 and a == sorted(a)
    bad_train.browse.images = (7,)
    with pytest.raises(ValueError, match="not in the annotation file"):
        browse.run(bad_train, str(tmp_path / "c"), None)
    bad_train.browse.split = "test"
    with pytest.raises(ValueError, match="browse.split"):
        browse.run(bad_train, str(tmp_path / "c"), None)


@pytest.mark.parametrize("bgr", [False, True])
def test_denormalize_inverts_the_transform(tiny_config, bgr):
    cfg = tiny_config.input
    cfg.to_bgr255 = bgr
    if bgr:
        cfg.pixel_mean = (102.98, 115.95, 122.77)
    image = torch.randint(0, 256, (3, 8, 9), dtype=torch.uint8)
    x = transforms.normalize(image, cfg.pixel_mean, cfg.pixel_std, cfg.to_bgr255)
    assert torch.equal(browse.denormalize(x, cfg), image)


def _jsonl(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


def test_curves_read_and_overlay(tmp_path):
    lines = [{"iter": 10, "train/loss": 2.0, "train/lr": 0.1, "train/max_mem_mb": 0.0},
             "not json", [1, 2], {"iter": "x", "train/loss": 9.0},
             {"iter": 20, "train/loss": 1.0, "train/lr": 0.1, "train/max_mem_mb": 0.0},
             {"iter": 20, "train/loss": 1.5, "flag": True},
             {"iter": 20, "eval/segm/AP": 0.4}]
    _jsonl(str(tmp_path / "r1" / "metrics.jsonl"), lines)
    _jsonl(str(tmp_path / "r2" / "metrics.jsonl"), lines[:1])
    m = curves.read_metrics(str(tmp_path / "r1" / "metrics.jsonl"))
    assert m["train/loss"][0].tolist() == [10, 20] and m["train/loss"][1].tolist() == [2.0, 1.5]
    assert "flag" not in m and m["eval/segm/AP"][1].tolist() == [0.4]
    assert curves.running_mean(np.array([2.0, np.nan, 1.0])).tolist() == [2.0, 2.0, 1.5]
    out = curves.plot_runs([str(tmp_path / "r1"), str(tmp_path / "r2")], str(tmp_path / "c"))
    assert set(out) == {"losses", "schedule", "eval"}
    assert all(os.path.getsize(p) > 1000 for p in out.values())
    assert curves.plot_runs([str(tmp_path / "none")], str(tmp_path / "d")) == {}
    curves.main([str(tmp_path / "r1"), "--out", str(tmp_path / "cli")])
    assert os.path.isfile(tmp_path / "cli" / "losses.png")


def test_report_on_an_empty_or_broken_workdir(tmp_path):
    wd = str(tmp_path / "empty")
    page = report.write_report(wd, None)
    text = _read(page)
    assert text.startswith("<!doctype html>") and "No evaluation yet" in text
    assert "Not analysed yet" in text and "<img" not in text
    os.makedirs(os.path.join(wd, "analysis"))
    with open(os.path.join(wd, "analysis", "summary.json"), "w") as f:
        f.write("{garbage")
    assert "Not analysed yet" in _read(report.write_report(wd, None))
    with open(os.path.join(wd, "analysis", "summary.json"), "w") as f:
        json.dump({"tasks": {"bbox": {}}}, f)  # an older or foreign layout
    text = _read(report.write_report(wd, None))
    assert "Analysis could not be shown" in text and "</html>" in text
