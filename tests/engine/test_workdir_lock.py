"""One training per workdir: a second training fails at once naming the holder; a lock left by a
dead process is taken over; eval and predict do not take it."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from mrcnn.engine.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLockedError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _hold(workdir: str, ready, release) -> None:
    with WorkdirLock(workdir):
        ready.set()
        release.wait(60)


def test_second_holder_fails_at_once_naming_the_first(tmp_path):
    w = str(tmp_path / "w")
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(w, ready, release))
    p.start()
    try:
        assert ready.wait(30)
        t0 = time.monotonic()
        with pytest.raises(WorkdirLockedError, match=rf"in use by another training \(pid {p.pid} "):
            with WorkdirLock(w):
                pass
        assert time.monotonic() - t0 < 5  # at once, not after a wait
    finally:
        release.set()
        p.join(30)
    with WorkdirLock(w):  # released: free again
        pass


def test_a_lock_left_by_a_killed_process_is_stale_and_taken_over(tmp_path, caplog):
    w = str(tmp_path / "w")
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(w, ready, release))
    p.start()
    assert ready.wait(30)
    os.kill(p.pid, signal.SIGKILL)  # no clean release: the file still names it
    p.join(30)
    with open(os.path.join(w, LOCK_NAME)) as f:
        assert json.load(f)["pid"] == p.pid
    caplog.set_level("INFO")
    with WorkdirLock(w):
        with open(os.path.join(w, LOCK_NAME)) as f:
            assert json.load(f)["pid"] == os.getpid()
    assert f"previous holder (pid {p.pid}" in caplog.text


def test_two_trainings_through_main(tmp_path):
    """The second `main.py --mode=train` on a busy workdir exits 2 in one line; the first one
    finishes with its checkpoint and a metrics.jsonl written once."""
    w = str(tmp_path / "w")
    args = [sys.executable, "main.py", "--config=configs/shapes.py:tiny", "--mode=train",
            f"--workdir={w}", f"--config.data.root={tmp_path / 'data'}",
            "--config.solver.max_iter=30", "--config.eval.final=False",
            "--config.data.num_workers=0"]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if os.path.exists(os.path.join(w, "metrics.jsonl")):
            break
        time.sleep(0.2)
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240)
    out = second.stdout + second.stderr
    first_out = first.communicate(timeout=600)[0]
    assert first.returncode == 0, first_out[-3000:]
    if "in use by another training" not in out:
        pytest.skip("the first training ended before the second started (slow machine)")
    assert second.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert os.path.isfile(os.path.join(w, "model_0000030.pth"))
    with open(os.path.join(w, "metrics.jsonl")) as f:
        records = [(r["iter"], tuple(sorted(r))) for r in map(json.loads, f)]
    assert records and len(records) == len(set(records))  # every line once
