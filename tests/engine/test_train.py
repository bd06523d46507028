"""The training loop: exact resume, checkpoints on disk, logging, non-finite loss handling."""

import json
import os

import pytest
import torch

from configs import shapes
from mrcnn.engine import checkpoint, train


def tiny_config(tmp_path, **solver):
    c = shapes.get_config("tiny")
    c.data.root = str(tmp_path / "data")
    c.solver.ims_per_batch = 2
    c.solver.max_iter = 4
    c.solver.steps = (3,)
    c.solver.warmup_iters = 2
    c.solver.checkpoint_period = 2
    c.log_period = 1
    for k, v in solver.items():
        c.solver[k] = v
    return c


def _weights(workdir, it):
    state = checkpoint.load(os.path.join(workdir, checkpoint.checkpoint_name(it)))
    return state["model"], state["optimizer"]


def test_stopped_and_resumed_run_ends_with_identical_weights(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train.train(tiny_config(tmp_path), a, torch.device("cpu"))
    # b: stop after 2 steps (a shorter max_iter), then resume in the same workdir to 4.
    train.train(tiny_config(tmp_path, max_iter=2), b, torch.device("cpu"))
    assert checkpoint.find_last(b).endswith("model_0000002.pth")
    train.train(tiny_config(tmp_path), b, torch.device("cpu"))
    wa, oa = _weights(a, 4)
    wb, ob = _weights(b, 4)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    for sa, sb in zip(oa["state"].values(), ob["state"].values()):
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
    lines = [json.loads(x) for x in open(os.path.join(b, "metrics.jsonl"))]
    assert [x["iter"] for x in lines if "train/loss" in x][-2:] == [3, 4]


def test_accumulation_matches_the_schedule_and_checkpoints(tmp_path):
    w = str(tmp_path / "acc")
    c = tiny_config(tmp_path, accumulate_steps=2, max_iter=2, checkpoint_period=1)
    train.train(c, w, torch.device("cpu"))
    assert checkpoint.list_checkpoints(w)[-1] == "model_0000002.pth"
    state = checkpoint.load(checkpoint.find_last(w))
    assert state["iteration"] == 2
    assert json.loads(state["config"])["solver"]["accumulate_steps"] == 2


def test_non_finite_loss_stops_with_a_message(tmp_path, monkeypatch):
    from mrcnn.modeling import mask_rcnn

    orig = mask_rcnn.MaskRCNN.forward

    def nan_forward(self, images, targets=None):
        out = orig(self, images, targets)
        if self.training:
            out["loss_mask"] = out["loss_mask"] * float("nan")
        return out

    monkeypatch.setattr(mask_rcnn.MaskRCNN, "forward", nan_forward)
    with pytest.raises(train.NonFiniteLossError, match="loss_mask") as e:
        train.train(tiny_config(tmp_path), str(tmp_path / "nan"), torch.device("cpu"))
    assert "iteration 0" in str(e.value) and "last good checkpoint" in str(e.value)
    # max_bad_steps lets the run skip that many bad steps and finish
    c = tiny_config(tmp_path, max_bad_steps=10, max_iter=2)
    train.train(c, str(tmp_path / "nan2"), torch.device("cpu"))
