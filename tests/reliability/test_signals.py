"""Stop signals as launchers send them: SIGTERM to the whole process group (`timeout`, SLURM,
`docker stop`, Kubernetes), DataLoader workers included, on one process and under torchrun
(launch/train.sh). Training saves a checkpoint at the current step and exits 0; a rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _wait_for_steps(workdir: str, proc, n: int, timeout: float = 300) -> None:
    """Until metrics.jsonl shows step >= n (the loader workers are up by then)."""
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()[0][-3000:]}")
        if os.path.exists(path):
            with open(path) as f:
                iters = [json.loads(line)["iter"] for line in f if line.strip()]
            if iters and max(iters) >= n:
                return
        time.sleep(0.2)
    raise AssertionError("training did not reach the step in time")


def _saved(workdir: str) -> list[int]:
    return sorted(int(n[6:13]) for n in os.listdir(workdir) if n.startswith("model_"))


def _train_args(workdir, data, *extra):
    return ["--config=configs/shapes.py:tiny", f"--workdir={workdir}",
            f"--config.data.root={data}", "--config.solver.max_iter=100000",
            "--config.solver.checkpoint_period=0", "--config.eval.final=False",
            "--config.log_period=1", "--config.data.num_workers=1", *extra]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_signal_to_the_process_group_saves_and_exits_0(tmp_path, sig):
    w, data = str(tmp_path / "w"), str(tmp_path / "data")
    proc = subprocess.Popen([sys.executable, "main.py", "--mode=train", *_train_args(w, data)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own group, as a launcher's job
    try:
        _wait_for_steps(w, proc, 3)
        os.killpg(proc.pid, sig)  # the main process and its loader worker alike
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "killed by signal" not in out and "Traceback" not in out, out[-3000:]
    saved = _saved(w)
    assert len(saved) == 1 and saved[0] >= 3, (saved, out[-2000:])
    assert f"stopped by signal {int(sig)} at iteration {saved[0]}" in out


def test_sigterm_to_torchrun_process_group_saves_once_and_exits_0(tmp_path):
    w, data = str(tmp_path / "w"), str(tmp_path / "data")
    # The virtualenv running this test (launch/train.sh defaults to <repo>/.venv).
    env = dict(os.environ, MRCNN_SETUP="0", OMP_NUM_THREADS="1",
               MRCNN_VENV=os.environ.get("MRCNN_VENV", sys.prefix))
    cmd = ["bash", "launch/train.sh", "2", "configs/shapes.py:tiny",
           *_train_args(w, data, "--config.solver.ims_per_batch=4")[1:]]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_steps(w, proc, 2, timeout=400)
        os.killpg(proc.pid, signal.SIGTERM)  # launcher, torchrun, both ranks, their workers
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    saved = _saved(w)
    assert len(saved) == 1 and saved[0] >= 2, (saved, out[-2000:])
