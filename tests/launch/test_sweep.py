"""launch/sweep.py: the grid, the run names, reading workdirs, the table, and a real two-run
sweep of configs/shapes_sweep.py on the CPU."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_spec = importlib.util.spec_from_file_location("sweep", os.path.join(ROOT, "launch", "sweep.py"))
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def test_split_values_respects_brackets_and_quotes():
    assert sweep.split_values("0.02,0.04") == ["0.02", "0.04"]
    assert sweep.split_values("(640, 800),(800,), [1,2]") == ["(640, 800)", "(800,)", "[1,2]"]
    assert sweep.split_values("'a,b',\"c,(d\",e") == ["'a,b'", '"c,(d"', "e"]
    assert sweep.split_values("GN") == ["GN"]
    for bad in ("(1,2", "1,2)", "'a,b", "1,,2", ""):
        with pytest.raises(ValueError):
            sweep.split_values(bad)


def test_parse_set():
    assert sweep.parse_set(["solver.base_lr=0.02,0.04", "config.dtype=bfloat16"]) == [
        ("solver.base_lr", ["0.02", "0.04"]), ("dtype", ["bfloat16"])]
    for bad in (["solver.base_lr"], ["=1,2"], ["a=1", "a=2"], ["a="]):
        with pytest.raises(ValueError):
            sweep.parse_set(bad)


def test_expand_grid_crosses_get_sweep_with_set():
    base = [{"model.roi_heads.aligned": False}, {"model.roi_heads.aligned": True}]
    sets = [("solver.base_lr", ["0.02", "0.04"]), ("dtype", ["float32"])]
    runs = sweep.expand_grid(base, sets)
    assert runs == [
        {"model.roi_heads.aligned": a, "solver.base_lr": lr, "dtype": "float32"}
        for a in (False, True) for lr in ("0.02", "0.04")
    ]
    assert sweep.expand_grid(None, []) == [{}]
    assert sweep.expand_grid([], [("a", ["1", "2"])]) == [{"a": "1"}, {"a": "2"}]
    with pytest.raises(ValueError, match="both"):
        sweep.expand_grid(base, [("model.roi_heads.aligned", ["True"])])
    with pytest.raises(ValueError, match="twice"):
        sweep.expand_grid([{"a": 1}, {"a": 1}], [])


def test_flag_values_and_commands():
    assert sweep.format_value(True) == "True"
    assert sweep.format_value((640, 800)) == "(640, 800)"
    assert sweep.format_value([800]) == "(800,)"
    assert sweep.format_value(0.5) == "0.5" and sweep.format_value("GN") == "GN"
    cmd = sweep.train_command("configs/x.py:runlocal", "runs/s/a", {"a.b": (1,), "c": True},
                              ["--config.solver.max_iter=2"], nproc=1, python="py")
    assert cmd == ["py", "main.py", "--config=configs/x.py:runlocal", "--mode=train",
                   "--workdir=runs/s/a", "--config.a.b=(1,)", "--config.c=True",
                   "--config.solver.max_iter=2"]
    cmd = sweep.train_command("c.py", "w", {}, [], nproc=4, python="py")
    assert cmd[:5] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    cmd = sweep.sbatch_command("c.py", "w", {"a": 1}, [], "job", nodes=2)
    assert cmd == ["sbatch", "--job-name=job", "--nodes=2", "launch/slurm.sbatch", "c.py",
                   "--workdir=w", "--config.a=1"]


def test_run_names_are_readable_unique_and_stable():
    runs = [{"model.roi_heads.aligned": False, "solver.base_lr": 0.02},
            {"model.roi_heads.aligned": True, "solver.base_lr": 0.02},
            {"input.min_size_train": (640, 672, 704)}, {}]
    assert sweep.run_suffixes(runs) == ["aligned-False_base_lr-0.02", "aligned-True_base_lr-0.02",
                                        "min_size_train-640-672-704", "base"]
    # The same last key part with the same value: readable alone, ambiguous together.
    twins = [{"model.rpn.batch_size_per_image": 64}, {"model.roi_heads.batch_size_per_image": 64}]
    names = sweep.run_suffixes(twins)
    assert len(set(names)) == 2 and all(n.startswith("batch_size_per_image-64-") for n in names)
    assert names == sweep.run_suffixes(twins)  # stable: a rerun finds its workdirs again
    long = [{f"model.key_{i}": "x" * 10 for i in range(6)}]
    (name,) = sweep.run_suffixes(long)
    assert len(name) <= sweep.MAX_SUFFIX and name.endswith(sweep.short_hash(long[0]))
    assert sweep.short_hash({"a": 1, "b": 2}) == sweep.short_hash({"b": 2, "a": 1})


def _fake_run(wd, max_iter=4, last=4, evals=(2, 4), times=(5.0, 1.0, 3.0, 2.0), final=True):
    os.makedirs(wd)
    with open(os.path.join(wd, "config.json"), "w") as f:
        json.dump({"solver": {"max_iter": max_iter}, "eval": {"final": final}}, f)
    with open(os.path.join(wd, "last_checkpoint"), "w") as f:
        f.write(f"model_{last:07d}.pth\n")
    for it in evals:
        os.makedirs(os.path.join(wd, "eval", f"iter_{it:07d}"))
        with open(os.path.join(wd, "eval", f"iter_{it:07d}", "metrics.json"), "w") as f:
            json.dump({"bbox": {"AP": it / 10, "AP50": 0.5}, "segm": {"AP": it / 20, "AP50": 0.25}},
                      f)
    with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
        for i, t in enumerate(times):
            f.write(json.dumps({"iter": i + 1, "train/time": t, "train/loss": 4.0 - i}) + "\n")
        f.write(json.dumps({"iter": 4, "eval/bbox/AP": 0.4}) + "\n")
        f.write('{"iter": 5, "train/ti')  # cut short by a crash


def test_read_results(tmp_path):
    done = str(tmp_path / "done")
    _fake_run(done)
    r = sweep.read_results(done)
    assert r == {"status": "done", "iter": 4, "max_iter": 4, "eval_iter": 4,
                 "bbox_AP": 40.0, "bbox_AP50": 50.0, "segm_AP": 20.0, "segm_AP50": 25.0,
                 "s_per_iter": 2.0, "loss": 1.0}  # median of the times after the first
    stopped = str(tmp_path / "stopped")
    _fake_run(stopped, last=2, evals=(2,), times=(7.0,))
    r = sweep.read_results(stopped)
    assert r["status"] == "running or stopped" and r["iter"] == 2 and r["s_per_iter"] == 7.0
    no_final_eval = str(tmp_path / "nofinal")
    _fake_run(no_final_eval, last=4, evals=(), final=False)
    assert sweep.read_results(no_final_eval)["status"] == "done"
    missing_eval = str(tmp_path / "noeval")
    _fake_run(missing_eval, last=4, evals=(2,))
    assert sweep.read_results(missing_eval)["status"] == "running or stopped"
    assert sweep.read_results(str(tmp_path / "nothing")) == {"status": "not started"}


def test_table_markdown_and_csv(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _fake_run(a)
    runs = [{"solver.base_lr": 0.02}, {"solver.base_lr": 0.04, "dtype": "bfloat16"}]
    results = [sweep.read_results(a), sweep.read_results(b)]
    header, cells, records = sweep.table_rows(runs, ["lr-a", "lr-b"], results)
    assert header[:4] == ["run", "solver.base_lr", "dtype", "bbox AP"]
    md = sweep.write_table(str(tmp_path / "out"), header, cells, records)
    lines = md.splitlines()
    assert lines[0].startswith("| run | solver.base_lr | dtype | bbox AP |")
    assert lines[2].startswith("| lr-a | 0.02 |  | 40.00 | 50.00 | 20.00 | 25.00 | 2.0000 |")
    assert lines[3].startswith("| lr-b | 0.04 | bfloat16 |  |") and "not started" in lines[3]
    with open(tmp_path / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["lr-a", "lr-b"]
    assert float(rows[0]["bbox AP"]) == 40.0 and rows[1]["bbox AP"] == ""


TINY_RUN = [
    "--config.data.shapes.num_train=8", "--config.data.shapes.num_val=2",
    "--config.data.shapes.image_size=64", "--config.input.min_size_train=(64,)",
    "--config.input.max_size_train=64", "--config.input.min_size_test=64",
    "--config.input.max_size_test=64", "--config.model.backbone.width=16",
    "--config.model.backbone.fpn_channels=32", "--config.model.box_head.fc_dim=64",
    "--config.model.mask_head.conv_dim=16", "--config.model.mask_head.num_conv=1",
    "--config.solver.max_iter=2", "--config.solver.checkpoint_period=0",
]


def _sweep(args, env, timeout=300):
    p = subprocess.run([sys.executable, "launch/sweep.py", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def test_sweep_of_two_tiny_ablations_writes_its_table(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = dict(os.environ, MRCNN_DATA=str(tmp_path / "data"), OMP_NUM_THREADS="2")
    root = str(tmp_path / "sweeps")
    args = ["--config=configs/shapes_sweep.py:runlocal", f"--root={root}", "--", *TINY_RUN]
    out = _sweep(args, env)
    sweep_dir = os.path.join(root, "shapes_sweep")
    with open(os.path.join(sweep_dir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["aligned-False", "aligned-True"]
    assert [r["model.roi_heads.aligned"] for r in rows] == ["False", "True"]
    for r in rows:
        assert r["status"] == "done" and r["iter"] == "2"
        for col in ("bbox AP", "bbox AP50", "segm AP", "segm AP50"):
            assert 0.0 <= float(r[col]) <= 100.0
        assert float(r["s/iter"]) > 0 and float(r["loss"]) > 0
        wd = os.path.join(sweep_dir, r["run"])
        with open(os.path.join(wd, "config.json")) as f:  # the override reached the run
            aligned = json.load(f)["model"]["roi_heads"]["aligned"]
        assert str(aligned) == r["model.roi_heads.aligned"]
        acc = EventAccumulator(os.path.join(wd, "tb"))
        acc.Reload()
        assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    md = open(os.path.join(sweep_dir, "results.md")).read()
    assert md in out and md.count("| done |") == 2

    again = _sweep(args, env)  # finished runs are not trained again
    assert again.count("done, skipped") == 2 and "main.py" not in again
    printed = _sweep([*args[:2], "--print", "--nproc=2", "--", *TINY_RUN], env).splitlines()
    assert len(printed) == 2 and all("--nproc_per_node=2 main.py" in p for p in printed)
    assert "--config.model.roi_heads.aligned=True" in printed[1]


# ----------------------------------------------------------------------------- ablation configs

# Each ablation: (module, base module, every key it changes from the base with its value).
ABLATIONS = {
    "r101_fpn_1x": ("r50_fpn_1x", {"model.backbone.depth": 101}),
    "r50_c4_1x": ("r50_fpn_1x", {
        "model.backbone.fpn": False, "model.rpn.pre_nms_top_n_train": 12000,
        "model.rpn.pre_nms_top_n_test": 6000, "model.box_head.pooler_resolution": 14,
        "model.box_head.sampling_ratio": 0,
        "model.mask_head.sampling_ratio": 0, "model.mask_head.resolution": 14,
        "solver.ims_per_batch": 8, "solver.base_lr": 0.01, "solver.steps": (120000, 160000),
        "solver.max_iter": 180000, "solver.checkpoint_period": 5000}),
    "r101_c4_1x": ("r50_c4_1x", {"model.backbone.depth": 101}),
    "r50_fpn_gn_1x": ("r50_fpn_1x", {
        "model.backbone.norm": "GN", "model.backbone.fpn_norm": "GN",
        "model.mask_head.norm": "GN", "solver.weight_decay_norm": 1e-4}),
    "r50_fpn_1x_bf16": ("r50_fpn_1x", {"dtype": "bfloat16"}),
    "r50_fpn_ms_1x": ("r50_fpn_1x", {"input.min_size_train": (640, 672, 704, 736, 768, 800)}),
    "r50_fpn_aligned_1x": ("r50_fpn_1x", {"model.roi_heads.aligned": True}),
    "r50_fpn_1x_1gpu": ("r50_fpn_1x", {
        "solver.base_lr": 0.0025, "solver.ims_per_batch": 2, "solver.steps": (480000, 640000),
        "solver.max_iter": 720000}),
    "shapes_sweep": ("shapes", {}),
}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = tuple(v) if isinstance(v, list) else v
    return out


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_configs_change_only_what_they_say(name):
    import importlib

    from mrcnn import config_check

    base_name, changes = ABLATIONS[name]
    module = importlib.import_module(f"configs.{name}")
    base = importlib.import_module(f"configs.{base_name}")
    assert module.__doc__ and "launch/" in module.__doc__ and "Expected" in module.__doc__
    for arg in (None, "runlocal"):
        c, b = module.get_config(arg), base.get_config(arg)
        config_check.validate(c)
        fc, fb = _flat(c.to_dict()), _flat(b.to_dict())
        assert fc.keys() == fb.keys()
        diff = {k: fc[k] for k in fc if fc[k] != fb[k] and k != "name"}
        expected = changes if arg is None else {  # runlocal shrinks some of them back
            k: v for k, v in changes.items() if fc[k] != fb[k]}
        assert diff == expected
        assert c.name == name


@pytest.mark.parametrize("name", ["r50_c4_1x", "r50_fpn_gn_1x"])
def test_structural_ablations_build_their_model(name):
    import importlib

    import torch

    from mrcnn.modeling import build_model

    c = importlib.import_module(f"configs.{name}").get_config("runlocal")
    model = build_model(c.model)
    if name == "r50_c4_1x":
        assert model.mask_head is None and model.mask_resolution == c.model.mask_head.resolution
    else:
        assert any(isinstance(m, torch.nn.GroupNorm) for m in model.backbone.modules())
