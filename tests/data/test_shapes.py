"""The synthetic shapes dataset: deterministic, annotations = visible pixels, valid COCO, and
generated once, atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import time

import ml_collections
import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from configs import shapes as shapes_config
from mrcnn.data import catalog, shapes

SMALL = shapes.ShapesParams(
    seed=3, num_train=24, num_val=6, image_size=64, num_classes=3, max_objects=5
)


def _config(root, **shape_overrides) -> ml_collections.ConfigDict:
    c = shapes_config.get_config()
    c.data.root = str(root)
    for k, v in dict(num_train=12, num_val=4, image_size=64, seed=1, **shape_overrides).items():
        c.data.shapes[k] = v
    return c


def _digest(folder: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _decode(segm, h: int, w: int) -> np.ndarray:
    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, h, w))
    else:
        rle = {"size": segm["size"], "counts": segm["counts"].encode()}
    return mask_util.decode(rle).astype(bool)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    shapes.generate(SMALL, str(tmp_path / "a"))
    shapes.generate(SMALL, str(tmp_path / "b"))
    shapes.generate(dataclasses.replace(SMALL, seed=4), str(tmp_path / "c"))
    a, b, c = (_digest(str(tmp_path / x)) for x in "abc")
    assert a == b
    assert len(a) == SMALL.num_train + SMALL.num_val + 3  # images, 2 jsons, params.json
    assert a["annotations/instances_train.json"] != c["annotations/instances_train.json"]


def test_annotations_rasterize_to_the_visible_pixels():
    kinds = {"polygon": 0, "rle": 0}
    for index in range(60):
        r = shapes.render(SMALL, "train", index)
        assert r.image.shape == (64, 64, 3) and r.image.dtype == np.uint8
        assert 1 <= len(r.annotations) <= SMALL.max_objects
        for ann, vis in zip(r.annotations, r.visible):
            # Through JSON, as a reader of the file would see it.
            ann = json.loads(json.dumps(ann))
            m = _decode(ann["segmentation"], 64, 64)
            iou = (m & vis).sum() / (m | vis).sum()
            assert iou >= 0.95, (index, iou)
            kinds["polygon" if isinstance(ann["segmentation"], list) else "rle"] += 1
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(vis)
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert ann["area"] == vis.sum() and vis.sum() > 0
            assert 1 <= ann["category_id"] <= SMALL.num_classes
        # Visible regions never overlap: each pixel belongs to the topmost shape only.
        assert (r.visible.sum(0) <= 1).all()
    assert kinds["polygon"] > 0 and kinds["rle"] > 0  # both encodings occur


def test_fully_visible_shapes_are_their_exact_polygons():
    r = shapes.render(dataclasses.replace(SMALL, max_objects=1), "val", 0)
    (ann,) = r.annotations
    assert isinstance(ann["segmentation"], list) and len(ann["segmentation"]) == 1
    poly = np.array(ann["segmentation"][0])
    assert len(poly) // 2 in (3, 4, 24)  # triangle, square or circle as a 24-gon
    assert np.array_equal(poly, np.round(poly, 2))


def test_heavily_occluded_shapes_are_dropped():
    # Occlusion is random: over many images some instance must be hidden below 30%, and no kept
    # partly visible instance may be below the threshold.
    total_drawn = total_kept = 0
    for index in range(80):
        r = shapes.render(SMALL, "train", index)
        for ann in r.annotations:
            if isinstance(ann["segmentation"], dict):
                m = _decode(ann["segmentation"], 64, 64)
                assert m.sum() == ann["area"]
        total_kept += len(r.annotations)
        total_drawn += _drawn_count(index)
    assert total_drawn > total_kept


def _drawn_count(index: int) -> int:
    """Replays the generator's first draws to get how many objects image `index` drew."""
    rng = np.random.default_rng([SMALL.seed, 0, index, shapes.GENERATOR_VERSION])
    shapes._background(rng, SMALL.image_size)
    return int(rng.integers(1, SMALL.max_objects + 1))


def test_pycocotools_loads_the_generated_json(tmp_path):
    cfg = _config(tmp_path)
    train_cfg, val_cfg = catalog.ensure_shapes_dataset(cfg)
    for c in (train_cfg, val_cfg):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(c.ann_file)
        assert len(coco.getImgIds()) in (12, 4)
        assert sorted(coco.getCatIds()) == [1, 2, 3]
        assert [x["name"] for x in coco.loadCats([1, 2, 3])] == ["square", "circle", "triangle"]
        for ann in coco.loadAnns(coco.getAnnIds()):
            m = coco.annToMask(ann)
            assert m.shape == (64, 64) and m.sum() == ann["area"]
        for img in coco.loadImgs(coco.getImgIds()):
            assert os.path.isfile(os.path.join(c.img_dir, img["file_name"]))


def test_ensure_is_idempotent_and_keyed_by_parameters(tmp_path):
    cfg = _config(tmp_path)
    first = catalog.ensure_shapes_dataset(cfg)
    stamp = os.path.getmtime(first[0].ann_file)
    t0 = time.perf_counter()
    again = catalog.ensure_shapes_dataset(cfg)
    assert time.perf_counter() - t0 < 0.05
    assert [c.to_dict() for c in again] == [c.to_dict() for c in first]
    assert os.path.getmtime(first[0].ann_file) == stamp
    other = catalog.ensure_shapes_dataset(_config(tmp_path, num_classes=4))
    assert other[0].ann_file != first[0].ann_file
    cats = json.load(open(other[0].ann_file))["categories"]
    assert [c["name"] for c in cats] == ["square", "circle", "triangle", "pentagon"]


def test_killed_generation_leaves_nothing_and_is_cleaned_up(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    real_write = shapes.write_split

    def dies_in_val(params, split, out_dir):
        if split == "val":
            raise KeyboardInterrupt  # like a Ctrl-C half way through
        return real_write(params, split, out_dir)

    monkeypatch.setattr(shapes, "write_split", dies_in_val)
    with pytest.raises(KeyboardInterrupt):
        catalog.ensure_shapes_dataset(cfg)
    parent = tmp_path / "shapes"
    assert [p for p in os.listdir(parent) if not p.endswith(".lock")] == []

    # A temporary folder left by a process that was killed outright (no cleanup ran).
    params = catalog.shapes_params(cfg)
    stale = parent / f".tmp-{params.key()}-{__import__('socket').gethostname()}-999999"
    (stale / "train").mkdir(parents=True)
    monkeypatch.setattr(shapes, "write_split", real_write)
    train_cfg, _ = catalog.ensure_shapes_dataset(cfg)
    assert not stale.exists()
    assert os.path.isfile(train_cfg.ann_file)


def test_invalid_parameters_name_the_key():
    with pytest.raises(ValueError, match="data.shapes.num_classes"):
        shapes.ShapesParams(num_classes=9)
    with pytest.raises(ValueError, match="data.shapes.max_objects"):
        shapes.ShapesParams(max_objects=0)


def test_generation_speed():
    # The spec: 2000 + 200 images at 128 px well under a minute on one core (~27 ms each).
    # Measured ~2 ms per image; the bound here only catches a pathological regression on a
    # loaded machine.
    params = shapes.ShapesParams(image_size=128)
    t0 = time.perf_counter()
    for i in range(40):
        shapes._encode(shapes.render(params, "train", i).image, "jpg")
    per_image = (time.perf_counter() - t0) / 40
    assert per_image < 0.027, per_image
