"""Transforms and loaders: torchvision-equal resizing, exact zero padding, consistent flips, the
Batch contract of the train and test loaders, catalog and label mapping."""

from __future__ import annotations

import gc
import os
import shutil

import ml_collections
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from configs import shapes as shapes_config
from mrcnn import data
from mrcnn.data import catalog
from mrcnn.data import transforms as T
from mrcnn.data.annotations import ImageRecord
from mrcnn.data.coco import record_to_targets
from mrcnn.structures import Batch, ImageBatch, InstanceMasks, Targets


def _input_cfg(**kw) -> ml_collections.ConfigDict:
    c = shapes_config.get_config().input
    for k, v in kw.items():
        c[k] = v
    return c


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


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    data.ensure_shapes_dataset(_small_config(root))
    return root


# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("min_size,max_size", [(800, 1333), (600, 1000), (64, 100), (32, 40)])
def test_preprocess_and_collate_equal_torchvision_transform(min_size, max_size):
    g = torch.Generator().manual_seed(min_size)
    sizes = [(int(h), int(w)) for h, w in torch.randint(17, 300, (3, 2), generator=g)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]
    cfg = _input_cfg(min_size_test=min_size, max_size_test=max_size, size_divisibility=32)
    ref = GeneralizedRCNNTransform(min_size, max_size, list(cfg.pixel_mean), list(cfg.pixel_std))
    ref.eval()
    expected, _ = ref([im.float() / 255 for im in images])
    outs = [data.preprocess(im, cfg, train=False) for im in images]
    batch = data.collate_images([x for x, _ in outs], 32)
    assert torch.equal(batch.tensor, expected.tensors)  # bit for bit
    assert batch.image_sizes == [tuple(s) for s in expected.image_sizes]
    for (x, info), (h, w) in zip(outs, sizes):
        assert info.orig_size == (h, w) and info.size == tuple(x.shape[-2:]) and not info.flipped


def test_target_resize_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 123, 211, generator=g)
    xy = torch.rand(7, 2, generator=g) * torch.tensor([150.0, 80.0])
    boxes = torch.cat([xy, xy + torch.rand(7, 2, generator=g) * 60 + 1], 1)
    masks = (torch.rand(7, 123, 211, generator=g) > 0.5).to(torch.uint8)
    ref = GeneralizedRCNNTransform(96, 160, [0.0] * 3, [1.0] * 3)
    ref.train()  # resize targets too; one min size so the random choice is fixed
    out, targets = ref([image], [{"boxes": boxes, "masks": masks}])
    size = tuple(out.image_sizes[0])
    assert torch.equal(T.resize_boxes(boxes, (123, 211), size), targets[0]["boxes"])
    assert torch.equal(T.resize_bitmasks(masks, size), targets[0]["masks"])


def test_bgr255_normalization():
    img = torch.randint(0, 256, (3, 5, 6), dtype=torch.uint8)
    mean = (102.9801, 115.9465, 122.7717)
    x = T.normalize(img, mean, (1.0, 1.0, 1.0), to_bgr255=True)
    assert torch.allclose(x[0], img[2].float() - mean[0])
    assert torch.allclose(x[2], img[0].float() - mean[2])
    y = T.normalize(img, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert torch.allclose(y, (img.float() / 255 - 0.5) / 0.25)


def test_padding_is_exactly_zero_and_divisible():
    g = torch.Generator().manual_seed(1)
    images = [torch.randn(3, h, w, generator=g) + 5 for h, w in [(33, 65), (64, 10), (1, 1)]]
    for div in (0, 1, 32, 7):
        b = data.collate_images(images, div)
        H, W = b.tensor.shape[-2:]
        if div > 1:
            assert H % div == 0 and W % div == 0
        assert H >= 64 and W >= 65
        for i, im in enumerate(images):
            h, w = im.shape[-2:]
            assert torch.equal(b.tensor[i, :, :h, :w], im)
            assert (b.tensor[i, :, h:, :] == 0).all() and (b.tensor[i, :, :, w:] == 0).all()
    empty = data.collate_images([], 32)
    assert empty.tensor.shape == (0, 3, 0, 0) and empty.image_sizes == []


def _raster(poly: torch.Tensor, h: int, w: int) -> np.ndarray:
    return mask_util.decode(mask_util.frPyObjects([poly.double().tolist()], h, w))[:, :, 0]


def test_flip_maps_boxes_polygons_and_bitmasks_consistently():
    rng = np.random.default_rng(0)
    h, w = 50, 70
    for _ in range(20):
        pts = rng.uniform([2, 2], [w - 2, h - 2], (int(rng.integers(3, 9)), 2))
        poly = torch.tensor(pts.reshape(-1), dtype=torch.float32)
        m = _raster(poly, h, w)
        fm = _raster(T.flip_polygon(poly, w), h, w)
        # The flipped polygon rasterizes to the mirrored mask, i.e. to what flipping a bitmask
        # gives (up to the rasterizer's ties on pixel edges).
        flipped_bitmask = torch.from_numpy(m).flip(-1).numpy()
        assert (fm != flipped_bitmask).sum() <= 0.02 * max(m.sum(), 1) + 2
        assert m.sum() > 0
        box = torch.tensor(
            [[pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]],
            dtype=torch.float32,
        )
        fbox = T.flip_boxes(box, w)[0]
        fpts = T.flip_polygon(poly, w).view(-1, 2)
        assert torch.allclose(
            fbox,
            torch.stack([fpts[:, 0].min(), fpts[:, 1].min(), fpts[:, 0].max(), fpts[:, 1].max()]),
        )
        assert torch.allclose(T.flip_boxes(T.flip_boxes(box, w), w), box)


def test_record_to_targets_flips_and_resizes_every_mask_kind():
    h, w = 40, 60
    tri = np.array([5, 5, 30, 5, 5, 30], np.float32)
    rle_mask = np.zeros((h, w), np.uint8)
    rle_mask[10:20, 40:55] = 1
    rle = mask_util.encode(np.asfortranarray(rle_mask))["counts"]
    rec = ImageRecord(
        1,
        "x.jpg",
        h,
        w,
        boxes=np.array([[5, 5, 30, 30], [40, 10, 55, 20]], np.float32),
        labels=np.array([1, 2]),
        category_ids=np.array([1, 2]),
        poly_coords=tri,
        poly_part_lens=np.array([6], np.int32),
        poly_parts=np.array([1, 0], np.int32),
        rles=[None, rle],
    )
    info = T.ScaleInfo((h, w), (80, 120), 2.0, flipped=True)
    t = record_to_targets(rec, info, with_masks=True)
    assert isinstance(t, Targets) and isinstance(t.masks, InstanceMasks)
    assert t.boxes.dtype == torch.float32 and t.labels.dtype == torch.int64
    assert torch.equal(t.boxes, torch.tensor([[60.0, 10, 110, 60], [10, 20, 40, 40]]))
    assert t.masks.is_polygon() == [True, False]
    assert torch.equal(t.masks.polygons[0][0], torch.tensor([110.0, 10, 60, 10, 110, 60]))
    assert t.masks.bitmasks.shape == (2, 80, 120) and t.masks.bitmasks.dtype == torch.uint8
    ys, xs = torch.nonzero(t.masks.bitmasks[1], as_tuple=True)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (10, 40, 20, 40)
    assert t.masks.bitmasks[0].sum() == 0


def test_train_preprocess_draws_scale_and_flip_from_the_rng():
    cfg = _input_cfg(min_size_train=(40, 60, 80), max_size_train=1000, flip_prob=0.5)
    img = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    seen = set()
    for seed in range(40):
        a, ia = data.preprocess(img, cfg, True, np.random.default_rng(seed))
        b, ib = data.preprocess(img, cfg, True, np.random.default_rng(seed))
        assert torch.equal(a, b) and ia == ib
        seen.add((ia.size[0], ia.flipped))
    assert seen == {(s, f) for s in (40, 60, 80) for f in (False, True)}


# ----------------------------------------------------------------------------- loaders


def test_train_loader_gives_the_batch_contract(shapes_root):
    c = _small_config(shapes_root)
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


def test_train_loader_masks_match_boxes(shapes_root):
    """The target masks (polygons rasterized / bitmasks) lie inside their boxes, flipped or not."""
    c = _small_config(shapes_root)
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


def test_train_loader_resume_and_rank_split(shapes_root):
    c = _small_config(shapes_root)
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


def test_workers_do_not_change_the_batches(shapes_root):
    c0 = _small_config(shapes_root)
    c2 = _small_config(shapes_root, **{"data.num_workers": 2})
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


def test_loaders_leave_the_global_rng_alone(shapes_root):
    c = _small_config(shapes_root)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    next(data.build_train_loader(c))
    list(data.build_test_loader(c)[0])
    assert torch.equal(torch.rand(3), expected)


def test_accumulation_splits_the_global_batch(shapes_root):
    c1 = _small_config(shapes_root)
    c2 = _small_config(shapes_root, **{"solver.accumulate_steps": 2})
    one, two = data.build_train_loader(c1), data.build_train_loader(c2)
    for _ in range(2):
        want = next(one)
        got = [next(two), next(two)]
        assert [len(g.infos) for g in got] == [2, 2]
        assert [i.image_id for g in got for i in g.infos] == [i.image_id for i in want.infos]


def test_test_loader_shards_cover_each_image_once(shapes_root):
    c = _small_config(shapes_root)
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


def _copy_shapes(shapes_root, dest):
    c = _small_config(shapes_root)
    train_cfg, val_cfg = data.ensure_shapes_dataset(c)
    d = os.path.dirname(os.path.dirname(train_cfg.ann_file))
    shutil.copytree(d, dest)
    rel = lambda p: os.path.join(dest, os.path.relpath(p, d))  # noqa: E731
    return (
        {"name": "", "img_dir": rel(train_cfg.img_dir), "ann_file": rel(train_cfg.ann_file)},
        {"name": "", "img_dir": rel(val_cfg.img_dir), "ann_file": rel(val_cfg.ann_file)},
    )


def test_unreadable_training_images_are_skipped_and_counted(shapes_root, tmp_path):
    train, val = _copy_shapes(shapes_root, tmp_path / "copy")
    names = sorted(os.listdir(train["img_dir"]))
    os.remove(os.path.join(train["img_dir"], names[0]))
    with open(os.path.join(train["img_dir"], names[1]), "wb") as f:
        f.write(b"not a jpeg")
    c = _small_config(shapes_root)
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


def test_missing_dataset_names_the_path_and_the_remedy(tmp_path, monkeypatch):
    monkeypatch.delenv("MRCNN_DATA", raising=False)
    c = _small_config(tmp_path)
    c.data.train.name = "coco_2017_train"
    with pytest.raises(data.DatasetMissingError) as e:
        data.build_train_loader(c)
    msg = str(e.value)
    assert "instances_train2017.json" in msg and "download_coco.sh" in msg
    assert "WORKSPACE.md" in msg and str(tmp_path) in msg
    c.data.train.name = "coco_2099"
    with pytest.raises(data.DatasetMissingError, match="unknown dataset name 'coco_2099'"):
        data.build_train_loader(c)


def test_catalog_paths_and_env_override(tmp_path, monkeypatch):
    c = _small_config(tmp_path)
    monkeypatch.delenv("MRCNN_DATA", raising=False)
    img, ann = catalog.dataset_paths(c, {"name": "coco_2014_minival"})
    assert img == os.path.join(str(tmp_path), "coco", "val2017")
    assert ann == os.path.join(str(tmp_path), "coco", "annotations", "instances_val2017.json")
    monkeypatch.setenv("MRCNN_DATA", "/elsewhere")
    img, ann = catalog.dataset_paths(c, {"name": "coco_2014_train"})
    assert img == "/elsewhere/coco/train2014"
    img, ann = catalog.dataset_paths(c, {"name": "coco_2014_train", "img_dir": "/x"})
    assert img == "/x" and ann.endswith("instances_train2014.json")  # explicit wins, per field


def test_dataset_meta_mappings_and_coco_fallback(tmp_path, shapes_root, monkeypatch):
    monkeypatch.delenv("MRCNN_DATA", raising=False)
    c = _small_config(tmp_path)
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
    shapes_meta = data.get_dataset_meta(_small_config(shapes_root))
    assert shapes_meta.names == ("square", "circle", "triangle") and shapes_meta.num_classes == 4


def test_num_classes_smaller_than_the_dataset_is_an_error(shapes_root):
    c = _small_config(shapes_root)
    c.model.num_classes = 3
    with pytest.raises(ValueError, match="config.model.num_classes=3.*num_classes=4"):
        data.build_train_loader(c)


def test_meta_of_coco_names_needs_no_file_and_explicit_files_are_read(tmp_path):
    import json

    c = _small_config(tmp_path)
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
