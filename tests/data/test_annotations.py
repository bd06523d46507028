"""Annotation loading: every malformed input gives our named error (or is skipped and counted),
degenerate boxes are dropped, crowds ignored, images with hundreds of instances work."""

from __future__ import annotations

import copy
import json
import os
import re

import ml_collections
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_util

from configs import shapes as shapes_config
from mrcnn.data import annotations as A
from mrcnn.data.coco import CocoTestDataset, CocoTrainDataset

H, W = 40, 60


def _input_cfg() -> ml_collections.ConfigDict:
    c = shapes_config.get_config().input
    c.min_size_train, c.max_size_train = (80,), 200
    c.min_size_test, c.max_size_test = 80, 200
    return c


def _base() -> dict:
    tri = [5.0, 5.0, 30.0, 5.0, 5.0, 30.0]
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": H, "width": W},
            {"id": 2, "file_name": "b.png", "height": H, "width": W},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 7,
                "bbox": [5, 5, 25, 25],
                "iscrowd": 0,
                "segmentation": [tri],
                "area": 312.5,
            },
            {
                "id": 11,
                "image_id": 2,
                "category_id": 3,
                "bbox": [1, 2, 10, 10],
                "iscrowd": 0,
                "segmentation": [[1, 2, 11, 2, 11, 12, 1, 12]],
                "area": 100,
            },
        ],
    }


def _write(tmp_path, d, name="ann.json") -> str:
    p = os.path.join(tmp_path, name)
    with open(p, "w") as f:
        json.dump(d, f) if not isinstance(d, str) else f.write(d)
    return p


def _images(tmp_path, d) -> None:
    for img in d["images"]:
        Image.new("RGB", (img["width"], img["height"]), (10, 20, 30)).save(
            os.path.join(tmp_path, img["file_name"])
        )


def _parse(tmp_path, d, **kw) -> A.ParsedAnnotations:
    return A.parse_coco_json(_write(tmp_path, d), **kw)


def test_valid_file_records_and_contiguous_labels(tmp_path):
    p = _parse(tmp_path, _base())
    assert p.categories == [(3, "three"), (7, "seven")]
    r1, r2 = p.records
    assert r1.labels.tolist() == [2] and r2.labels.tolist() == [1]  # sorted ids -> 1..K
    assert r1.boxes.tolist() == [[5, 5, 30, 30]] and r1.boxes.dtype == np.float32
    assert [x.tolist() for x in r1.polygons()[0]] == [[5, 5, 30, 5, 5, 30]]
    ids = _parse(tmp_path, _base(), ids_as_labels=True)
    assert ids.records[0].labels.tolist() == [7]


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda d: d["annotations"][0].pop("bbox"), "missing keys ['bbox']"),
        (lambda d: d["annotations"][0].pop("segmentation"), "missing keys ['segmentation']"),
        (lambda d: d["annotations"][0].update(category_id=99), "category_id 99 is not in"),
        (lambda d: d["annotations"][0].update(image_id=5), "image_id 5 is not in 'images'"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), "fewer than 3 points"),
        (
            lambda d: d["annotations"][0].update(segmentation=[[1, 2, float("nan"), 4, 5, 6]]),
            "NaN or infinite",
        ),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5]]), "odd number"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, "x", 5, 6]]), "numbers"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5, 1e9]]), "far outside"),
        (lambda d: d["annotations"][0].update(segmentation=[[]]), "fewer than 3 points"),
        (lambda d: d["annotations"][0].update(area=float("nan")), "area must be a finite"),
        (lambda d: d["annotations"][0].update(area="12"), "area must be a finite"),
        (lambda d: d["annotations"][0].update(segmentation="abc"), "polygons or RLE"),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [H, W + 1], "counts": "0"}),
            "is not the image's",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [H, W], "counts": "zzz"}),
            "do not decode",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [H, W], "counts": [5, 5]}),
            "sum to",
        ),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, float("inf"), 3]), "NaN or infinite"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "4 numbers"),
        (lambda d: d["annotations"][1].update(id=10), "appears twice"),
        (lambda d: d["annotations"][0].update(iscrowd=3), "iscrowd"),
        (lambda d: d["images"][0].update(height=0), "positive integer height"),
        (lambda d: d["images"][0].pop("file_name"), "no file_name"),
    ],
)
def test_bad_records_fail_with_file_image_and_annotation_named(tmp_path, mutate, needle):
    d = _base()
    mutate(d)
    with pytest.raises(A.AnnotationError) as e:
        _parse(tmp_path, d)
    msg = str(e.value)
    assert needle in msg and "ann.json" in msg
    if needle in ("positive integer height", "no file_name"):  # an image record
        assert "ann.json: image 1:" in msg
    else:
        assert re.search(r"image [125], annotation 1[01]:", msg), msg
    # Skipping drops the record (or image) and counts it.
    p = _parse(tmp_path, d, on_bad="skip")
    assert sum(p.counts[k] for k in ("bad_annotation", "bad_image_record")) == 1


@pytest.mark.parametrize(
    "text,needle",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "top level must be an object"),
        ('{"images": [], "annotations": []}', "non-empty 'categories'"),
        ('{"images": {}, "annotations": [], "categories": [{"id": 1}]}', "'images' list"),
        ('{"images": [], "categories": [{"id": 1}]}', "'annotations' list"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 1}]}', "twice"),
        ('{"images": [], "annotations": [], "categories": [{"name": "x"}]}', "integer id"),
    ],
)
def test_unusable_files_always_fail(tmp_path, text, needle):
    path = _write(tmp_path, text)
    for on_bad in ("fail", "skip"):
        with pytest.raises(A.AnnotationError, match=needle):
            A.parse_coco_json(path, on_bad=on_bad)


def test_missing_annotation_file_is_a_clear_error(tmp_path):
    with pytest.raises(A.AnnotationError, match="cannot read"):
        A.parse_coco_json(os.path.join(tmp_path, "nope.json"))


def test_zero_size_boxes_and_degenerate_parts_are_dropped_and_counted(tmp_path):
    d = _base()
    d["annotations"][0]["bbox"] = [5, 5, 0, 10]  # zero width
    d["annotations"][1]["segmentation"].append([1, 1, 2, 2])  # a 2-point part beside a valid one
    d["annotations"].append(
        {
            "id": 12,
            "image_id": 2,
            "category_id": 3,
            "bbox": [70, 5, 4, 4],
            "segmentation": [[70, 5, 74, 5, 74, 9]],
        }
    )  # outside the 60px image
    d["annotations"].append(
        {
            "id": 13,
            "image_id": 2,
            "category_id": 3,
            "bbox": [1, 1, -3, 4],
            "segmentation": [[1, 1, 4, 1, 4, 4]],
        }
    )  # negative size
    p = _parse(tmp_path, d)
    assert p.counts["zero_size_box"] == 3 and p.counts["degenerate_polygon_part"] == 1
    assert len(p.records[0]) == 0 and len(p.records[1]) == 1
    assert len(p.records[1].polygons()[0]) == 1


def test_boxes_are_clipped_to_the_image(tmp_path):
    d = _base()
    d["annotations"][0]["bbox"] = [-5, 30, 80, 30]
    p = _parse(tmp_path, d)
    assert p.records[0].boxes.tolist() == [[0, 30, W, H]]


def test_crowds_are_ignored_in_training_and_empty_images_filtered(tmp_path):
    d = _base()
    d["annotations"][0]["iscrowd"] = 1
    d["annotations"][0]["segmentation"] = {"size": [H, W], "counts": "garbage is not read"}
    _images(tmp_path, d)
    ann = _write(tmp_path, d)
    ds = CocoTrainDataset(str(tmp_path), ann, _input_cfg())
    assert len(ds) == 1 and ds.bad_counts["crowd"] == 1 and ds.bad_counts["empty_image"] == 1
    ds = CocoTrainDataset(str(tmp_path), ann, _input_cfg(), filter_empty=False)
    assert len(ds) == 2 and len(ds[0]["target"].labels) == 0
    d["annotations"] = d["annotations"][:1]
    with pytest.raises(A.AnnotationError, match="no training image with a usable annotation"):
        CocoTrainDataset(str(tmp_path), _write(tmp_path, d), _input_cfg())


def test_test_dataset_needs_no_annotations_and_keeps_every_image(tmp_path):
    d = _base()
    del d["annotations"]
    _images(tmp_path, d)
    ds = CocoTestDataset(str(tmp_path), _write(tmp_path, d), _input_cfg())
    assert ds.image_ids == [1, 2]
    s = ds[1]
    assert s["image"].shape == (3, 80, 120) and s["info"].image_id == 2


def test_rle_strings_decode_like_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = rng.integers(1, 40, 2)
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        rle = mask_util.encode(np.asfortranarray(m))
        counts = A.rle_string_counts(rle["counts"])
        assert sum(counts) == h * w and all(c >= 0 for c in counts)
        ones = sum(counts[1::2])
        assert ones == m.sum()
    assert A.rle_string_counts(b"\x01") is None
    assert A.rle_string_counts(b"o") is None  # continuation bit set, string ends


def test_hundreds_of_instances_with_polygons_and_rles(tmp_path):
    rng = np.random.default_rng(1)
    h, w = 64, 96
    anns = []
    for i in range(300):
        x, y = rng.uniform(0, w - 8), rng.uniform(0, h - 8)
        s = rng.uniform(2, 8)
        if i % 3 == 0:
            m = np.zeros((h, w), np.uint8)
            m[int(y) : int(y + s) + 1, int(x) : int(x + s) + 1] = 1
            seg = {
                "size": [h, w],
                "counts": mask_util.encode(np.asfortranarray(m))["counts"].decode(),
            }
        else:
            seg = [[x, y, x + s, y, x + s, y + s, x, y + s]]
        anns.append(
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 1 + i % 2,
                "bbox": [x, y, s, s],
                "segmentation": seg,
            }
        )
    d = {
        "images": [{"id": 1, "file_name": "many.png", "height": h, "width": w}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": anns,
    }
    _images(tmp_path, d)
    ds = CocoTrainDataset(str(tmp_path), _write(tmp_path, d), _input_cfg())
    t = ds[(0, 0)]["target"]
    assert len(t.labels) == 300 and t.boxes.shape == (300, 4)
    assert t.masks.bitmasks.shape == (300, 80, 120)
    assert sum(t.masks.is_polygon()) == 200
    rle_rows = [i for i, p in enumerate(t.masks.is_polygon()) if not p]
    assert all(t.masks.bitmasks[i].sum() > 0 for i in rle_rows)


# A fuzzer: random records, including garbage types, must give a dataset or our error.
_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=True), st.text(max_size=3)
)
_numbers = st.lists(
    st.one_of(st.integers(-100, 200), st.floats(-1e3, 1e3), st.floats()), max_size=12
)
_segm = st.one_of(
    st.lists(_numbers, max_size=3),
    st.fixed_dictionaries(
        {
            "size": st.one_of(st.just([H, W]), st.lists(st.integers(0, 99), max_size=3)),
            "counts": st.one_of(st.text(max_size=10), st.lists(st.integers(-5, 2400), max_size=4)),
        }
    ),
    _scalar,
)
_record = st.dictionaries(
    st.sampled_from(["id", "image_id", "category_id", "bbox", "segmentation", "iscrowd"]),
    st.one_of(_scalar, _numbers, _segm),
)


@st.composite
def _plausible(draw) -> dict:
    """A well-formed annotation with random geometry (inside, across or outside the image,
    possibly degenerate), as polygons or RLE, crowd or not."""
    x, y = draw(st.floats(-20, 80)), draw(st.floats(-20, 60))
    bw, bh = draw(st.floats(-2, 40)), draw(st.floats(-2, 40))
    if draw(st.booleans()):
        n = draw(st.integers(1, 8))
        pts = draw(st.lists(st.floats(-5, 65), min_size=2 * n, max_size=2 * n))
        seg = [pts] + draw(st.lists(st.lists(st.floats(0, 40), max_size=8), max_size=2))
    else:
        m = np.zeros((H, W), np.uint8)
        m[
            draw(st.integers(0, H)) : draw(st.integers(0, H)),
            draw(st.integers(0, W)) : draw(st.integers(0, W)),
        ] = 1
        seg = {"size": [H, W], "counts": mask_util.encode(np.asfortranarray(m))["counts"].decode()}
    return {
        "id": draw(st.integers(12, 10**6)),
        "image_id": draw(st.sampled_from([1, 2])),
        "category_id": draw(st.sampled_from([3, 7])),
        "bbox": [x, y, bw, bh],
        "iscrowd": draw(st.sampled_from([0, 0, 0, 1])),
        "segmentation": seg,
    }


_ann = st.one_of(
    _plausible(),
    _plausible(),
    _record,
    st.builds(
        lambda r, i, c, b, s: {
            **r,
            "id": i,
            "image_id": 1,
            "category_id": c,
            "bbox": b,
            "segmentation": s,
        },
        _record,
        st.integers(0, 50),
        st.sampled_from([3, 7, 8]),
        st.one_of(_numbers, st.lists(st.floats(-10, 80), min_size=4, max_size=4)),
        _segm,
    ),
    _scalar,
)


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(anns=st.lists(_ann, max_size=6), on_bad=st.sampled_from(["fail", "skip"]))
def test_fuzzed_annotations_give_a_dataset_or_our_error(tmp_path_factory, anns, on_bad):
    tmp = tmp_path_factory.mktemp("fuzz")
    d = _base()
    d["annotations"] = copy.deepcopy(d["annotations"]) + anns
    _images(str(tmp), d)
    path = _write(str(tmp), d)
    try:
        ds = CocoTrainDataset(
            str(tmp), path, _input_cfg(), on_bad_annotation=on_bad, filter_empty=False
        )
    except A.AnnotationError as e:
        assert "ann.json" in str(e)
        return
    for i in range(len(ds)):
        t = ds[(i, i)]["target"]
        assert torch.isfinite(t.boxes).all() and (t.boxes[:, 2:] > t.boxes[:, :2]).all()
        assert len(t.masks) == len(t.labels)


def test_train_loader_batches_share_one_orientation(tmp_path):
    from mrcnn.data import build_train_loader

    images, anns = [], []
    for i in range(14):
        h, w = (H, W) if i % 3 else (W, H)  # 9 landscape, 5 portrait
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        anns.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 3,
                "bbox": [2, 2, 20, 20],
                "segmentation": [[2, 2, 22, 2, 22, 22]],
            }
        )
    d = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "c"}]}
    _images(str(tmp_path), d)
    c = shapes_config.get_config()
    c.data.train = ml_collections.ConfigDict(
        {"name": "", "img_dir": str(tmp_path), "ann_file": _write(tmp_path, d)}
    )
    c.data.num_workers = 0
    c.model.num_classes = 2
    c.solver.ims_per_batch = 4
    c.input.min_size_train, c.input.max_size_train = (40,), 1000
    loader = build_train_loader(c)
    orientations = set()
    for _ in range(12):
        b = next(loader)
        portrait = {h > w for h, w in b.images.image_sizes}
        assert len(portrait) == 1
        orientations |= portrait
    assert orientations == {False, True}
    c.data.aspect_ratio_grouping = False
    loader = build_train_loader(c)
    mixed = [len({h > w for h, w in next(loader).images.image_sizes}) for _ in range(12)]
    assert max(mixed) == 2
