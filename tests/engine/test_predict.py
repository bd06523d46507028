"""`--mode=predict`: inputs (file, folder, glob, symlinks), bad files, predictions.json, PNGs."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from eval_fixtures import FakeDist
from torch import nn

from configs import r50_fpn_1x
from mrcnn.build import Built, FastPaths
from mrcnn.data import category_table
from mrcnn.engine import inference, predict
from mrcnn.structures import Detections, ImageBatch
from mrcnn.visualize import class_color


class CentreModel(nn.Module):
    """Per image: a confident box over the middle half of the (resized) image, label 1, and a
    low-scoring one, label 2, in the top-left corner; masks are probabilities [K, 1, 4, 4]."""

    def forward(self, images: ImageBatch) -> list[Detections]:
        out = []
        for h, w in images.image_sizes:
            boxes = torch.tensor([[w / 4, h / 4, 3 * w / 4, 3 * h / 4], [0, 0, w / 8, h / 8]])
            out.append(
                Detections(
                    boxes, torch.tensor([0.9, 0.2]), torch.tensor([1, 2]), torch.ones(2, 1, 4, 4)
                )
            )
        return out


def box_paste(det, size, orig_size, mask_threshold=0.5):
    """Stand-in for detections_to_original: boxes scaled per axis, masks = the box's pixels."""
    sy, sx = orig_size[0] / size[0], orig_size[1] / size[1]
    boxes = det.boxes * torch.tensor([sx, sy, sx, sy])
    masks = torch.zeros(len(boxes), *orig_size, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
        masks[k, y1:y2, x1:x2] = 1
    return Detections(boxes, det.scores, det.labels, masks)


@pytest.fixture
def setup(monkeypatch, tmp_path):
    monkeypatch.setattr(
        predict, "build",
        lambda config, device, purpose, workdir: Built(
            CentreModel().eval(), FastPaths(), purpose, categories=category_table(config)))
    monkeypatch.setattr(inference, "_to_original", box_paste)
    cats = [{"id": 1, "name": "square"}, {"id": 5, "name": "box"}, {"id": 90, "name": "tile"}]
    ann = tmp_path / "cats.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    c = r50_fpn_1x.get_config()
    c.device = "cpu"
    c.model.num_classes = 4
    c.data.train.ann_file = str(ann)
    c.data.train.img_dir = str(tmp_path)
    c.data.num_workers = 0
    c.input.min_size_test = 32  # images are downscaled: predictions must come back scaled up
    c.input.max_size_test = 64
    c.test.ims_per_batch = 2
    c.log_period = 1
    return c


def _write_image(path, h, w, seed, fmt=None):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)


def _folder_with_bad_files(root):
    root.mkdir()
    _write_image(root / "a.png", 48, 64, 0)
    _write_image(root / "c.jpg", 64, 40, 1)
    _write_image(root / "e.png", 40, 40, 2)
    _write_image(root / "d.jpg", 60, 60, 3)
    data = (root / "d.jpg").read_bytes()
    (root / "d.jpg").write_bytes(data[: len(data) // 3])  # truncated JPEG
    (root / "b.png").write_text("not an image at all")  # an image name, text inside
    (root / "notes.txt").write_text("ignored by extension")
    (root / "sub").mkdir()
    _write_image(root / "sub" / "deep.png", 32, 32, 4)  # folders are not recursed into
    return root


def test_predict_folder_with_bad_files(setup, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = setup
    config.data.num_workers = 1  # decoding in a worker process: bad files still come back named
    config.predict.input = str(_folder_with_bad_files(tmp_path / "imgs"))
    workdir = tmp_path / "run"
    summary = predict.predict(config, str(workdir), torch.device("cpu"))

    files = ["a.png", "b.png", "c.jpg", "d.jpg", "e.png"]
    good = {"a.png": (48, 64), "c.jpg": (64, 40), "e.png": (40, 40)}
    assert summary["images"] == 3 and summary["num_skipped"] == 2
    assert sorted(os.path.basename(p) for p in summary["skipped"]) == ["b.png", "d.jpg"]
    assert [os.path.basename(p) for p in summary["ignored"]] == ["notes.txt"]
    for name in ("b.png", "d.jpg", "notes.txt"):
        assert name in caplog.text  # reported by name
    assert "2 skipped" in caplog.text

    records = json.loads((workdir / "predictions.json").read_text())
    assert summary["detections"] == len(records) == 3  # the 0.2 detections are below 0.5
    for r in records:
        name = os.path.basename(r["file_name"])
        h, w = good[name]
        assert r["image_id"] == files.index(name)  # index in the sorted input list
        assert r["category_id"] == 1 and r["score"] == pytest.approx(0.9)
        assert r["bbox"] == pytest.approx([w / 4, h / 4, w / 2, h / 2], abs=0.6)
        m = mask_util.decode(r["segmentation"])
        assert m.shape == (h, w) and m.sum() > 0
    assert sorted(os.listdir(workdir / "predictions")) == ["a.png", "c.png", "e.png"]
    drawn = np.asarray(Image.open(workdir / "predictions" / "a.png"))
    assert drawn.shape == (48, 64, 3)
    # The box [16, 12, 48, 36] is outlined in class 1's colour, at the original-image position.
    assert tuple(drawn[36, 30]) == tuple(drawn[30, 16]) == class_color(1)


def test_predict_refuses_symlinks_out_of_the_glob_or_folder(setup, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = setup
    outside = tmp_path / "outside"
    outside.mkdir()
    _write_image(outside / "secret.png", 32, 32, 5)
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    _write_image(root / "a.png", 32, 48, 6)
    _write_image(root / "sub" / "b.png", 32, 32, 7)
    os.symlink(outside / "secret.png", root / "evil.png")
    os.symlink(outside, root / "sub" / "link")
    os.symlink(root / "a.png", root / "sub" / "alias.png")  # stays inside: allowed

    listed = predict.list_inputs(str(root / "**" / "*.png"))
    rel = lambda ps: sorted(os.path.relpath(p, root) for p in ps)  # noqa: E731
    assert rel(listed.paths) == ["a.png", "sub/alias.png", "sub/b.png"]
    assert rel(listed.refused) == ["evil.png", "sub/link/secret.png"]
    assert "refusing" in caplog.text and "evil.png" in caplog.text

    listed = predict.list_inputs(str(root))  # a folder: its own files, no recursion
    assert rel(listed.paths) == ["a.png"] and rel(listed.refused) == ["evil.png"]

    config.predict.input = str(root / "*.png")
    workdir = tmp_path / "run"
    summary = predict.predict(config, str(workdir), torch.device("cpu"))
    assert summary["images"] == 1 and rel(summary["refused"]) == ["evil.png"]
    records = json.loads((workdir / "predictions.json").read_text())
    assert {os.path.basename(r["file_name"]) for r in records} == {"a.png"}
    assert os.listdir(workdir / "predictions") == ["a.png"]


def test_list_inputs_file_and_missing(tmp_path):
    _write_image(tmp_path / "x.weird", 8, 8, 0, fmt="PNG")
    assert predict.list_inputs(str(tmp_path / "x.weird")).paths == [str(tmp_path / "x.weird")]
    with pytest.raises(FileNotFoundError, match="no such file"):
        predict.list_inputs(str(tmp_path / "nope.png"))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        predict.list_inputs(str(tmp_path / "*.jpg"))
    assert predict._glob_root("a/b/*/c.png") == "a/b"
    assert predict._glob_root("/a/b*/c.png") == "/a"
    assert predict._glob_root("*.png") == "."
    assert predict._glob_root("/*.png") == "/"


def test_output_names_are_distinct():
    names = predict.output_names(["x/a.jpg", "y/a.png", "a_1.jpg", "b.png", "z/a.jpg"])
    assert names[0] == "a.png" and names[3] == "b.png"
    assert len(set(names)) == 5 and all(n.endswith(".png") for n in names)


def test_predict_single_file_no_drawing(setup, tmp_path):
    config = setup
    _write_image(tmp_path / "one.jpg", 50, 30, 8)
    config.predict.input = str(tmp_path / "one.jpg")
    config.predict.draw = False
    config.predict.score_thresh = 0.1  # now both detections are written
    workdir = tmp_path / "run"
    summary = predict.predict(config, str(workdir), torch.device("cpu"))
    records = json.loads((workdir / "predictions.json").read_text())
    assert summary["images"] == 1 and [r["category_id"] for r in records] == [1, 5]
    assert not (workdir / "predictions").exists()


def test_predict_two_ranks(setup, tmp_path, monkeypatch):
    config = setup
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(5):
        _write_image(root / f"{i}.png", 32 + 4 * i, 40, i)
    config.predict.input = str(root)
    fd = FakeDist(2)
    fd.patch(monkeypatch)
    results, errors = fd.run(
        lambda r: predict.predict(config, str(tmp_path / "run"), torch.device("cpu"))
    )
    assert errors == [None, None]
    assert results[0]["images"] == results[1]["images"] == 5
    records = json.loads((tmp_path / "run" / "predictions.json").read_text())
    assert [r["image_id"] for r in records] == [0, 1, 2, 3, 4]
    assert len(os.listdir(tmp_path / "run" / "predictions")) == 5
