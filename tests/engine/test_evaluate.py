"""COCO evaluation: records, pycocotools agreement, evaluate() with oracle / empty models, the
category-id mapping, and sharding over simulated ranks."""

from __future__ import annotations

import json
import os

import pytest
import torch
from eval_fixtures import (
    noisy_detections,
    CATEGORY_IDS,
    ColourOracle,
    EmptyModel,
    FakeDataset,
    FakeDist,
    OracleModel,
    fake_loader,
    fake_meta,
    identity_postprocess,
    make_tiny_coco,
    shard,
)

from configs import r50_fpn_1x
from mrcnn.engine import evaluate as evaluation
from mrcnn.engine import inference

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
    monkeypatch.setattr(evaluation.data_lib, "category_table", lambda config: fake_meta())
    monkeypatch.setattr(inference, "_to_original", identity_postprocess)
    return state


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
    ids = fake_meta(ids_as_labels=True)  # the table of a model whose labels are the ids
    model = OracleModel(tiny.gt, labels_as_category_ids=True)
    cpu = torch.device("cpu")
    assert evaluation.evaluate(model, config, cpu, categories=ids)["bbox"]["AP"] == pytest.approx(1)
    # Control: contiguous labels taken as ids hit the wrong categories (5 and 90 never appear).
    wrong = evaluation.evaluate(OracleModel(tiny.gt), config, cpu, categories=ids)
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
    noisy = noisy_detections(tiny, seed=11)
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
    # The model's categories come from the training set (here the same file), never the val one.
    config.data.train.img_dir, config.data.train.ann_file = tiny.img_dir, tiny.ann_file
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
    noisy = noisy_detections(tiny, seed=5)
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
    meta = fake_meta()
    assert evaluation.label_names(meta, 4) == {1: "square", 2: "box", 3: "tile"}
    assert meta.label_to_category_id(3) == 90
    ids = fake_meta(ids_as_labels=True)  # torchvision's 91-way head: labels are the ids
    assert ids.label_to_category_id(5) == 5
    assert evaluation.label_names(ids, 91) == {1: "square", 5: "box", 90: "tile"}


def _write_val(tiny, path, categories) -> str:

    with open(tiny.ann_file) as f:
        d = json.load(f)
    d["categories"] = categories
    with open(path, "w") as f:
        json.dump(d, f)
    return str(path)


def test_val_set_with_an_extra_category_is_matched_by_id(tiny, tmp_path, monkeypatch, caplog):
    """A val json listing one more category (and in another order) than the training json: the
    model's labels still map to the training ids; the extra one is named and never detected."""
    monkeypatch.setattr(inference, "_to_original", identity_postprocess)
    config = _real_config(tiny)
    with open(tiny.ann_file) as f:
        cats = json.load(f)["categories"]
    config.data.val.ann_file = _write_val(
        tiny, tmp_path / "val.json", [{"id": 42, "name": "extra"}] + cats[::-1])
    caplog.set_level("WARNING")
    oracle = ColourOracle(tiny.gt, config.input.pixel_mean, config.input.pixel_std)
    metrics = evaluation.evaluate(oracle, config, torch.device("cpu"), output_dir=str(tmp_path))
    assert "42 ('extra')" in caplog.text
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)  # id 42 has no object: nothing lost
    with open(tmp_path / "bbox.json") as f:
        assert {r["category_id"] for r in json.load(f)} <= set(CATEGORY_IDS)


def test_val_set_listing_a_subset_of_the_categories(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "_to_original", identity_postprocess)
    config = _real_config(tiny)
    with open(tiny.ann_file) as f:
        d = json.load(f)
    keep = [c for c in d["categories"] if c["id"] != 90]
    d["categories"] = keep
    d["annotations"] = [a for a in d["annotations"] if a["category_id"] != 90]
    path = tmp_path / "val.json"
    path.write_text(json.dumps(d))
    config.data.val.ann_file = str(path)
    oracle = ColourOracle(tiny.gt, config.input.pixel_mean, config.input.pixel_std)
    metrics = evaluation.evaluate(oracle, config, torch.device("cpu"))  # no crash after inference
    assert 0.0 < metrics["bbox"]["AP"] <= 1.0
