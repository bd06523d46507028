"""Atomic checkpoints: pointer after file, pruning, corrupt-file fallback, failure leaves the last."""

import os

import pytest
import torch

from mrcnn.engine import checkpoint


def _state(i):
    return {"model": {"w": torch.full((3,), float(i))}, "iteration": i}


def test_save_points_and_prunes(tmp_path):
    for i in (10, 20, 30, 40):
        checkpoint.save(str(tmp_path), _state(i), i, keep=2)
    assert checkpoint.list_checkpoints(str(tmp_path)) == ["model_0000030.pth", "model_0000040.pth"]
    assert checkpoint.find_last(str(tmp_path)).endswith("model_0000040.pth")
    state, path = checkpoint.load_latest(str(tmp_path))
    assert state["iteration"] == 40
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_truncated_last_checkpoint_falls_back_to_previous(tmp_path, caplog):
    checkpoint.save(str(tmp_path), _state(1), 1)
    path = checkpoint.save(str(tmp_path), _state(2), 2)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    state, used = checkpoint.load_latest(str(tmp_path))
    assert state["iteration"] == 1 and used.endswith("model_0000001.pth")
    assert "unreadable" in caplog.text


def test_failed_write_leaves_last_good(tmp_path, monkeypatch):
    checkpoint.save(str(tmp_path), _state(1), 1)

    def boom(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        checkpoint.save(str(tmp_path), _state(2), 2)
    monkeypatch.undo()
    assert checkpoint.list_checkpoints(str(tmp_path)) == ["model_0000001.pth"]
    assert checkpoint.find_last(str(tmp_path)).endswith("model_0000001.pth")
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert checkpoint.load_latest(str(tmp_path))[0]["iteration"] == 1


def test_pointer_cannot_escape_the_workdir(tmp_path):
    (tmp_path / "last_checkpoint").write_text("../../etc/passwd\n")
    assert checkpoint.find_last(str(tmp_path)) is None


def test_load_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = tmp_path / "model_0000001.pth"
    torch.save({"x": Evil()}, p)
    with pytest.raises(Exception):
        checkpoint.load(str(p))
