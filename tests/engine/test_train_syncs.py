"""Host syncs of the training loop itself (not only the model's step), counted on the CPU with
the stand-in device of tests/sync_counter.py: the loop reads the losses once per log period.

Before (per step): the model's 2 (tests/modeling/test_host_syncs.py) + 1 in the loop (the
losses and the stop vote read with `.tolist()` every step, to decide on the host whether to
skip a non-finite step). After: the model's 2 + one read per log line (the pending losses of
the period, engine/step_losses.py); the skip is decided on the device (the fused optimizer's
`found_inf`)."""

from __future__ import annotations

import types

import pytest
import torch
from sync_counter import DEVICE, SyncCounter, to_device, to_device_batch

from configs import shapes
from mrcnn.engine import solver, train

STEPS, LOG_PERIOD = 7, 3
MODEL_BUDGET = 2  # per training step, tests/modeling/test_host_syncs.py


def _config(tmp_path):
    c = shapes.get_config("tiny")
    c.data.root = str(tmp_path / "data")
    c.solver.ims_per_batch = 2
    c.solver.max_iter = STEPS
    c.solver.checkpoint_period = 0
    c.eval.final = False
    c.eval.period = 0
    c.log_period = LOG_PERIOD
    return c


def _trainer_on_stand_in_device(tmp_path, monkeypatch, nan_at=()):
    """A Trainer whose model, optimizer and batches live on the stand-in device."""
    from torch.optim import optimizer as optim_mod

    supported = optim_mod._get_fused_kernels_supported_devices()
    # The fused kernels run on the CPU values inside; "meta" only has to pass the device check.
    monkeypatch.setattr(optim_mod, "_get_fused_kernels_supported_devices",
                        lambda: [*supported, DEVICE.type])
    t = train.Trainer(_config(tmp_path), str(tmp_path / "run"), torch.device("cpu"))
    loader, cpu_batches = t._batches()
    batches = []
    for i in range(STEPS):
        b = next(cpu_batches)
        images, *targets = to_device_batch(b.images, *b.targets)
        if i in nan_at:
            with SyncCounter():
                images.tensor = images.tensor * float("nan")
        batches.append(types.SimpleNamespace(images=images, targets=targets))
    to_device(t.model)
    t.optimizer = solver.build_optimizer(t.model, t.s)
    t.train_model, t.device = t.model, DEVICE
    monkeypatch.setattr(t, "_batches", lambda: (loader, iter(batches)))
    monkeypatch.setattr(t, "save", lambda it: None)  # a checkpoint copies to the host anyway
    return t


def _loop_syncs(counter: SyncCounter) -> list[str]:
    return [where for _, where in counter.events if where.startswith("engine/")]


def test_training_loop_reads_the_losses_once_per_log_period(tmp_path, monkeypatch):
    t = _trainer_on_stand_in_device(tmp_path, monkeypatch)
    with SyncCounter() as c:
        t.run()
    loop = _loop_syncs(c)
    logged = [1, 3, 6, 7]  # the first step, every LOG_PERIOD, the last
    assert len(loop) == len(logged), loop
    assert all("step_losses.py" in w for w in loop), loop
    model = c.total - len(loop)
    assert model <= MODEL_BUDGET * STEPS, c.by_file()
    assert not c.mismatches, c.mismatches
    # Per step: the model's syncs plus 4 reads over 7 steps (before: one read every step).
    assert c.total <= MODEL_BUDGET * STEPS + len(logged), c.by_file()


def test_non_finite_step_is_skipped_on_the_device_and_reported_at_the_next_read(
        tmp_path, monkeypatch, caplog):
    t = _trainer_on_stand_in_device(tmp_path, monkeypatch, nan_at={4})
    t.s.max_bad_steps = 1
    before, after = {}, {}
    step, apply = t.step, t.apply_gradients

    def snapshot_step(it, batches):
        if it == 4:
            before.update({n: p.inner.clone() for n, p in t.model.named_parameters()})
        return step(it, batches)

    def snapshot_apply(result):
        apply(result)
        if not after and before:  # right after step 4's optimizer step
            after.update({n: p.inner.clone() for n, p in t.model.named_parameters()})

    monkeypatch.setattr(t, "step", snapshot_step)
    monkeypatch.setattr(t, "apply_gradients", snapshot_apply)
    with SyncCounter() as c:
        t.run()
    assert "iteration 4: non-finite" in caplog.text and "(1/1)" in caplog.text
    assert len(_loop_syncs(c)) == 4  # still only the reads of the log lines
    # Step 4 changed nothing; the steps after it trained on.
    assert t.bad_steps == 1
    assert all(torch.equal(before[n], after[n]) for n in before)
    after_skip = {n: p.inner for n, p in t.model.named_parameters()}
    assert any(not torch.equal(before[n], after_skip[n]) for n in before)
    assert all(torch.isfinite(v).all() for v in after_skip.values())


def test_too_many_non_finite_steps_raise_at_the_next_read(tmp_path, monkeypatch):
    t = _trainer_on_stand_in_device(tmp_path, monkeypatch, nan_at={1})
    with pytest.raises(train.NonFiniteLossError, match="non-finite loss at iteration 1"):
        with SyncCounter():
            t.run()
