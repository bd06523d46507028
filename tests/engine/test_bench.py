"""`--mode=bench`: ours and torchvision timed side by side on the same weights; JSON written."""

from __future__ import annotations

import json
import os

import torch

from configs import r50_fpn_1x
from mrcnn.engine import bench


def _cfg(**perf):
    c = r50_fpn_1x.get_config()
    c.bench.image_size = (64, 96)
    c.bench.iters, c.bench.warmup = 2, 1
    c.bench.dtypes = ("float32",)
    for k, v in perf.items():
        c.perf[k] = v
    return c


def test_bench_side_by_side_writes_json(tmp_path):
    res = bench.bench(_cfg(channels_last=True, onednn=True), str(tmp_path),
                      torch.device("cpu"))
    with open(os.path.join(tmp_path, "bench.json")) as f:
        saved = json.load(f)
    assert saved["variant"] == res["variant"] == "channels_last+onednn"
    assert [(r["mode"], r["dtype"]) for r in saved["runs"]] == [
        ("train", "float32"), ("infer", "float32")]
    for r in saved["runs"]:
        for side in ("ours", "torchvision"):
            assert len(r[side]["times"]) == 2 and r[side]["s_per_iter"] > 0
        assert r["time_ratio"] == r["ours"]["s_per_iter"] / r["torchvision"]["s_per_iter"]
        assert r["pair_ratio_median"] > 0
    assert "| train | float32 |" in bench.format_table(saved)


def test_bench_without_a_torchvision_counterpart_times_ours_only(tmp_path):
    c = _cfg()
    c.model.backbone.depth = 18
    c.model.backbone.width = 16
    c.bench.mode = "infer"
    res = bench.bench(c, str(tmp_path), torch.device("cpu"))
    (row,) = res["runs"]
    assert "torchvision" not in row and "time_ratio" not in row and row["ours"]["s_per_iter"] > 0
