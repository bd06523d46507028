"""Bad configs, weights and workdirs are rejected at start: the key or file named, exit code 2
(1 for absl's own flag errors), no traceback, nothing trained or written.

test_config.py covers a misspelt override and a negative lr through main.py, and each
impossible value in config_check; these add the command-line cases it lacks and the weights
and checkpoint files a run starts from.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from tests.reliability import catalogue as faults
from mrcnn import weights
from mrcnn.engine import checkpoint, train


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*args],
        cwd=faults.REPO,
        env=faults.child_env(torch.get_num_threads()),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _nothing_written(w: str) -> None:
    names = os.listdir(w) if os.path.isdir(w) else []
    assert not [n for n in names if n.startswith("model_") or n == "metrics.jsonl"], names


@pytest.mark.parametrize(
    "override,key",
    [
        ("--config.solver.base_lr=abc", "solver.base_lr"),  # wrong type
        ("--config.solver.max_iter=1.5", "solver.max_iter"),  # float for an int
        ("--config.model.backbone.dept=50", "dept"),  # unknown nested key
        ("--config.solver.ims_per_batch=3", None),  # valid flag, impossible value: see below
    ],
)
def test_bad_overrides_fail_at_start_naming_the_key(root, tmp_path, override, key):
    w = str(tmp_path / "w")
    extra = ["--config.solver.accumulate_steps=2"] if key is None else []
    r = _main(*faults.main_argv(root, w, 2), override, *extra)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out, out[-3000:]
    if key is None:  # config_check: main.py's one-line error, exit 2
        assert r.returncode == 2
        assert "config.solver.ims_per_batch=3: must divide by world size x accumulate_steps" in out
    else:  # absl rejects the flag before anything runs
        assert key in out
    _nothing_written(w)


@pytest.mark.parametrize(
    "section,key,value,needle",
    [
        ("solver", "base_lr", -0.02, "config.solver.base_lr=-0.02: must be > 0"),
        ("solver", "warmup_method", "cosine", "config.solver.warmup_method='cosine'"),
        ("solver", "warmup_iters", -1, "config.solver.warmup_iters=-1: must be >= 0"),
        ("data", "num_workers", -1, "config.data.num_workers=-1: must be >= 0"),
        ("eval", "period", -1, "config.eval.period=-1: must be >= 0"),
        ("solver", "accumulate_steps", 0, "config.solver.accumulate_steps=0"),
        ("data", "on_bad_image", "ignore", "config.data.on_bad_image='ignore'"),
        ("init", "format", "caffe2", "config.init.format='caffe2'"),
    ],
)
def test_impossible_values_are_one_line_user_errors_before_any_work(
    root, tmp_path, section, key, value, needle
):
    c = faults.tiny_config(root, 2)
    c[section][key] = value
    w = str(tmp_path / "w")
    msg = faults.run_in_process("train", c, w)
    assert msg is not None and needle in msg, msg
    _nothing_written(w)


@pytest.mark.parametrize("key,value,needle", [
    ("log_period", 0, "config.log_period=0: must be >= 1"),
    ("device", "cuda", "config.device='cuda': no CUDA device is available"),
])
def test_top_level_impossible_values(root, tmp_path, key, value, needle):
    if key == "device" and torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    c = faults.tiny_config(root, 2)
    c[key] = value
    msg = faults.run_in_process("train", c, str(tmp_path / "w"))
    assert msg is not None and needle in msg, msg


def test_heads_and_inputs_impossible_values(root, tmp_path):
    for mutate, needle in (
        (lambda c: setattr(c.model.box_head, "pooler_resolution", 0),
         "config.model.box_head.pooler_resolution=0: must be >= 1"),
        (lambda c: setattr(c.input, "min_size_train", ()),
         "config.input.min_size_train=(): give at least one size"),
    ):
        c = faults.tiny_config(root, 2)
        mutate(c)
        msg = faults.run_in_process("train", c, str(tmp_path / "w"))
        assert msg is not None and needle in msg, msg


def test_a_schedule_longer_than_a_smoke_run_is_a_warning(root, tmp_path, caplog):
    """max_iter shortened below warmup_iters and the lr steps: the run trains (a warning says
    the decays never happen), as detectron2 does."""
    c = faults.tiny_config(root, 2)
    c.solver.warmup_iters, c.solver.steps = 5, (3, 50)
    caplog.set_level("WARNING")
    assert faults.run_in_process("train", c, str(tmp_path / "w")) is None
    assert "exceeds solver.max_iter=2" in caplog.text and "[3, 50]" in caplog.text
    assert os.path.isfile(str(tmp_path / "w" / "model_0000002.pth"))


def _other_architecture_weights(root: str, path: str, **model) -> None:
    from mrcnn.modeling import build_model

    c = faults.tiny_config(root)
    for k, v in model.items():
        c.model.backbone[k] = v
    torch.save({"model": build_model(c.model).state_dict(), "iteration": 7}, path)


def test_weights_of_another_architecture_list_the_mismatched_keys(root, tmp_path):
    # Deeper (R34: more blocks per stage) -> unexpected keys; wider -> shape mismatches.
    deeper, wider = str(tmp_path / "r34.pth"), str(tmp_path / "wide.pth")
    _other_architecture_weights(root, deeper, depth=34)
    _other_architecture_weights(root, wider, width=24)
    c = faults.tiny_config(root, 2)
    c.init.weights = wider
    msg = faults.run_in_process("train", c, str(tmp_path / "a"))
    assert msg is not None and "WeightsError" in msg and "shape mismatches" in msg, msg
    assert "backbone.body.stem.conv.weight: checkpoint (24, 3, 7, 7) vs model (16, 3, 7, 7)" in msg
    _nothing_written(str(tmp_path / "a"))
    # Through main.py: exit 2, the keys listed, no traceback.
    w = str(tmp_path / "b")
    r = _main(
        *faults.main_argv(root, w, 2),
        f"--config.init.weights={deeper}",
        "--config.deterministic=False",
    )
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert "unexpected keys" in out and "backbone.body.res2.2.conv1.weight" in out, out[-3000:]
    assert deeper in out
    _nothing_written(w)


@pytest.mark.parametrize(
    "content,needle",
    [
        (None, "FileNotFoundError"),
        (b"", "cannot read weights file"),
        (b"PK\x03\x04 truncated zip", "cannot read weights file"),
    ],
)
def test_unreadable_init_weights_are_user_errors_naming_the_file(root, tmp_path, content, needle):
    path = str(tmp_path / "w.pth")
    if content is not None:
        with open(path, "wb") as f:
            f.write(content)
    c = faults.tiny_config(root, 2)
    c.init.weights = path
    msg = faults.run_in_process("train", c, str(tmp_path / "w"))
    assert msg is not None and "WeightsError" in msg and path in msg and needle in msg, msg


def test_workdir_whose_checkpoints_are_all_unreadable_does_not_restart_from_zero(root, tmp_path):
    """Starting again from iteration 0 would throw the run away (and prune its checkpoints as
    the new run overtook them); the run stops and says what to do instead."""
    w = str(tmp_path / "w")
    os.makedirs(w)
    for i in (100, 200):
        with open(os.path.join(w, checkpoint.checkpoint_name(i)), "wb") as f:
            f.write(b"PK\x03\x04" + os.urandom(100))
    msg = faults.run_in_process("train", faults.tiny_config(root, 2), w)
    assert msg is not None and "CheckpointError" in msg, msg
    assert "model_0000100.pth" in msg and "model_0000200.pth" in msg and "move them" in msg
    assert sorted(os.listdir(w)) == [
        "config.json",
        "log.txt",
        "model_0000100.pth",
        "model_0000200.pth",
        "train.lock",  # released (flock): the next training takes it over
    ]
    with pytest.raises(checkpoint.CheckpointError):
        train.train(faults.tiny_config(root, 2), w, torch.device("cpu"))


def test_load_weights_errors_are_weights_errors(tmp_path):
    """Every way load_weights can fail is a WeightsError (a user error main.py prints in one
    line), and stays a ValueError for callers that catch that."""
    assert issubclass(weights.WeightsError, ValueError)
    from mrcnn.engine import runner

    assert weights.WeightsError in runner._user_errors()
    assert checkpoint.CheckpointError in runner._user_errors()
    path = str(tmp_path / "list.pth")
    torch.save([1, 2, 3], path)
    with pytest.raises(weights.WeightsError, match="expected a state dict"):
        weights.load_weights(torch.nn.Linear(2, 2), path)
    torch.save({"model.nope": torch.zeros(1)}, path)
    with pytest.raises(weights.WeightsError, match="unrecognized torchvision"):
        weights.load_weights(torch.nn.Linear(2, 2), path, "torchvision")
