"""The train and test loaders: the Batch contract, resume and rank splits, workers, shards,
unreadable images skipped and counted."""

from __future__ import annotations

import gc
import os
import shutil

import ml_collections
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from mrcnn import data
from mrcnn.structures import Batch, ImageBatch


def test_train_loader_gives_the_batch_contract(small_config, shapes_root):
    c = small_config(shapes_root)
    loader = data.build_train_loader(c)
    for _ in range(6):
        b = next(loader)
        assert isinstance(b, Batch) and isinstance(b.images, ImageBatch)
        x = b.images.tensor
        assert x.dtype == torch.float32 and x.ndim == 4 and x.shape[:2] == (4, 3)
        assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0
        assert len(b.infos) == len(b.targets) == len(b.images.image_sizes) == 4
        for i, (info, t, size) in enumerate(zip(b.infos, b.targets, b.images.image_sizes)):
            assert info.size == size and info.orig_size == (64, 64)
            h, w = size
            assert (x[i, :, h:, :] == 0).all() and (x[i, :, :, w:] == 0).all()
            assert t.boxes.dtype == torch.float32 and t.boxes.shape[1] == 4
            assert t.labels.dtype == torch.int64 and len(t.labels) >= 1
            assert ((t.labels >= 1) & (t.labels <= 3)).all()
            assert (t.boxes[:, 2:] > t.boxes[:, :2]).all()
            assert (t.boxes >= 0).all()
            assert (t.boxes[:, 2] <= w).all() and (t.boxes[:, 3] <= h).all()
            assert len(t.masks) == len(t.labels)
            if t.masks.bitmasks is not None:
                assert t.masks.bitmasks.shape == (len(t.labels), h, w)
            for parts in t.masks.polygons:
                for p in parts:
                    assert p.dtype == torch.float32 and p.ndim == 1 and len(p) >= 6
                    assert p[0::2].min() >= -1 and p[0::2].max() <= w + 1
    assert data.iters_per_epoch(c, len(loader.dataset)) == 4
    assert loader.dataset.bad_counts["bad_image"] == 0


def test_train_loader_masks_match_boxes(small_config, shapes_root):
    """The target masks (polygons rasterized / bitmasks) lie inside their boxes, flipped or not."""
    c = small_config(shapes_root)
    loader = data.build_train_loader(c)
    flips = set()
    for _ in range(8):
        b = next(loader)
        for info, t in zip(b.infos, b.targets):
            flips.add(info.flipped)
            h, w = info.size
            for k in range(len(t.labels)):
                if t.masks.is_polygon()[k]:
                    m = mask_util.decode(
                        mask_util.merge(
                            mask_util.frPyObjects(
                                [p.double().tolist() for p in t.masks.polygons[k]], h, w
                            )
                        )
                    )
                else:
                    m = t.masks.bitmasks[k].numpy()
                ys, xs = np.nonzero(m)
                x1, y1, x2, y2 = t.boxes[k].tolist()
                assert xs.min() >= x1 - 2 and xs.max() + 1 <= x2 + 2
                assert ys.min() >= y1 - 2 and ys.max() + 1 <= y2 + 2
    assert flips == {False, True}


def test_train_loader_resume_and_rank_split(small_config, shapes_root):
    c = small_config(shapes_root)
    full = data.build_train_loader(c)
    ref = [next(full) for _ in range(5)]
    resumed = data.build_train_loader(c, start_iter=3)
    for want in ref[3:]:
        got = next(resumed)
        assert torch.equal(got.images.tensor, want.images.tensor)
        assert [i.image_id for i in got.infos] == [i.image_id for i in want.infos]
    ranks = [data.build_train_loader(c, rank=r, world_size=2) for r in range(2)]
    for want in ref[:3]:
        parts = [next(r) for r in ranks]
        ids = [i.image_id for p in parts for i in p.infos]
        assert ids == [i.image_id for i in want.infos]
        flips = [i.flipped for p in parts for i in p.infos]
        assert flips == [i.flipped for i in want.infos]
        boxes = [t.boxes for p in parts for t in p.targets]
        assert all(torch.equal(a, b.boxes) for a, b in zip(boxes, want.targets))


def test_workers_do_not_change_the_batches(small_config, shapes_root):
    c0 = small_config(shapes_root)
    c2 = small_config(shapes_root, **{"data.num_workers": 2})
    a, b = data.build_train_loader(c0), data.build_train_loader(c2)
    for _ in range(3):
        x, y = next(a), next(b)
        assert [i.image_id for i in x.infos] == [i.image_id for i in y.infos]
        assert [i.flipped for i in x.infos] == [i.flipped for i in y.infos]
        assert x.images.image_sizes == y.images.image_sizes
        assert all(torch.equal(s.boxes, t.boxes) for s, t in zip(x.targets, y.targets))
        # Workers run torch with one thread, this process with two: bilinear resizing then
        # differs in the last bit of some pixels (SIMD tails fall elsewhere), nothing more.
        assert torch.allclose(x.images.tensor, y.images.tensor, rtol=0, atol=1e-5)
    workers = list(b._it._workers)
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    b.close()
    gc.collect()
    for w in workers:
        w.join(timeout=10)
    assert not any(w.is_alive() for w in workers)


def test_loaders_leave_the_global_rng_alone(small_config, shapes_root):
    c = small_config(shapes_root)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    next(data.build_train_loader(c))
    list(data.build_test_loader(c)[0])
    assert torch.equal(torch.rand(3), expected)


def test_accumulation_splits_the_global_batch(small_config, shapes_root):
    c1 = small_config(shapes_root)
    c2 = small_config(shapes_root, **{"solver.accumulate_steps": 2})
    one, two = data.build_train_loader(c1), data.build_train_loader(c2)
    for _ in range(2):
        want = next(one)
        got = [next(two), next(two)]
        assert [len(g.infos) for g in got] == [2, 2]
        assert [i.image_id for g in got for i in g.infos] == [i.image_id for i in want.infos]


def test_test_loader_shards_cover_each_image_once(small_config, shapes_root):
    c = small_config(shapes_root)
    loader, ds = data.build_test_loader(c)
    assert ds.ann_file.endswith("instances_val.json") and os.path.isfile(ds.ann_file)
    assert len(ds.image_ids) == 5
    seen = []
    for b in loader:
        assert b.targets is None and len(b.infos) <= 2
        assert b.images.tensor.shape[-1] % 32 == 0
        seen.extend(i.image_id for i in b.infos)
        for info in b.infos:
            assert info.size == (72, 72)  # min_size_test 72 on 64x64 images
    assert seen == ds.image_ids
    for world in (2, 3, 8):
        union = []
        for r in range(world):
            ld, _ = data.build_test_loader(c, rank=r, world_size=world)
            union.extend(i.image_id for b in ld for i in b.infos)
        assert union == ds.image_ids
    c.eval.num_images = 3
    ld, ds3 = data.build_test_loader(c)
    assert ds3.image_ids == ds.image_ids[:3]
    assert [i.image_id for b in ld for i in b.infos] == ds.image_ids[:3]
    _, ds_train = data.build_test_loader(c, dataset_cfg=c.data.train)
    assert len(ds_train.image_ids) == 3


def _copy_shapes(small_config, shapes_root, dest):
    c = small_config(shapes_root)
    train_cfg, val_cfg = data.ensure_shapes_dataset(c)
    d = os.path.dirname(os.path.dirname(train_cfg.ann_file))
    shutil.copytree(d, dest)
    rel = lambda p: os.path.join(dest, os.path.relpath(p, d))  # noqa: E731
    return (
        {"name": "", "img_dir": rel(train_cfg.img_dir), "ann_file": rel(train_cfg.ann_file)},
        {"name": "", "img_dir": rel(val_cfg.img_dir), "ann_file": rel(val_cfg.ann_file)},
    )


def test_unreadable_training_images_are_skipped_and_counted(small_config, shapes_root, tmp_path):
    train, val = _copy_shapes(small_config, shapes_root, tmp_path / "copy")
    names = sorted(os.listdir(train["img_dir"]))
    os.remove(os.path.join(train["img_dir"], names[0]))
    with open(os.path.join(train["img_dir"], names[1]), "wb") as f:
        f.write(b"not a jpeg")
    c = small_config(shapes_root)
    c.data.train = ml_collections.ConfigDict(train)
    c.data.aspect_ratio_grouping = False
    loader = data.build_train_loader(c)
    files = set()
    for _ in range(12):  # 3 epochs of 16 images
        b = next(loader)
        files.update(i.file_name for i in b.infos)
        assert len(b.infos) == 4
    assert names[0] not in files and names[1] not in files
    assert loader.dataset.bad_counts["bad_image"] >= 2

    c.data.on_bad_image = "fail"
    loader = data.build_train_loader(c)
    with pytest.raises(data.ImageError, match="cannot read image .*0000"):
        for _ in range(12):
            next(loader)

    os.remove(os.path.join(val["img_dir"], "000002.jpg"))
    c.data.val = ml_collections.ConfigDict(val)
    c.data.on_bad_image = "skip"
    ld, ds = data.build_test_loader(c)
    ids = [i.image_id for b in ld for i in b.infos]
    assert ids == [1, 2, 4, 5] and ds.bad_counts["bad_image"] == 1
    c.data.on_bad_image = "fail"
    ld, _ = data.build_test_loader(c)
    with pytest.raises(data.ImageError, match=r"000002.jpg.*\(image id 3\)"):
        list(ld)


def test_a_fifo_in_the_image_folder_is_a_bad_image_not_a_hang(small_config, shapes_root, tmp_path):
    train, val = _copy_shapes(small_config, shapes_root, tmp_path / "copy")
    for cfg in (train, val):
        victim = os.path.join(cfg["img_dir"], "000001.jpg")
        os.remove(victim)
        os.mkfifo(victim)  # a stand-in for a dead network mount: open() would block forever
    c = small_config(shapes_root)
    c.data.train, c.data.val = ml_collections.ConfigDict(train), ml_collections.ConfigDict(val)
    c.data.aspect_ratio_grouping = False
    loader = data.build_train_loader(c)
    files = {i.file_name for _ in range(8) for i in next(loader).infos}  # 2 epochs
    assert "000001.jpg" not in files and loader.bad_counts["bad_image"] >= 1
    c.data.on_bad_image = "skip"
    ld, ds = data.build_test_loader(c)
    assert [i.image_id for b in ld for i in b.infos] == [1, 3, 4, 5]
    assert ds.bad_counts["bad_image"] == 1
    c.data.on_bad_image = "fail"
    with pytest.raises(data.ImageError, match=r"000001\.jpg: a FIFO .*\(image id 2\)"):
        list(data.build_test_loader(c)[0])
    loader = data.build_train_loader(c)
    with pytest.raises(data.ImageError, match=r"000001\.jpg: a FIFO"):
        for _ in range(8):
            next(loader)


def _strip_dataset(folder) -> tuple[str, str]:
    """Four images: three ordinary ones and a 1 x 400 strip, each with one object."""
    import json

    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    sizes = [(40, 50), (1, 400), (44, 52), (38, 60)]
    images, anns = [], []
    for i, (h, w) in enumerate(sizes, start=1):
        pixels = np.full((h, w, 3), 60 * i, np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
        images.append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        bw, bh = min(w, 20), min(h, 20)
        anns.append(
            {
                "id": 10 + i,
                "image_id": i,
                "category_id": 1,
                "bbox": [0, 0, bw, bh],
                "segmentation": [[0, 0, bw, 0, bw, bh, 0, bh]],
            }
        )
    ann_file = os.path.join(folder, "ann.json")
    with open(ann_file, "w") as f:
        cats = [{"id": 1, "name": "a"}]
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return folder, ann_file


def test_a_strip_image_trains_and_evaluates(small_config, tmp_path):
    img_dir, ann_file = _strip_dataset(tmp_path / "strip")
    c = small_config(tmp_path, **{"model.num_classes": 2, "data.aspect_ratio_grouping": False})
    c.data.train = ml_collections.ConfigDict(
        {"name": "", "img_dir": str(img_dir), "ann_file": ann_file}
    )
    c.data.val = c.data.train
    loader = data.build_train_loader(c)
    seen = set()
    for _ in range(4):
        b = next(loader)
        for info, size in zip(b.infos, b.images.image_sizes):
            assert min(size) >= 1
            seen.add(info.image_id)
        for t in b.targets:
            assert torch.isfinite(t.boxes).all() and (t.boxes[:, 2:] > t.boxes[:, :2]).all()
    assert 2 in seen and loader.bad_counts["bad_image"] == 0
    ld, _ = data.build_test_loader(c)
    assert [i.image_id for b in ld for i in b.infos] == [1, 2, 3, 4]


def test_an_image_that_cannot_be_processed_is_named_skipped_and_counted(
    small_config, tmp_path, monkeypatch
):
    from mrcnn.data import coco as coco_ds

    img_dir, ann_file = _strip_dataset(tmp_path / "strip")
    real = coco_ds.T.preprocess

    def fails_on_the_strip(image, *a, **kw):
        if image.shape[-2] == 1:
            raise RuntimeError("no kernel for this size")  # what torch raises, e.g. OOM
        return real(image, *a, **kw)

    monkeypatch.setattr(coco_ds.T, "preprocess", fails_on_the_strip)
    c = small_config(tmp_path, **{"model.num_classes": 2, "data.aspect_ratio_grouping": False})
    c.data.train = ml_collections.ConfigDict(
        {"name": "", "img_dir": str(img_dir), "ann_file": ann_file}
    )
    c.data.val = c.data.train
    loader = data.build_train_loader(c)
    ids = {i.image_id for _ in range(4) for i in next(loader).infos}
    assert 2 not in ids and loader.bad_counts["bad_image"] >= 1
    c.data.on_bad_image = "skip"
    ld, ds = data.build_test_loader(c)
    assert [i.image_id for b in ld for i in b.infos] == [1, 3, 4]
    assert ds.bad_counts["bad_image"] == 1
    c.data.on_bad_image = "fail"
    with pytest.raises(data.ImageError, match=r"2\.png: cannot be processed: Runtime.*image id 2"):
        list(data.build_test_loader(c)[0])
    with pytest.raises(data.ImageError, match=r"2\.png: cannot be processed"):
        data.load_preprocessed(os.path.join(img_dir, "2.png"), c.input)
    monkeypatch.setattr(coco_ds.T, "preprocess", real)
    image, x, info = data.load_preprocessed(os.path.join(img_dir, "2.png"), c.input)
    assert tuple(image.shape) == (3, 1, 400) and info.orig_size == (1, 400)
    assert min(x.shape[-2:]) >= 1
