"""The evaluation ground truth from validated records (`coco_gt`): the same AP as pycocotools
reading the raw file on valid data; on each kind of bad file no hang, no blow-up, no traceback."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn import data
from mrcnn.data import annotations as A

H, W = 64, 80


def _rect(x, y, w, h):
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def _valid_dataset(rng: np.random.Generator, n_images: int = 6) -> dict:
    """Polygons (some in two parts), compressed and uncompressed RLE, a crowd, areas that are
    the masks' pixel counts, categories with gaps in their ids."""
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.png", "height": H, "width": W})
        for _ in range(int(rng.integers(1, 5))):
            x, y = rng.uniform(0, W - 30), rng.uniform(0, H - 30)
            w, h = rng.uniform(4, 28), rng.uniform(4, 28)
            kind = int(rng.integers(3))
            if kind == 0:
                seg = [_rect(x, y, w, h)]
            elif kind == 1:
                seg = [_rect(x, y, w / 2, h), _rect(x + w / 2 + 1, y, w / 3, h / 2)]
            else:
                m = np.zeros((H, W), np.uint8, order="F")
                m[int(y) : int(y + h), int(x) : int(x + w)] = 1
                rle = mask_util.encode(m)
                seg = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
            rle = mask_util.merge(mask_util.frPyObjects(seg, H, W)) if kind < 2 else rle
            bx, by, bw, bh = mask_util.toBbox(rle).tolist()
            anns.append(
                {
                    "id": len(anns) + 100,
                    "image_id": i,
                    "category_id": int(rng.choice([3, 7, 42])),
                    "segmentation": seg,
                    "bbox": [bx, by, bw, bh],
                    "area": float(mask_util.area(rle)),
                    "iscrowd": 0,
                }
            )
    crowd = np.zeros((H, W), np.uint8)
    crowd[40:60, 50:75] = 1
    counts = [int(len(list(g))) for g in _runs(crowd.flatten(order="F"))]
    anns.append(
        {
            "id": 9999,
            "image_id": 1,
            "category_id": 3,
            "segmentation": {"size": [H, W], "counts": counts},
            "bbox": [50, 40, 25, 20],
            "area": 500.0,
            "iscrowd": 1,
        }
    )
    cats = [{"id": c, "name": f"c{c}", "supercategory": "s"} for c in (3, 7, 42)]
    return {"images": images, "annotations": anns, "categories": cats}


def _runs(flat: np.ndarray):
    """Runs of equal values, starting with zeros (COCO's uncompressed RLE)."""
    import itertools

    if flat[0] == 1:
        yield []
    for _, g in itertools.groupby(flat):
        yield g


def _detections(gt: dict, rng: np.random.Generator) -> list[dict]:
    """Jittered copies of the objects (some with the wrong class) and random false positives."""
    dets = []
    for a in gt["annotations"]:
        if rng.random() < 0.2:
            continue
        x, y, w, h = a["bbox"]
        dx, dy = rng.normal(0, 1, 2)
        box = [max(0.0, x + dx), max(0.0, y + dy), w * rng.uniform(0.85, 1.15), h]
        cat = a["category_id"] if rng.random() < 0.8 else int(rng.choice([3, 7, 42]))
        dets.append(_det(a["image_id"], cat, box, rng))
    for i in range(1, len(gt["images"]) + 1):
        for _ in range(2):
            box = [rng.uniform(0, 40), rng.uniform(0, 30), rng.uniform(3, 30), rng.uniform(3, 30)]
            dets.append(_det(i, int(rng.choice([3, 7, 42])), box, rng))
    return dets


def _det(image_id: int, cat: int, box: list[float], rng) -> dict:
    m = np.zeros((H, W), np.uint8, order="F")
    x, y, w, h = (int(round(v)) for v in box)
    m[y : y + max(h, 1), x : x + max(w, 1)] = 1
    rle = mask_util.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "image_id": image_id,
        "category_id": cat,
        "bbox": box,
        "score": float(rng.random()),
        "segmentation": rle,
    }


def _stats(gt: COCO, dets: list[dict], iou_type: str) -> np.ndarray:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def _write(tmp_path, d: dict, name: str = "gt.json") -> str:
    path = os.path.join(tmp_path, name)
    with open(path, "w") as f:
        json.dump(d, f)
    return path


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_ap_as_pycocotools_reading_the_raw_file(tmp_path, seed):
    rng = np.random.default_rng(seed)
    d = _valid_dataset(rng)
    path = _write(tmp_path, d)
    dets = _detections(d, rng)
    raw = COCO(path)
    parsed = A.parse_coco_json(path, training=False)
    ours = data.coco_api(data.coco_gt(parsed, "segm"))
    for iou_type in ("bbox", "segm"):
        expected = _stats(raw, dets, iou_type)
        assert 0.1 < expected[0] < 0.95  # the detections are neither perfect nor useless
        np.testing.assert_array_equal(_stats(ours, dets, iou_type), expected)

    # Without area and iscrowd (what many exporters write): computed / defaulted, same AP.
    for a in d["annotations"]:
        a.pop("area")
        if not a["iscrowd"]:
            a.pop("iscrowd")
    bare = data.coco_gt(A.parse_coco_json(_write(tmp_path, d, "bare.json"), training=False))
    areas = [a["area"] for a in raw.dataset["annotations"]]
    assert [a["area"] for a in bare["annotations"]] == areas
    for iou_type in ("bbox", "segm"):
        np.testing.assert_array_equal(
            _stats(data.coco_api(bare), dets, iou_type), _stats(raw, dets, iou_type)
        )


def test_the_test_dataset_gives_its_evaluated_images_only(tmp_path):
    d = _valid_dataset(np.random.default_rng(3))
    path = _write(tmp_path, d)
    cfg = __import__("configs.shapes", fromlist=["x"]).get_config().input
    ds = data.coco.CocoTestDataset(str(tmp_path), path, cfg, num_images=2)
    gt = data.coco_gt(ds)
    assert [i["id"] for i in gt["images"]] == [1, 2]
    assert {a["image_id"] for a in gt["annotations"]} <= {1, 2}
    assert len(gt["annotations"]) == sum(a["image_id"] <= 2 for a in d["annotations"])
    assert [c["id"] for c in gt["categories"]] == [3, 7, 42]


def test_box_only_objects_are_boxes_for_bbox_and_ignored_regions_for_segm(tmp_path):
    d = _valid_dataset(np.random.default_rng(4), n_images=1)
    d["annotations"].append(
        {"id": 5000, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 12], "segmentation": []}
    )
    parsed = A.parse_coco_json(_write(tmp_path, d), training=False)
    box = {a["id"]: a for a in data.coco_gt(parsed, "bbox")["annotations"]}[5000]
    assert box["iscrowd"] == 0 and "segmentation" not in box and box["area"] == 120.0
    segm = {a["id"]: a for a in data.coco_gt(parsed, "segm")["annotations"]}[5000]
    assert segm["iscrowd"] == 1 and segm["segmentation"] == [[1, 2, 11, 2, 11, 14, 1, 14]]
    with pytest.raises(ValueError, match="iou_type"):
        data.coco_gt(parsed, "keypoints")


# Each bad case: (what to do to annotation 0 of image 1, the words of the one-line error).
_BAD = {
    "garbage_rle": (
        lambda a: a.update(segmentation={"size": [H, W], "counts": "\x7f" * 40 + "zz"}),
        "RLE",
    ),
    "rle_overflow": (lambda a: a.update(segmentation={"size": [H, W], "counts": "_" * 30}), "RLE"),
    "nan_polygon": (lambda a: a.update(segmentation=[[1, 2, float("nan"), 4, 5, 6]]), "NaN"),
    "two_point_polygon": (lambda a: a.update(segmentation=[[1, 2, 30, 40]]), "fewer than 3"),
    "huge_polygon": (lambda a: a.update(segmentation=[[0, 0, 1e12, 0, 1e12, 1e12]]), "far outside"),
    "nan_bbox": (lambda a: a.update(bbox=[1, 2, float("nan"), 4]), "NaN"),
}

_EVAL_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pycocotools.cocoeval import COCOeval
    from mrcnn import data
    from mrcnn.data import annotations as A
    out = {}
    for path in sys.argv[1:]:
        parsed = A.parse_coco_json(path, on_bad="skip", training=False)
        gt = data.coco_api(data.coco_gt(parsed, "segm"))
        dets = [dict(a, score=0.9) for a in gt.dataset["annotations"] if not a["iscrowd"]]
        for iou_type in ("bbox", "segm"):
            e = COCOeval(gt, gt.loadRes(dets), iou_type)
            e.evaluate(); e.accumulate(); e.summarize()
        out[path] = {"ids": sorted(a["id"] for a in gt.dataset["annotations"]),
                     "skipped": parsed.counts["bad_annotation"], "ap": e.stats[0]}
    print("RESULT " + json.dumps(out))
    """
)


def test_bad_files_never_reach_pycocotools_and_never_hang(tmp_path):
    base = _valid_dataset(np.random.default_rng(5), n_images=2)
    first = next(a for a in base["annotations"] if a["image_id"] == 1 and not a["iscrowd"])
    paths = {}
    for name, (mutate, needle) in _BAD.items():
        d = copy.deepcopy(base)
        mutate(next(a for a in d["annotations"] if a["id"] == first["id"]))
        paths[name] = _write(tmp_path, d, f"{name}.json")
        with pytest.raises(A.AnnotationError) as e:
            A.parse_coco_json(paths[name], training=False)
        msg = str(e.value)
        assert f"{name}.json: image 1, annotation {first['id']}:" in msg and needle in msg, msg
        assert "\n" not in msg
    # With on_bad=skip the rest is evaluated; in a child, so that a hang fails the test.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run(
        [sys.executable, "-c", _EVAL_SCRIPT, *paths.values()],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    all_ids = sorted(a["id"] for a in base["annotations"])
    for name, path in paths.items():
        assert out[path]["skipped"] == 1, name
        assert out[path]["ids"] == [i for i in all_ids if i != first["id"]], name
        assert out[path]["ap"] == 1.0, name  # the detections are the accepted objects


def test_a_utf8_bom_and_extra_keys_are_accepted(tmp_path):
    d = _valid_dataset(np.random.default_rng(6), n_images=2)
    d["info"] = {"exported_by": "tool", "year": 2024}
    for a in d["annotations"]:
        a["attributes"] = {"occluded": False}
    path = os.path.join(tmp_path, "bom.json")
    with open(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + json.dumps(d).encode())
    with pytest.raises(json.JSONDecodeError):  # what pycocotools itself would do with it
        with open(path) as f:
            json.load(f)
    gt = data.coco_gt(A.parse_coco_json(path, training=False))
    assert len(gt["annotations"]) == len(d["annotations"])
    assert all("attributes" not in a for a in gt["annotations"])


_number = st.one_of(
    st.floats(-200, 200, allow_nan=False),
    st.sampled_from([float("nan"), float("inf"), 1e12, -1e12, 0.0]),
    st.integers(-100, 300),
)
_coord = st.floats(-3, 90, allow_nan=False)
# Mostly plausible records (so that many are accepted and reach pycocotools), some wild.
_plausible_box = st.tuples(
    st.floats(0, 50), st.floats(0, 40), st.floats(1, 30), st.floats(1, 20)
).map(list)
_box = st.one_of(_plausible_box, st.lists(_number, min_size=3, max_size=5))
_part = st.lists(st.tuples(_coord, _coord), min_size=3, max_size=6).map(
    lambda pts: [v for p in pts for v in p]
)
_plausible_polygon = st.lists(_part, min_size=1, max_size=2)
_polygon = st.one_of(
    _plausible_polygon,
    st.lists(st.lists(_coord, min_size=0, max_size=8), min_size=1, max_size=3),
    st.lists(st.lists(_number, min_size=0, max_size=10), min_size=0, max_size=3),
)
_rle = st.one_of(
    st.fixed_dictionaries(
        {"size": st.sampled_from([[H, W], [W, H], [H, W, 1]]),
         "counts": st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=130),
                           max_size=30)}
    ),
    st.fixed_dictionaries(
        {"size": st.just([H, W]),
         "counts": st.one_of(st.lists(st.integers(-5, H * W), max_size=6),
                             st.integers(0, H * W).map(lambda k: [k, H * W - k]))}
    ),
)
_fuzz_ann = st.fixed_dictionaries(
    {
        "category_id": st.sampled_from([3, 7, 42, 42, 99]),
        "bbox": _box,
        "segmentation": st.one_of(_polygon, _polygon, _rle),
    },
    optional={
        "area": st.one_of(st.floats(0, 5000), _number, st.just("12")),
        "iscrowd": st.sampled_from([0, 1, 2, True]),
    },
)


def _rect_rle(r: tuple[int, int, int, int]) -> dict:
    m = np.zeros((H, W), np.uint8, order="F")
    m[r[1] : r[1] + r[3], r[0] : r[0] + r[2]] = 1
    return {"size": [H, W], "counts": mask_util.encode(m)["counts"].decode("ascii")}


_valid_rle = st.one_of(
    st.tuples(st.integers(0, W), st.integers(0, H), st.integers(0, 40), st.integers(0, 40)).map(
        _rect_rle
    ),
    st.integers(0, H * W).map(lambda k: {"size": [H, W], "counts": [k, H * W - k]}),
)
# Records our parser should accept (so that plenty reach pycocotools), beside the wild ones.
_plausible_ann = st.fixed_dictionaries(
    {
        "category_id": st.sampled_from([3, 7, 42]),
        "bbox": _plausible_box,
        "segmentation": st.one_of(_plausible_polygon, _valid_rle),
    },
    optional={"area": st.floats(0, 5000), "iscrowd": st.sampled_from([0, 1])},
)


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(good=st.lists(_plausible_ann, max_size=5), wild=st.lists(_fuzz_ann, max_size=4))
def test_fuzzed_annotations_never_break_or_hang_pycocotools(tmp_path_factory, good, wild):
    anns = good + wild
    import faulthandler

    d = _valid_dataset(np.random.default_rng(7), n_images=2)
    for k, a in enumerate(anns):
        d["annotations"].append(dict(a, id=50000 + k, image_id=1 + k % 2))
    path = _write(tmp_path_factory.mktemp("fuzz"), d)
    # A hang inside pycocotools' C code cannot be interrupted: fail loudly instead of forever.
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        parsed = A.parse_coco_json(path, on_bad="skip", training=False)
        for iou_type in ("bbox", "segm"):
            gt = data.coco_api(data.coco_gt(parsed, iou_type))
            dets = [
                {"image_id": a["image_id"], "category_id": a["category_id"],
                 "bbox": a["bbox"], "score": 0.5, "segmentation": gt.annToRLE(a)}
                for a in gt.dataset["annotations"]
                if "segmentation" in a
            ]
            no_area = {a["id"] for a in d["annotations"] if "area" not in a}
            for a in gt.dataset["annotations"]:
                assert a["iscrowd"] in (0, 1) and np.isfinite(a["area"]) and a["area"] >= 0
                if a["id"] in no_area and "segmentation" in a and iou_type == "bbox":
                    assert a["area"] == float(mask_util.area(gt.annToRLE(a)))  # COCO's area
            assert 0 <= _stats(gt, dets, iou_type)[0] <= 1.0 or not dets
    finally:
        faulthandler.cancel_dump_traceback_later()
