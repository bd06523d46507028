"""Process and numerical faults: kill -9 (also inside a checkpoint write), SIGTERM / SIGINT,
a truncated newest checkpoint, a full disk, non-finite losses, float16's GradScaler.

Every run is the catalogue's tiny deterministic config (64 px shapes, width-16 R18, a
checkpoint per step); an uninterrupted in-process run is the reference the interrupted runs must
match bit for bit. The random-kill campaign with many rounds is `python -m bench.faults`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import re
import shutil
import signal
import time

import pytest
import torch

from tests.reliability import catalogue as faults
from mrcnn.engine import checkpoint, train

CPU = torch.device("cpu")
MAX_ITER = 8


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("MRCNN_DATA", raising=False)  # it would override the data root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(root, tmp_path_factory):
    """An uninterrupted run to MAX_ITER keeping every checkpoint: {iteration: state}."""
    w = str(tmp_path_factory.mktemp("reference"))
    c = faults.tiny_config(root, MAX_ITER)
    c.solver.keep_checkpoints = 0
    with pytest.MonkeyPatch.context() as m:
        m.delenv("MRCNN_DATA", raising=False)
        train.train(c, w, CPU)
    return w, {
        i: checkpoint.load(os.path.join(w, checkpoint.checkpoint_name(i)))
        for i in range(1, MAX_ITER + 1)
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["iteration"] == b["iteration"]
    assert faults.states_equal(a, b), "weights or optimizer state differ from the reference"


def _copy_until(src: str, dst: str, last: int) -> None:
    """A workdir holding the reference's checkpoints 1..last, pointing at `last`."""
    os.makedirs(dst)
    for i in range(1, last + 1):
        shutil.copy(os.path.join(src, checkpoint.checkpoint_name(i)), dst)
    with open(os.path.join(dst, checkpoint.POINTER), "w") as f:
        f.write(checkpoint.checkpoint_name(last) + "\n")


def _stopped_at(text: str, signum: int) -> int:
    m = re.search(rf"stopped by signal {signum} at iteration (\d+)", text)
    assert m, text[-3000:]
    return int(m.group(1))


def test_kill9_and_signals_then_resume_ends_identical(root, reference, tmp_path):
    """SIGKILL inside a checkpoint write, SIGTERM, SIGINT, SIGKILL at a random moment, then
    resume: each restart continues from the last complete checkpoint, a signal saves one
    first, and the weights at the end equal the uninterrupted run's."""
    _, ref = reference
    w = str(tmp_path / "w")
    env = faults.child_env(torch.get_num_threads())
    argv = faults.main_argv(root, w, MAX_ITER)

    # 1. SIGKILL half-way through writing model_0000002.pth.
    out1 = str(tmp_path / "1.out")
    p = faults.spawn(faults.die_in_save_argv(2, argv), out1, env)
    assert p.wait(300) == -signal.SIGKILL, open(out1).read()[-3000:]
    state = faults.inspect_workdir(w)
    assert state["iteration"] == 1 and state["pointer_ok"]
    assert any(n.startswith(".model_0000002.pth.") for n in state["tmp"])  # the write was cut
    assert not os.path.exists(os.path.join(w, checkpoint.checkpoint_name(2)))

    # 2. SIGTERM (preemption) once step 2 is logged: the run saves where it is and exits 0.
    out2 = str(tmp_path / "2.out")
    p = faults.spawn(argv, out2, env)
    assert faults.wait_for_line(p, out2, r"iter: 2 ", 300, poll_s=0.002), open(out2).read()
    p.send_signal(signal.SIGTERM)
    assert p.wait(300) == 0, open(out2).read()[-3000:]
    text = open(out2).read()
    assert faults.resumed_at(text) == 1
    stopped = _stopped_at(text, signal.SIGTERM)
    assert 2 <= stopped <= MAX_ITER - 4, text[-3000:]  # by the signal, with room for step 4
    assert checkpoint.find_last(w).endswith(checkpoint.checkpoint_name(stopped))
    assert faults.tmp_leftovers(w) == []  # the killed write's temporary file is gone

    # 3. SIGINT (Ctrl-C) during the next step, in-process: saved after that step.
    from mrcnn.modeling import mask_rcnn

    orig, sent = mask_rcnn.MaskRCNN.forward, []

    def interrupted(self, *a, **k):
        if self.training and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        return orig(self, *a, **k)

    mask_rcnn.MaskRCNN.forward = interrupted
    try:
        train.train(faults.tiny_config(root, MAX_ITER), w, CPU)
    finally:
        mask_rcnn.MaskRCNN.forward = orig
    assert checkpoint.load(checkpoint.find_last(w))["iteration"] == stopped + 1

    # 4. SIGKILL at a random moment of a steady step (data, forward, backward, optimizer or
    # checkpoint write): within one step's time of a step's log line.
    out4 = str(tmp_path / "4.out")
    p = faults.spawn(argv, out4, env)
    k = stopped + 2
    assert faults.wait_for_line(p, out4, rf"iter: {k} ", 300, poll_s=0.002)
    t0 = time.monotonic()
    assert faults.wait_for_line(p, out4, rf"iter: {k + 1} ", 300, poll_s=0.002)
    delay = random.Random().uniform(0, time.monotonic() - t0)
    time.sleep(delay)
    p.kill()
    assert p.wait(300) == -signal.SIGKILL, (delay, open(out4).read()[-3000:])
    state = faults.inspect_workdir(w)
    # Checkpoint k was saved before step k + 1 began; k + 1 may be cut (file or pointer).
    assert state["pointer_ok"] and k <= state["iteration"] <= MAX_ITER, (delay, state)

    # 5. Resume to the end.
    train.train(faults.tiny_config(root, MAX_ITER), w, CPU)
    _assert_same(checkpoint.load(checkpoint.find_last(w)), ref[MAX_ITER])


def test_truncated_newest_checkpoint_resumes_from_the_previous(reference, root, tmp_path, caplog):
    src, ref = reference
    w = str(tmp_path / "w")
    _copy_until(src, w, MAX_ITER)
    newest = os.path.join(w, checkpoint.checkpoint_name(MAX_ITER))
    data = open(newest, "rb").read()
    with open(newest, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    with caplog.at_level(logging.INFO):
        train.train(faults.tiny_config(root, MAX_ITER), w, CPU)
    assert f"{newest} is unreadable" in caplog.text
    previous = os.path.join(w, checkpoint.checkpoint_name(MAX_ITER - 1))
    assert f"resumed from {previous} at iteration {MAX_ITER - 1}" in caplog.text
    _assert_same(checkpoint.load(newest), ref[MAX_ITER])


def test_disk_full_while_saving_keeps_the_last_good_checkpoint(
    reference, root, tmp_path, caplog, monkeypatch
):
    src, ref = reference
    w = str(tmp_path / "w")
    _copy_until(src, w, 1)
    real_save = torch.save

    def full(obj, f, *a, **k):
        f.write(b"\0" * 1000)  # a part got written before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    # One line for the user (a CheckpointError main.py prints, exit 2) naming the step, the
    # cause and the last good checkpoint.
    with pytest.raises(checkpoint.CheckpointError, match="No space left") as e:
        train.train(faults.tiny_config(root, 3), w, CPU)
    assert "could not save the checkpoint of iteration 2" in str(e.value)
    assert f"last good checkpoint is {os.path.join(w, checkpoint.checkpoint_name(1))}" in (
        str(e.value)
    )
    assert checkpoint.list_checkpoints(w) == [checkpoint.checkpoint_name(1)]
    assert faults.tmp_leftovers(w) == []
    monkeypatch.setattr(torch, "save", real_save)
    # Space freed: the rerun resumes from 1 and matches the uninterrupted run.
    train.train(faults.tiny_config(root, 2), w, CPU)
    _assert_same(checkpoint.load(checkpoint.find_last(w)), ref[2])


def _nan_at(monkeypatch, steps: set[int], value: float = float("nan")) -> None:
    """Makes loss_mask non-finite in the training forward passes numbered `steps` (0-based)."""
    from mrcnn.modeling import mask_rcnn

    orig, calls = mask_rcnn.MaskRCNN.forward, [0]

    def forward(self, images, targets=None):
        out = orig(self, images, targets)
        if self.training:
            if calls[0] in steps:
                out["loss_mask"] = out["loss_mask"] * value
            calls[0] += 1
        return out

    monkeypatch.setattr(mask_rcnn.MaskRCNN, "forward", forward)


def _adam_steps(state: dict) -> int:
    return int(next(iter(state["optimizer"]["state"].values()))["step"])


def test_non_finite_loss_skips_up_to_max_bad_steps_then_names_iteration_and_checkpoint(
    root, tmp_path, monkeypatch, caplog
):
    # One bad step allowed and one bad step: skipped (no update), the run finishes.
    _nan_at(monkeypatch, {1})
    c = faults.tiny_config(root, 3)
    c.solver.max_bad_steps = 1
    with caplog.at_level(logging.WARNING):
        train.train(c, str(tmp_path / "a"), CPU)
    assert "iteration 1: non-finite ['loss', 'loss_mask'], step skipped (1/1)" in caplog.text
    last = checkpoint.load(checkpoint.find_last(str(tmp_path / "a")))
    assert last["iteration"] == 3 and _adam_steps(last) == 2  # the bad step did not update
    assert all(torch.isfinite(v).all() for v in last["model"].values())

    # A second bad step is one too many: the error names the iteration, the loss, its value
    # and the last good checkpoint (the skipped step 1 -> 2 wrote none).
    _nan_at(monkeypatch, {1, 2})
    w = str(tmp_path / "b")
    with pytest.raises(train.NonFiniteLossError) as e:
        train.train(c, w, CPU)
    msg = str(e.value)
    assert "non-finite loss at iteration 2" in msg and "loss_mask" in msg and "nan" in msg
    assert f"last good checkpoint: {os.path.join(w, checkpoint.checkpoint_name(1))}" in msg


def test_float16_grad_scaler_skips_an_inf_step_by_itself(root, tmp_path, monkeypatch):
    """dtype=float16 enables the GradScaler, which skips a step whose gradients are not finite
    and halves its scale, without max_bad_steps. float16 autocast itself runs on CPU but ~10x
    slower than float32 and overflows on its own at the initial scale (both steps of a 2-step
    run skipped), which would hide the injected fault: autocast is replaced by a no-op so only
    the scaler path runs, and exactly one step gets an inf loss."""
    monkeypatch.setattr(train, "autocast", lambda device, dtype, **_: contextlib.nullcontext())
    _nan_at(monkeypatch, {1}, float("inf"))
    c = faults.tiny_config(root, 3)
    c.dtype = "float16"
    assert c.solver.max_bad_steps == 0
    w = str(tmp_path / "f16")
    train.train(c, w, CPU)
    last = checkpoint.load(checkpoint.find_last(w))
    assert last["iteration"] == 3
    assert last["scaler"]["scale"] == 65536.0 / 2  # one backoff: the inf step
    assert _adam_steps(last) == 2  # ... which did not update the weights
    assert all(torch.isfinite(v).all() for v in last["model"].values())
