"""Transforms: torchvision-equal resizing, exact zero padding, consistent flips of boxes,
polygons and bitmasks, the train-time draws of scale and flip."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from configs import shapes as shapes_config
from mrcnn import data
from mrcnn.data import transforms as T
from mrcnn.data.annotations import ImageRecord
from mrcnn.data.coco import record_to_targets
from mrcnn.structures import InstanceMasks, Targets


def _input_cfg(**kw) -> ml_collections.ConfigDict:
    c = shapes_config.get_config().input
    for k, v in kw.items():
        c[k] = v
    return c


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


@pytest.mark.parametrize("h,w", [(1, 4000), (4000, 1), (3, 5000), (1, 1), (2, 1333)])
@pytest.mark.parametrize("train", [False, True])
def test_a_thin_strip_never_resizes_to_a_zero_pixel_side(h, w, train):
    cfg = _input_cfg(min_size_test=800, max_size_test=1333)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    x, info = data.preprocess(image, cfg, train=train, rng=np.random.default_rng(0))
    assert min(x.shape[-2:]) >= 1 and torch.isfinite(x).all()
    assert info.size == tuple(x.shape[-2:]) and info.orig_size == (h, w)
    boxes = T.resize_boxes(torch.tensor([[0.0, 0.0, float(w), float(h)]]), (h, w), info.size)
    assert torch.isfinite(boxes).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    batch = data.collate_images([x], 32)
    assert batch.tensor.shape[-1] % 32 == 0 and batch.tensor.shape[-2] % 32 == 0


def test_the_clamp_only_touches_sizes_that_would_vanish():
    # 1 x 4000 at (800, 1333): scale 1/3, so floor(1/3) = 0 rows -> 1; the width keeps
    # torchvision's floor(4000 / 3) = 1333.
    x, scale = T.resize_image(torch.rand(3, 1, 4000), 800, 1333)
    assert tuple(x.shape[-2:]) == (1, 1333) and scale == pytest.approx(1333 / 4000)
    image = torch.rand(3, 37, 53)
    ours, _ = T.resize_image(image, 800, 1333)
    ref = torch.nn.functional.interpolate(
        image[None], scale_factor=800 / 37, mode="bilinear", recompute_scale_factor=True
    )[0]
    assert torch.equal(ours, ref)
