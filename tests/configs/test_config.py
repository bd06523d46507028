"""Every config loads, locks and resolves; overrides work; bad keys and values fail loudly."""

import glob
import importlib
import os
import subprocess
import sys

import pytest

from mrcnn import config_check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if not os.path.basename(p).startswith(("_", "common"))
)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_config_loads_and_validates(name, arg):
    mod = importlib.import_module(f"configs.{name}")
    config = mod.get_config(arg)
    config.lock()
    config_check.validate(config)
    assert config.name
    config.to_json_best_effort()


def test_r50_fpn_1x_matches_the_seed_recipe():
    from configs import r50_fpn_1x

    c = r50_fpn_1x.get_config()
    s = c.solver
    assert (s.base_lr, s.ims_per_batch, tuple(s.steps), s.max_iter) == (0.02, 16, (60000, 80000), 90000)
    assert (s.warmup_iters, s.warmup_factor, s.weight_decay, s.bias_lr_factor, s.momentum) == (
        500, 1 / 3, 1e-4, 2.0, 0.9)
    assert (c.input.min_size_train, c.input.max_size_train, c.input.size_divisibility) == ((800,), 1333, 32)
    assert tuple(c.model.anchor.sizes) == (32, 64, 128, 256, 512)
    assert tuple(c.model.anchor.aspect_ratios) == (0.5, 1.0, 2.0)
    r = c.model.rpn
    assert (r.fg_iou_thresh, r.bg_iou_thresh, r.batch_size_per_image, r.positive_fraction) == (0.7, 0.3, 256, 0.5)
    assert (r.pre_nms_top_n_train, r.pre_nms_top_n_test, r.post_nms_top_n_train, r.post_nms_top_n_test) == (
        2000, 1000, 2000, 1000)
    assert r.nms_thresh == 0.7
    h = c.model.roi_heads
    assert (h.fg_iou_thresh, h.batch_size_per_image, h.positive_fraction) == (0.5, 512, 0.25)
    assert tuple(h.bbox_reg_weights) == (10.0, 10.0, 5.0, 5.0)
    assert (h.score_thresh, h.nms_thresh, h.detections_per_img) == (0.05, 0.5, 100)
    assert c.model.mask_head.resolution == 28
    assert (c.test.ims_per_batch, c.dtype, s.checkpoint_period) == (8, "float32", 2500)


def test_unknown_config_argument_fails():
    from configs import r50_fpn_1x

    with pytest.raises(ValueError, match="nosuchopt"):
        r50_fpn_1x.get_config("nosuchopt")


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("solver.base_lr", -0.1, "solver.base_lr"),
        ("solver.ims_per_batch", 3, "solver.ims_per_batch"),
        ("solver.warmup_iters", -1, "solver.warmup_iters"),
        ("dtype", "float64", "dtype"),
        ("model.backbone.depth", 42, "model.backbone.depth"),
        ("model.rpn.bg_iou_thresh", 0.9, "model.rpn.bg_iou_thresh"),
        ("perf.fc6", "fast", "perf.fc6"),
    ],
)
def test_impossible_values_are_rejected_with_the_key(key, value, match):
    from configs import r50_fpn_1x

    c = r50_fpn_1x.get_config()
    section, _, leaf = key.rpartition(".")
    target = c
    for part in filter(None, section.split(".")):
        target = target[part]
    target[leaf] = value
    world = 2 if key == "solver.ims_per_batch" else 1
    with pytest.raises(config_check.ConfigError, match=match.replace(".", r"\.")):
        config_check.validate(c, world_size=world)


def _main(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "main.py", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_main_help_works():
    r = _main("--help")
    assert r.returncode == 0
    assert "--mode" in r.stdout and "--config" in r.stdout


def test_unknown_override_exits_nonzero_naming_the_key(tmp_path):
    r = _main("--config=configs/shapes.py", "--mode=train", f"--workdir={tmp_path}",
              "--config.solver.base_lrr=0.1")
    assert r.returncode != 0
    assert "base_lrr" in r.stderr + r.stdout


def test_bad_value_exits_nonzero_naming_the_key(tmp_path):
    r = _main("--config=configs/shapes.py:runlocal", "--mode=train", f"--workdir={tmp_path}",
              "--config.solver.base_lr=-1")
    assert r.returncode != 0
    assert "solver.base_lr" in r.stderr + r.stdout and "Traceback" not in r.stderr + r.stdout
    assert os.listdir(tmp_path) == []  # rejected before any work: nothing written


def test_a_typo_in_the_config_argument_is_one_line_exit_2(tmp_path):
    r = _main("--config=configs/shapes.py:tinyy", "--mode=train", f"--workdir={tmp_path}")
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in out, out
    assert "--config=configs/shapes.py:tinyy: ValueError: unknown config argument 'tinyy'" in out
    assert len(out.strip().splitlines()) == 1
