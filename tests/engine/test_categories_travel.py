"""The category table travels with the model: every checkpoint and config.json carry it; predict
and eval read it from the checkpoint (no training json needed); a resume onto other categories
is refused; torchvision's weights get COCO's table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from configs import shapes
from mrcnn.build.categories import model_categories, stored_table
from mrcnn.data import CategoryTable, category_table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _main(*args, timeout=600):
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("travel")
    w, data = str(tmp / "w"), str(tmp / "data")
    r = _main("--config=configs/shapes.py:tiny", "--mode=train", f"--workdir={w}",
              f"--config.data.root={data}", "--config.solver.max_iter=2",
              "--config.eval.final=False", "--config.data.num_workers=0")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return tmp, w, data


def test_checkpoint_and_config_json_carry_the_table(trained):
    tmp, w, data = trained
    c = shapes.get_config("tiny")
    c.data.root = data
    expected = category_table(c)
    assert stored_table(os.path.join(w, "model_0000002.pth")) == expected
    with open(os.path.join(w, "config.json")) as f:
        assert CategoryTable.from_dict(json.load(f)["categories"]) == expected


def test_predict_needs_no_training_json(trained):
    tmp, w, data = trained
    img = tmp / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(img)
    # The training set points nowhere: the categories must come from the checkpoint.
    r = _main("--config=configs/shapes.py:tiny", "--mode=predict", f"--workdir={w}",
              f"--config.predict.input={img}", "--config.predict.score_thresh=0.0",
              "--config.data.train.ann_file=/nonexistent/train.json",
              "--config.data.train.img_dir=/nonexistent", "--config.data.num_workers=0")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    c = shapes.get_config("tiny")
    c.data.root = data
    with open(os.path.join(w, "predictions.json")) as f:
        ids = {p["category_id"] for p in json.load(f)}
    assert ids <= set(category_table(c).category_ids)


def test_resume_onto_other_categories_is_refused(trained, tmp_path):
    tmp, w, data = trained
    cats = [{"id": 3, "name": "a"}, {"id": 4, "name": "b"}, {"id": 9, "name": "c"}]
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    r = _main("--config=configs/shapes.py:tiny", "--mode=train", f"--workdir={w}",
              f"--config.data.root={data}", "--config.solver.max_iter=4",
              f"--config.data.train.ann_file={ann}", f"--config.data.train.img_dir={tmp_path}",
              "--config.data.num_workers=0")
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert "resuming would give its labels other meanings" in out


def test_torchvision_weights_get_coco_and_tables_must_fit_num_classes(tmp_path):
    c = shapes.get_config("tiny")
    c.data.root = str(tmp_path)
    c.model.num_classes = 91
    c.data.category_ids_as_labels = True
    table = model_categories(c, "tv.pth", "torchvision")
    assert table == CategoryTable.coco(True) and table.name_of_label(1) == "person"
    c.model.num_classes = 5
    with pytest.raises(Exception, match="model.num_classes"):
        model_categories(c, "tv.pth", "torchvision")
    path = str(tmp_path / "old.pth")
    torch.save({"model": {}}, path)  # a checkpoint from before tables travelled
    assert stored_table(path) is None
