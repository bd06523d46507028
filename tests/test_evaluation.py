"""COCO evaluation: records, pycocotools agreement, evaluate() with oracle / empty models, the
category-id mapping, and sharding over simulated ranks."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.cocoeval import COCOeval
from test_eval_fixtures import (
    CATEGORY_IDS,
    ColourOracle,
    EmptyModel,
    FakeDataset,
    FakeDist,
    OracleModel,
    fake_loader,
    fake_meta,
    identity_postprocess,
    load_coco,
    make_tiny_coco,
    shard,
)

from configs import r50_fpn_1x
from mrcnn import evaluation, inference
from mrcnn.structures import Detections, ImageInfo

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def small_config():
    c = r50_fpn_1x.get_config()
    c.device = "cpu"
    c.model.num_classes = 4
    c.test.ims_per_batch = 2
    c.eval.vis_images = 0
    c.log_period = 1
    return c


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_coco(str(tmp_path / "data"), seed=0)


@pytest.fixture
def pipeline(monkeypatch, tiny):
    """evaluate() over the tiny dataset through the fake loader. The returned dict's "shard"
    (ids, rank, world_size) -> ids picks each rank's images; tests replace it for failure cases."""
    state = {"shard": shard}

    def build(config, dataset_cfg, rank, world_size):
        ids = tiny.image_ids[: config.eval.num_images or None]
        mine = state["shard"](ids, rank, world_size)
        return (
            fake_loader(tiny, mine, config.test.ims_per_batch),
            FakeDataset(tiny.ann_file, ids, tiny.img_dir),
        )

    monkeypatch.setattr(evaluation, "_build_test_loader", build)
    monkeypatch.setattr(evaluation, "_get_dataset_meta", lambda config, dataset_cfg: fake_meta())
    monkeypatch.setattr(inference, "_to_original", identity_postprocess)
    return state


def _cocoeval_by_hand(ann_file, res_file, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = load_coco(ann_file)
        ev = COCOeval(gt, gt.loadRes(res_file), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:6]]


def _noisy_detections(tiny, seed):
    """Imperfect detections: jittered boxes, shifted masks, random scores, some misses, some
    wrong labels and false positives. Original pixels, contiguous labels."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in tiny.image_ids:
        gt = tiny.gt[i]
        h, w = tiny.sizes[i]
        keep = torch.rand(len(gt), generator=g) > 0.2
        boxes = gt.boxes[keep] + torch.randn(int(keep.sum()), 4, generator=g) * 1.5
        masks = gt.masks[keep].clone()
        for k in range(len(masks)):
            dy, dx = torch.randint(-2, 3, (2,), generator=g).tolist()
            masks[k] = torch.roll(masks[k], (dy, dx), (0, 1))
        labels = gt.labels[keep].clone()
        flip = torch.rand(len(labels), generator=g) < 0.15
        labels[flip] = labels[flip] % 3 + 1
        nfp = int(torch.randint(0, 3, (1,), generator=g))
        xy = torch.rand(nfp, 2, generator=g) * 40
        fp_boxes = torch.cat([xy, xy + 4 + torch.rand(nfp, 2, generator=g) * 15], 1)
        fp_masks = torch.zeros(nfp, h, w, dtype=torch.uint8)
        for k, b in enumerate(fp_boxes.int().tolist()):
            fp_masks[k, b[1] : b[3], b[0] : b[2]] = 1
        out[i] = Detections(
            torch.cat([boxes, fp_boxes]),
            torch.rand(len(boxes) + nfp, generator=g),
            torch.cat([labels, torch.randint(1, 4, (nfp,), generator=g)]),
            torch.cat([masks, fp_masks]),
        )
    return out


def _records(tiny, dets):
    bbox, segm = [], []
    meta = fake_meta()
    for i, d in dets.items():
        info = ImageInfo(i, tiny.file_names[i], tiny.sizes[i], tiny.sizes[i])
        b, s = evaluation.detections_to_coco(info, d, meta.label_to_category_id)
        bbox += b
        segm += s
    return bbox, segm


# ----------------------------------------------------------------------------- records


def test_detections_to_coco_records():
    g = torch.Generator().manual_seed(3)
    h, w, k = 20, 30, 6
    xy = torch.rand(k, 2, generator=g) * 15
    boxes = torch.cat([xy, xy + torch.rand(k, 2, generator=g) * 10], 1)
    boxes[0, 2:] = boxes[0, :2]  # degenerate: zero width and height
    masks = (torch.rand(k, h, w, generator=g) > 0.5).to(torch.uint8)
    masks[1] = 0  # an empty mask
    det = Detections(boxes, torch.rand(k, generator=g), torch.tensor([1, 2, 3, 1, 3, 2]), masks)
    info = ImageInfo(42, "x.jpg", (h, w), (10, 15))
    bbox, segm = evaluation.detections_to_coco(info, det, fake_meta().label_to_category_id)
    assert [r["category_id"] for r in bbox] == [1, 5, 90, 1, 90, 5]
    assert [r["category_id"] for r in segm] == [1, 5, 90, 1, 90, 5]
    for r, b, s in zip(bbox, boxes.tolist(), det.scores.tolist()):
        assert r["image_id"] == 42 and isinstance(r["image_id"], int)
        assert r["bbox"] == pytest.approx([b[0], b[1], b[2] - b[0], b[3] - b[1]], abs=1e-5)
        assert r["score"] == pytest.approx(s)
    assert bbox[0]["bbox"][2:] == [0.0, 0.0]
    for r, m in zip(segm, masks):
        assert set(r) == {"image_id", "category_id", "segmentation", "score"}  # no "bbox"
        assert isinstance(r["segmentation"]["counts"], str)
        assert r["segmentation"]["size"] == [h, w]
        assert np.array_equal(mask_util.decode(r["segmentation"]), m.numpy())
    json.dumps(bbox + segm)  # plain Python values only

    # Bool masks and [K, 1, H, W] masks encode the same.
    _, segm_bool = evaluation.detections_to_coco(
        info, Detections(boxes, det.scores, det.labels, masks.bool()[:, None]), int
    )
    assert [r["segmentation"] for r in segm_bool] == [r["segmentation"] for r in segm]


def test_detections_to_coco_empty_none_and_wrong_size():
    info = ImageInfo(1, "a.png", (8, 8), (8, 8))
    empty = Detections(
        torch.zeros(0, 4),
        torch.zeros(0),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, 8, 8, dtype=torch.uint8),
    )
    assert evaluation.detections_to_coco(info, empty, int) == ([], [])
    det = Detections(torch.tensor([[1.0, 1, 4, 4]]), torch.tensor([0.9]), torch.tensor([2]), None)
    bbox, segm = evaluation.detections_to_coco(info, det, int)
    assert len(bbox) == 1 and segm == []
    bad = Detections(det.boxes, det.scores, det.labels, torch.zeros(1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="original size"):
        evaluation.detections_to_coco(info, bad, int)


# ----------------------------------------------------------------------------- pycocotools


def test_coco_evaluate_equals_pycocotools_by_hand(tiny, tmp_path):
    bbox, segm = _records(tiny, _noisy_detections(tiny, seed=7))
    before = copy.deepcopy((bbox, segm))
    for name, recs in (("bbox", bbox), ("segm", segm)):
        with open(tmp_path / f"{name}.json", "w") as f:
            json.dump(recs, f)
    for gt in (tiny.ann_file, load_coco(tiny.ann_file)):
        metrics = evaluation.coco_evaluate(gt, bbox, segm)
        for iou_type in ("bbox", "segm"):
            ref = _cocoeval_by_hand(tiny.ann_file, str(tmp_path / f"{iou_type}.json"), iou_type)
            assert [metrics[iou_type][k] for k in KEYS] == ref  # identical, not approximately
            assert 0.0 < metrics[iou_type]["AP"] < 1.0  # the case is not trivial
    assert (bbox, segm) == before  # pycocotools' loadRes did not write into our records


def test_coco_evaluate_empty_results(tiny, caplog):
    caplog.set_level("INFO")
    metrics = evaluation.coco_evaluate(tiny.ann_file, [], [])
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert (m["AP"], m["AP50"], m["AP75"], m["APs"], m["APm"]) == (0, 0, 0, 0, 0)
        assert m["APl"] == -1.0  # pycocotools: no large object in the annotations
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in caplog.text
    assert set(evaluation.coco_evaluate(tiny.ann_file, [], None)) == {"bbox"}


def test_coco_evaluate_image_subset(tiny):
    first = tiny.image_ids[:2]
    bbox, segm = _records(tiny, {i: tiny.gt[i] for i in first})
    sub = evaluation.coco_evaluate(tiny.ann_file, bbox, segm, image_ids=first)
    assert sub["bbox"]["AP"] == pytest.approx(1) and sub["segm"]["AP"] == pytest.approx(1)
    whole = evaluation.coco_evaluate(tiny.ann_file, bbox, segm)
    assert whole["bbox"]["AP"] < 0.9  # the other images' objects are missed


# ----------------------------------------------------------------------------- evaluate()


def test_evaluate_oracle_is_perfect_and_writes_files(pipeline, tiny, tmp_path):
    out = tmp_path / "out"
    model = OracleModel(tiny.gt)
    model.train()
    metrics = evaluation.evaluate(model, small_config(), torch.device("cpu"), output_dir=str(out))
    assert model.training  # mode restored
    for iou_type in ("bbox", "segm"):
        # pycocotools averages 101 precisions: 1.0 up to rounding.
        got = [metrics[iou_type][k] for k in KEYS]
        assert got == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, -1.0], abs=1e-9)  # no large object
    assert sorted(os.listdir(out)) == ["bbox.json", "metrics.json", "segm.json"]  # no temp left
    assert json.loads((out / "metrics.json").read_text()) == metrics
    bbox = json.loads((out / "bbox.json").read_text())
    segm = json.loads((out / "segm.json").read_text())
    n_gt = sum(len(d) for d in tiny.gt.values())
    assert len(bbox) == len(segm) == n_gt
    assert {r["category_id"] for r in bbox} <= set(CATEGORY_IDS)
    assert {r["image_id"] for r in bbox} == set(tiny.image_ids)


def test_evaluate_empty_model_gives_zero(pipeline, tiny, tmp_path):
    metrics = evaluation.evaluate(
        EmptyModel(), small_config(), torch.device("cpu"), output_dir=str(tmp_path)
    )
    assert metrics["bbox"]["AP"] == 0.0 and metrics["segm"]["AP"] == 0.0
    assert json.loads((tmp_path / "bbox.json").read_text()) == []
    assert json.loads((tmp_path / "segm.json").read_text()) == []


def test_evaluate_box_only_model(pipeline, tiny):
    config = small_config()
    config.model.mask_on = False
    metrics = evaluation.evaluate(OracleModel(tiny.gt), config, torch.device("cpu"))
    assert set(metrics) == {"bbox"} and metrics["bbox"]["AP"] == pytest.approx(1.0)


def test_evaluate_category_ids_as_labels(pipeline, tiny):
    config = small_config()
    config.data.category_ids_as_labels = True
    model = OracleModel(tiny.gt, labels_as_category_ids=True)
    assert evaluation.evaluate(model, config, torch.device("cpu"))["bbox"]["AP"] == pytest.approx(1)
    # Control: contiguous labels taken as ids hit the wrong categories (5 and 90 never appear).
    wrong = evaluation.evaluate(OracleModel(tiny.gt), config, torch.device("cpu"))
    assert wrong["bbox"]["AP"] < 0.9


def test_evaluate_num_images(pipeline, tiny):
    config = small_config()
    config.eval.num_images = 3
    model = OracleModel(tiny.gt)
    metrics = evaluation.evaluate(model, config, torch.device("cpu"))
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)  # the other images are not counted as missed
    assert model.calls == 2  # 3 images at 2 per batch


def test_evaluate_two_ranks_same_as_one(pipeline, tiny, tmp_path, monkeypatch):
    config = small_config()
    config.test.ims_per_batch = 1
    single = evaluation.evaluate(OracleModel(tiny.gt), config, torch.device("cpu"))
    noisy = _noisy_detections(tiny, seed=11)
    single_noisy = evaluation.evaluate(
        OracleModel(noisy), config, torch.device("cpu"), output_dir=str(tmp_path / "one")
    )

    fd = FakeDist(2)
    fd.patch(monkeypatch)
    models = [OracleModel(noisy), OracleModel(noisy)]
    seen = [[], []]
    for r, m in enumerate(models):
        forward = m.forward

        def record(images, r=r, forward=forward):
            seen[r].extend(int(images.tensor[b, 0, 0, 0]) for b in range(len(images)))
            return forward(images)

        m.forward = record
    results, errors = fd.run(
        lambda r: evaluation.evaluate(
            models[r],
            config,
            torch.device("cpu"),
            output_dir=str(tmp_path / "two") if r == 0 else None,
        )
    )
    assert errors == [None, None]
    assert results[0] == results[1] == single_noisy  # same metrics, on every rank
    assert 0 < single_noisy["bbox"]["AP"] < 0.95 and single["bbox"]["AP"] == pytest.approx(1)
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == tiny.image_ids  # each image once across ranks
    one = json.loads((tmp_path / "one" / "bbox.json").read_text())
    two = json.loads((tmp_path / "two" / "bbox.json").read_text())
    assert sorted(map(json.dumps, one)) == sorted(map(json.dumps, two))


def test_evaluate_overlapping_shards_fail_on_every_rank(pipeline, tiny, monkeypatch):
    pipeline["shard"] = lambda ids, rank, world_size: ids  # every rank runs every image
    fd = FakeDist(2)
    fd.patch(monkeypatch)
    results, errors = fd.run(
        lambda r: evaluation.evaluate(OracleModel(tiny.gt), small_config(), torch.device("cpu"))
    )
    assert all(isinstance(e, RuntimeError) and "more than once" in str(e) for e in errors)


def test_evaluate_missing_image(pipeline, tiny, caplog):
    caplog.set_level("INFO")
    pipeline["shard"] = lambda ids, rank, world_size: ids[1:]  # the loader lost the first image
    config = small_config()
    config.data.on_bad_image = "fail"
    with pytest.raises(RuntimeError, match="1 of 5 images were not evaluated"):
        evaluation.evaluate(OracleModel(tiny.gt), config, torch.device("cpu"))
    config.data.on_bad_image = "skip"
    metrics = evaluation.evaluate(OracleModel(tiny.gt), config, torch.device("cpu"))
    assert metrics["bbox"]["AP"] < 0.95  # its objects count as missed, not as absent
    assert "were not evaluated" in caplog.text


def test_evaluate_vis_images(pipeline, tiny):
    metrics = evaluation.evaluate(
        OracleModel(tiny.gt), small_config(), torch.device("cpu"), num_vis=2
    )
    vis = metrics.pop("_vis")
    assert len(vis) == 2
    for img, i in zip(vis, tiny.image_ids):
        assert img.dtype == torch.uint8 and tuple(img.shape) == (3, *tiny.sizes[i])
        # The objects are drawn: pixels differ from the file where the objects are.
        assert img.float().std() > 0
    json.dumps(metrics)


# ----------------------------------------------------------------------------- real loader


def _real_config(tiny):
    config = small_config()
    config.data.val.img_dir, config.data.val.ann_file = tiny.img_dir, tiny.ann_file
    config.data.num_workers = 0
    config.input.min_size_test = config.input.max_size_test = 64  # no resize: see ColourOracle
    return config


def test_evaluate_with_the_data_loader(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "_to_original", identity_postprocess)
    config = _real_config(tiny)
    oracle = ColourOracle(tiny.gt, config.input.pixel_mean, config.input.pixel_std)
    metrics = evaluation.evaluate(
        oracle, config, torch.device("cpu"), output_dir=str(tmp_path), num_vis=1
    )
    assert len(metrics.pop("_vis")) == 1
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
    empty = evaluation.evaluate(EmptyModel(), config, torch.device("cpu"))
    assert empty["bbox"]["AP"] == empty["segm"]["AP"] == 0.0

    fd = FakeDist(2)
    fd.patch(monkeypatch)
    noisy = _noisy_detections(tiny, seed=5)
    models = [
        ColourOracle(noisy, config.input.pixel_mean, config.input.pixel_std) for _ in range(2)
    ]
    results, errors = fd.run(lambda r: evaluation.evaluate(models[r], config, torch.device("cpu")))
    assert errors == [None, None] and results[0] == results[1]
    # 5 images: 3 + 2; the global test batch of 2 is 1 image per rank
    assert models[0].calls + models[1].calls == 5
    monkeypatch.undo()
    monkeypatch.setattr(inference, "_to_original", identity_postprocess)
    one = evaluation.evaluate(
        ColourOracle(noisy, config.input.pixel_mean, config.input.pixel_std),
        config,
        torch.device("cpu"),
    )
    assert one == results[0] and 0 < one["segm"]["AP"] < 0.95


def test_label_names_and_mapping():
    config = small_config()
    meta = fake_meta()
    assert evaluation.label_names(config, meta) == {1: "square", 2: "box", 3: "tile"}
    assert evaluation.label_to_category_fn(config, meta)(3) == 90
    config.data.category_ids_as_labels = True
    config.model.num_classes = 91
    assert evaluation.label_to_category_fn(config, meta)(5) == 5
    assert evaluation.label_names(config, meta) == {1: "square", 5: "box", 90: "tile"}
