"""End to end: `main.py --mode=eval` and `--mode=predict` in a subprocess, with the real model
(random weights saved by the test) on the generated shapes dataset (configs/shapes.py:runlocal)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import torch
from pycocotools import mask as mask_util

from configs import shapes
from mrcnn.data import ensure_shapes_dataset
from mrcnn.modeling import build_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _main(args, env, timeout=300):
    r = subprocess.run(
        [sys.executable, "main.py", "--config=configs/shapes.py:runlocal", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout + r.stderr


def test_eval_and_predict_from_the_command_line(tmp_path, monkeypatch):
    data_root = tmp_path / "data"
    monkeypatch.setenv("MRCNN_DATA", str(data_root))
    config = shapes.get_config("runlocal")
    _, val_cfg = ensure_shapes_dataset(config)  # generated once, reused by both runs
    torch.manual_seed(0)
    weights = tmp_path / "random.pth"
    torch.save({"model": build_model(config.model).state_dict()}, weights)
    env = dict(os.environ, MRCNN_DATA=str(data_root), CUDA_VISIBLE_DEVICES="")
    common = [
        f"--config.init.weights={weights}",
        "--config.device=cpu",
        # A random model scores low: keep everything so that the whole path is exercised.
        "--config.model.roi_heads.score_thresh=0.0",
    ]

    run = tmp_path / "eval"
    out = _main(["--mode=eval", f"--workdir={run}", *common], env)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm"}
    for m in metrics.values():
        assert set(m) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert -1.0 <= m["AP"] <= 1.0
    bbox = json.loads((run / "bbox.json").read_text())
    segm = json.loads((run / "segm.json").read_text())
    assert len(bbox) == len(segm) > 0
    val_ids = {im["id"] for im in json.loads(open(val_cfg.ann_file).read())["images"]}
    assert {r["image_id"] for r in bbox} <= val_ids and len(val_ids) == 4

    run = tmp_path / "predict"
    out = _main(
        [
            "--mode=predict",
            f"--workdir={run}",
            f"--config.predict.input={val_cfg.img_dir}",
            "--config.predict.score_thresh=0.0",
            *common,
        ],
        env,
    )
    images = sorted(os.listdir(val_cfg.img_dir))
    records = json.loads((run / "predictions.json").read_text())
    assert len(records) > 0
    assert {os.path.basename(r["file_name"]) for r in records} <= set(images)
    for r in records[:20]:
        assert set(r) == {"file_name", "image_id", "category_id", "bbox", "score", "segmentation"}
        assert 0 <= r["image_id"] < len(images) and r["category_id"] in (1, 2, 3)
        assert mask_util.decode(r["segmentation"]).shape == (128, 128)
    pngs = glob.glob(str(run / "predictions" / "*.png"))
    assert len(pngs) == len(images)
