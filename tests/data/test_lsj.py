"""Large-scale jitter (mrcnn/data/lsj.py) through the COCO training dataset: the fixed square
output, annotations that still describe the pixels (checked on images whose objects are flat
colour rectangles), polygon clipping against pycocotools' rasterizer, RLE masks, objects cropped
away, determinism from the sampler's seeds and exact resumption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from configs import r50_fpn_1x
from mrcnn.config_check import ConfigError, validate
from mrcnn.data import lsj
from mrcnn.data import transforms as T
from mrcnn.data.coco import CocoTrainDataset
from mrcnn.data.samplers import TrainBatchSampler, TrainSchedule
from mrcnn.structures import InstanceMasks, Targets

S = 96
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
COLOURS = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (250, 250, 20), (250, 20, 250)]


def _input_cfg(**kw):
    c = r50_fpn_1x.get_config().input
    c.lsj_size = S
    c.lsj_scale_range = (0.1, 2.0)
    for k, v in kw.items():
        c[k] = v
    return c


def _rect_poly(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


@pytest.fixture(scope="module")
def rect_dataset(tmp_path_factory):
    """Three images of flat colour rectangles on grey; the last rectangle of image 1 is RLE."""
    root = tmp_path_factory.mktemp("lsj")
    rng = np.random.default_rng(0)
    images, anns = [], []
    sizes = [(120, 160), (150, 100), (64, 64)]
    for img_id, (h, w) in enumerate(sizes, start=1):
        pix = np.full((h, w, 3), 128, np.uint8)
        n = 3 if h > 64 else 2
        for k in range(n):
            # non-overlapping vertical bands, each with one rectangle
            bx0, bx1 = k * w // n, (k + 1) * w // n
            x0 = int(rng.integers(bx0, bx0 + 4))
            x1 = int(rng.integers(bx1 - 6, bx1 - 2))
            y0 = int(rng.integers(0, h // 3))
            y1 = int(rng.integers(2 * h // 3, h))
            pix[y0:y1, x0:x1] = COLOURS[k]
            ann = {"id": len(anns) + 1, "image_id": img_id, "category_id": k + 1, "iscrowd": 0,
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
            if img_id == 2 and k == n - 1:
                m = np.zeros((h, w), np.uint8, order="F")
                m[y0:y1, x0:x1] = 1
                rle = mask_util.encode(m)
                ann["segmentation"] = {"size": [h, w], "counts": rle["counts"].decode()}
            else:
                ann["segmentation"] = [_rect_poly(x0, y0, x1, y1)]
            anns.append(ann)
        Image.fromarray(pix).save(root / f"{img_id}.png")
        images.append({"id": img_id, "file_name": f"{img_id}.png", "height": h, "width": w})
    cats = [{"id": k + 1, "name": f"c{k}"} for k in range(3)]
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return CocoTrainDataset(str(root), str(ann_file), _input_cfg()), anns


def _colour_mask(x: torch.Tensor, colour) -> torch.Tensor:
    """Pixels of the normalized image x [3, S, S] within 20/255 of `colour` (bool [S, S])."""
    c = (torch.tensor(colour, dtype=torch.float32) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    tol = 20 / 255 / torch.tensor(STD)
    return ((x - c[:, None, None]).abs() <= tol[:, None, None]).all(0)


def _check_consistent(sample) -> int:
    x, t = sample["image"], sample["target"]
    assert x.shape == (3, S, S) and x.dtype == torch.float32
    boxes = t.boxes
    assert boxes.shape[1] == 4 and len(t.labels) == len(boxes) == len(t.masks)
    assert (boxes >= 0).all() and (boxes <= S).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    for i, (box, label) in enumerate(zip(boxes, t.labels.tolist())):
        seen = _colour_mask(x, COLOURS[label - 1])
        ys, xs = torch.nonzero(seen, as_tuple=True)
        w, h = float(box[2] - box[0]), float(box[3] - box[1])
        if w >= 4 and h >= 4:  # visible object: its pixels are where its box is
            assert len(ys) > 0
            ext = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            torch.testing.assert_close(ext, box, rtol=0, atol=2.5)
        for p in t.masks.polygons[i]:
            assert (p >= 0).all() and (p[0::2] <= S).all() and (p[1::2] <= S).all()
            assert (p[0::2] >= box[0] - 1e-4).all() and (p[0::2] <= box[2] + 1e-4).all()
        if not t.masks.polygons[i]:  # RLE: the box lies in the cropped bitmask's extent,
            m = t.masks.bitmasks[i]  # within the nearest-neighbour resize's pixel
            assert m.shape == (S, S)
            yy, xx = torch.nonzero(m, as_tuple=True)
            ext = torch.tensor([xx.min(), yy.min(), xx.max() + 1, yy.max() + 1]).float()
            assert (box[:2] >= ext[:2]).all() and (box[2:] <= ext[2:]).all()
            torch.testing.assert_close(ext, box, rtol=0, atol=1.0)
    # A colour in the image whose object was dropped would be an object without annotation.
    kept = set(t.labels.tolist())
    for label in {1, 2, 3} - kept:
        assert int(_colour_mask(x, COLOURS[label - 1]).sum()) <= 2
    return len(boxes)


def test_annotations_describe_the_jittered_pixels(rect_dataset):
    ds, _ = rect_dataset
    counts, shapes_seen = [], set()
    for seed in range(25):
        for index in range(len(ds)):
            sample = ds[(index, seed)]
            counts.append(_check_consistent(sample))
            shapes_seen.add(tuple(sample["image"].shape))
    assert shapes_seen == {(3, S, S)}
    # The range 0.1..2.0 both shrinks whole images into padding and crops objects out (an
    # image left with none: test_object_cropped_away_and_empty_image).
    assert min(counts) < max(counts) == 3


def test_deterministic_from_the_seed(rect_dataset, tmp_path):
    ds, _ = rect_dataset
    again = CocoTrainDataset(ds.img_dir, ds.ann_file, _input_cfg())
    a, b, c = ds[(1, 7)], again[(1, 7)], ds[(1, 8)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"].boxes, b["target"].boxes)
    assert not torch.equal(a["image"], c["image"])


def test_resume_gives_the_same_samples(rect_dataset):
    ds, _ = rect_dataset
    schedule = TrainSchedule(np.zeros(len(ds), np.int64), batch_size=2, seed=3)
    full = iter(TrainBatchSampler(schedule, start_step=0))
    uninterrupted = [next(full) for _ in range(6)][4:]
    resumed = iter(TrainBatchSampler(TrainSchedule(np.zeros(len(ds), np.int64), 2, 3), 4))
    for keys in uninterrupted:
        again = next(resumed)
        assert keys == again
        for k in keys:
            s1, s2 = ds[k], ds[k]
            assert torch.equal(s1["image"], s2["image"])
            assert torch.equal(s1["target"].boxes, s2["target"].boxes)


def test_polygon_clipping_agrees_with_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(30):
        # a random star-shaped (often non-convex) polygon straddling the window
        n = int(rng.integers(3, 12))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(5, 40, n)
        cx, cy = rng.uniform(-10, 70, 2)
        poly = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).reshape(-1)
        w, h = 60, 50
        clipped = lsj.clip_polygon(poly.astype(np.float32), w, h)
        big = mask_util.decode(mask_util.frPyObjects([list(poly + 100.0)], 300, 300))[..., 0]
        expected = big[100:100 + h, 100:100 + w]
        if len(clipped) == 0:
            assert expected.sum() <= 2
            continue
        assert clipped.min() >= 0 and clipped[0::2].max() <= w and clipped[1::2].max() <= h
        got = mask_util.decode(mask_util.frPyObjects([list(clipped.astype(np.float64))], h, w))
        diff = int((got[..., 0] != expected).sum())
        # pycocotools rounds vertices; the clip adds vertices on the window's border
        assert diff <= 0.02 * max(int(expected.sum()), 1) + 2 * (w + h) * 0.05


def test_object_cropped_away_and_empty_image():
    box = torch.tensor([[2.0, 2, 10, 10], [50, 50, 90, 90]])
    poly = [[torch.tensor(_rect_poly(2.0, 2, 10, 10))], [torch.tensor(_rect_poly(50.0, 50, 90, 90))]]
    t = Targets(box, torch.tensor([1, 2]), InstanceMasks(poly))
    # resized to 200 x 200, the window starts at (40, 40): the first object is gone, the
    # second is cut to the window's corner
    j = lsj.Jitter(size=(200, 200), scale=2.0, flipped=False, offset=(40, 40), out=32)
    out = lsj.crop_targets(t, j)
    assert out.labels.tolist() == [2]
    torch.testing.assert_close(out.boxes, torch.tensor([[10.0, 10, 32, 32]]))
    j = lsj.Jitter(size=(200, 200), scale=2.0, flipped=False, offset=(150, 150), out=32)
    empty = lsj.crop_targets(t, j)
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,) and len(empty.masks) == 0
    boxes_only = lsj.crop_targets(Targets(box, torch.tensor([1, 2]), None), j)
    assert boxes_only.boxes.shape == (0, 4) and boxes_only.masks is None


def test_draw_is_in_range_and_uses_four_draws():
    rng = np.random.default_rng(0)
    scales = []
    for _ in range(200):
        j = lsj.draw(480, 640, 320, (0.1, 2.0), 0.5, rng)
        u = j.scale / min(320 / 480, 320 / 640)
        scales.append(u)
        assert j.size == (int(480 * j.scale), int(640 * j.scale))
        assert 0 <= j.offset[0] <= max(j.size[0] - 320, 0)
        assert 0 <= j.offset[1] <= max(j.size[1] - 320, 0)
    assert 0.1 <= min(scales) < 0.3 and 1.8 < max(scales) <= 2.0
    # the stream position after a draw does not depend on what was drawn
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    lsj.draw(10, 10, 320, (0.1, 0.2), 0.5, r1)
    lsj.draw(4000, 3000, 320, (1.9, 2.0), 0.5, r2)
    assert r1.random() == r2.random()


def test_lsj_config_errors_name_the_key():
    c = r50_fpn_1x.get_config()
    c.input.lsj_size = 1000  # not a multiple of 32
    with pytest.raises(ConfigError, match=r"input\.lsj_size"):
        validate(c)
    c.input.lsj_size = 1024
    c.input.lsj_scale_range = (2.0, 0.1)
    with pytest.raises(ConfigError, match=r"input\.lsj_scale_range"):
        validate(c)
    c.input.lsj_scale_range = (0.1, 2.0)
    c.perf.pad_to = (800, 1344)
    with pytest.raises(ConfigError, match=r"perf\.pad_to"):
        validate(c)


def test_jitter_image_matches_the_annotation_maths():
    """The image path and the box path agree on where a pixel goes (flip included)."""
    img = torch.zeros(3, 40, 60, dtype=torch.uint8)
    img[:, 10:20, 5:15] = 255
    cfg = _input_cfg(flip_prob=1.0)
    j = lsj.Jitter(size=(80, 120), scale=2.0, flipped=True, offset=(0, 30), out=S)
    x = lsj.jitter_image(img, cfg, j)
    info = T.ScaleInfo((40, 60), (80, 120), 2.0, True)
    box = T.flip_boxes(T.resize_boxes(torch.tensor([[5.0, 10, 15, 20]]), (40, 60), (80, 120)), 120)
    t = lsj.crop_targets(Targets(box, torch.tensor([1]), None), j)
    white = (x > 1.5).all(0)
    ys, xs = torch.nonzero(white, as_tuple=True)
    ext = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    torch.testing.assert_close(ext, t.boxes[0], rtol=0, atol=1.0)
    assert info.size == j.size
