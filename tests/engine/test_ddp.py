"""Distributed training and evaluation with real processes: gloo on the CPU, through the launch
scripts (launch/train.sh, launch/multinode.sh, launch/slurm.sbatch with stand-in SLURM commands).

- One optimizer step of 2 ranks (each accumulating 2 micro-batches) equals one step of a single
  process that accumulates the same global batch.
- Distributed evaluation sees every image once and gives the single-process AP.
- SIGUSR1 to some ranks only: all ranks stop at the same step, one checkpoint, exit 0.
- A SLURM job warned by SIGUSR1 checkpoints, requeues itself, and the requeued job resumes to
  the very weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from configs import shapes
from mrcnn.engine import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = 0

# A model and dataset small enough for a few steps in seconds on two CPU processes.
TINY = {
    "seed": SEED,
    "data.shapes.num_train": 8,
    "data.shapes.num_val": 2,
    "data.shapes.image_size": 64,
    "input.min_size_train": (64,),
    "input.max_size_train": 64,
    "input.min_size_test": 64,
    "input.max_size_test": 64,
    "model.backbone.width": 16,
    "model.backbone.fpn_channels": 32,
    "model.box_head.fc_dim": 64,
    "model.mask_head.conv_dim": 16,
    "model.mask_head.num_conv": 1,
    "model.backbone.norm": "GN",  # per-image statistics: BN would differ between 2 x 2 and 1 x 4
    "model.backbone.gn_groups": 8,
    "perf.channels_last": False,
    "solver.checkpoint_period": 0,
    "eval.final": False,
    "log_period": 1,
    "deterministic": True,
}

# Sampling that takes every candidate anchor and RoI, so that the losses do not depend on which
# random stream a micro-batch draws from; plain SGD without warmup or decay, so that one step is
# -lr x the mean gradient.
ALL_CANDIDATES_SGD = {
    "model.rpn.batch_size_per_image": 100000,
    "model.rpn.positive_fraction": 1.0,
    "model.roi_heads.batch_size_per_image": 100000,
    "model.roi_heads.positive_fraction": 1.0,
    "solver.optimizer": "sgd",
    "solver.base_lr": 0.05,
    "solver.weight_decay": 0.0,
    "solver.warmup_iters": 0,
    "solver.clip_grad_norm": 0.0,
    "solver.steps": (100,),
    "solver.max_iter": 1,
}


def _flag(value) -> str:
    return repr(tuple(value)) if isinstance(value, tuple) else str(value)


def _args(overrides: dict) -> list[str]:
    return [f"--config.{k}={_flag(v)}" for k, v in overrides.items()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The tiny shapes dataset, generated once here rather than raced for by the ranks."""
    from mrcnn.data import ensure_shapes_dataset

    root = str(tmp_path_factory.mktemp("ddp_data"))
    old = os.environ.get("MRCNN_DATA")
    os.environ["MRCNN_DATA"] = root  # what the runs get (it wins over config.data.root)
    try:
        ensure_shapes_dataset(_config(TINY))
    finally:
        if old is None:
            del os.environ["MRCNN_DATA"]
        else:
            os.environ["MRCNN_DATA"] = old
    return root


def _env(data_root: str, **extra) -> dict:
    env = dict(os.environ)
    env.update(MRCNN_DATA=data_root, MRCNN_SETUP="0", MRCNN_VENV=sys.prefix,
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _config(overrides: dict):
    c = shapes.get_config("runlocal")
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _run(cmd: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd}: {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _train_sh(nproc: int, workdir: str, overrides: dict, env: dict):
    return _run(["bash", "launch/train.sh", str(nproc), "configs/shapes.py:runlocal",
                 f"--workdir={workdir}", *_args(overrides)], env)


def _logged_losses(workdir: str) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]


def _final_weights(workdir: str, it: int) -> dict[str, torch.Tensor]:
    return checkpoint.load(os.path.join(workdir, checkpoint.checkpoint_name(it)))["model"]


def test_two_ranks_step_like_one_process_on_the_same_global_batch(tmp_path, data_root,
                                                                 monkeypatch):
    """4 images per step: 2 ranks x 2 accumulated micro-batches (the second synchronizes, the
    first runs under no_sync) against one process accumulating all 4 one after another."""
    from mrcnn.engine import train
    from mrcnn.modeling import build_model

    over = {**TINY, **ALL_CANDIDATES_SGD, "solver.ims_per_batch": 4}
    ddp, one = str(tmp_path / "ddp"), str(tmp_path / "one")
    out = _train_sh(2, ddp, {**over, "solver.accumulate_steps": 2}, _env(data_root))
    assert "4 images/step on 2 ranks, accumulate 2" in out.stdout
    monkeypatch.setenv("MRCNN_DATA", data_root)
    train.train(_config({**over, "solver.accumulate_steps": 4}), one, torch.device("cpu"))

    train.seed_everything(SEED)  # what every rank builds before the first step
    w0 = build_model(_config(over).model).state_dict()
    w_ddp, w_one = _final_weights(ddp, 1), _final_weights(one, 1)
    assert w_ddp.keys() == w_one.keys() == w0.keys()
    moved = 0
    for k in w0:
        d_ddp, d_one = (w_ddp[k] - w0[k]).double(), (w_one[k] - w0[k]).double()
        if d_one.norm() > 0:
            moved += 1
        # Equal up to the order of float sums (DDP's bucketed all-reduce vs accumulation).
        assert (d_ddp - d_one).norm() <= 1e-4 * d_one.norm() + 1e-8, k
    assert moved > 0.9 * sum(1 for k in w0 if w0[k].is_floating_point())
    # The logged loss is the mean over ranks, i.e. the single process's loss.
    assert _logged_losses(ddp) == pytest.approx(_logged_losses(one), rel=1e-5)


def test_syncbn_on_cpu_ranks_is_refused_with_the_key(monkeypatch):
    from mrcnn import dist
    from mrcnn.build import build
    from mrcnn.config_check import ConfigError

    c = _config({**TINY, "model.backbone.norm": "SyncBN"})
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match="model.backbone.norm='SyncBN'.*CUDA"):
        build(c, torch.device("cpu"), "train")
    monkeypatch.setattr(dist, "world_size", lambda: 1)  # one process: plain BatchNorm, fine
    model = build(c, torch.device("cpu"), "train").model
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())


# ----------------------------------------------------------------------------- evaluation


def _noisy(gt, seed: int):
    """Imperfect detections of the ground truth: jittered boxes, random scores, a few misses."""
    from mrcnn.structures import Detections

    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, d in gt.items():
        keep = torch.rand(len(d), generator=g) > 0.15
        n = int(keep.sum())
        out[i] = Detections(d.boxes[keep] + torch.randn(n, 4, generator=g) * 0.75,
                            torch.rand(n, generator=g), d.labels[keep], d.masks[keep])
    return out


def _eval_config(img_dir: str, ann_file: str):
    from configs import r50_fpn_1x

    c = r50_fpn_1x.get_config()
    c.device = "cpu"
    c.model.num_classes = 4
    c.test.ims_per_batch = 4  # global: 2 per rank with 2 ranks
    c.eval.vis_images = 0
    c.data.num_workers = 0
    c.data.on_bad_image = "fail"  # a missing image is an error, not a silent miss
    c.data.val.img_dir, c.data.val.ann_file = img_dir, ann_file
    # The model's categories come from the training set: here the same file.
    c.data.train.img_dir, c.data.train.ann_file = img_dir, ann_file
    c.input.min_size_test = c.input.max_size_test = 64  # no resize: see ColourOracle
    return c


def _evaluate_tiny(img_dir: str, ann_file: str, out_dir: str | None) -> dict:
    from eval_fixtures import ColourOracle, gt_detections, identity_postprocess, load_coco

    from mrcnn.engine import evaluate as evaluation
    from mrcnn.engine import inference

    coco = load_coco(ann_file)
    gt = {i: gt_detections(coco, i) for i in coco.getImgIds()}
    c = _eval_config(img_dir, ann_file)
    model = ColourOracle(_noisy(gt, seed=1), c.input.pixel_mean, c.input.pixel_std)
    original = inference._to_original
    inference._to_original = identity_postprocess  # the oracle's detections are final
    try:
        metrics = evaluation.evaluate(model, c, torch.device("cpu"), output_dir=out_dir)
    finally:
        inference._to_original = original
    return {"metrics": metrics, "calls": model.calls}


def _eval_worker(rank: int, world: int, port: int, img_dir: str, ann_file: str, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from mrcnn import dist

    dist.init_from_env("cpu")
    try:
        result = _evaluate_tiny(img_dir, ann_file, out if rank == 0 else None)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.shutdown()


def test_distributed_eval_sees_each_image_once_and_matches_one_process(tmp_path):
    from eval_fixtures import make_tiny_coco

    tiny = make_tiny_coco(str(tmp_path / "coco"), seed=1, num_images=5)
    one_dir, ddp_dir = str(tmp_path / "one"), str(tmp_path / "ddp")
    one = _evaluate_tiny(tiny.img_dir, tiny.ann_file, one_dir)
    assert 0.1 < one["metrics"]["bbox"]["AP"] < 0.99  # imperfect: the comparison means something

    world = 2  # 5 images: shards of 2 and 3, the second ending in a partial batch
    os.makedirs(ddp_dir)
    torch.multiprocessing.spawn(_eval_worker, nprocs=world, join=True,
                                args=(world, _free_port(), tiny.img_dir, tiny.ann_file, ddp_dir))
    ranks = [json.load(open(os.path.join(ddp_dir, f"rank{r}.json"))) for r in range(world)]
    assert [r["calls"] for r in ranks] == [1, 2]  # batches of 2 images: [2], [2, 1]
    for r in ranks:  # every rank returns rank 0's numbers
        assert r["metrics"] == one["metrics"]
    for name in ("bbox.json", "segm.json"):  # the same records, each image's once
        gathered = json.load(open(os.path.join(ddp_dir, name)))
        records = json.load(open(os.path.join(one_dir, name)))
        key = lambda r: (r["image_id"], r["score"], r["category_id"])  # noqa: E731
        assert sorted(gathered, key=key) == sorted(records, key=key)
        assert {r["image_id"] for r in gathered} == set(tiny.image_ids)


# ----------------------------------------------------------------------------- signals


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def _rank_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    except OSError:
        return None
    return int(env[b"RANK"]) if b"RANK" in env else None


def _wait_for_training(proc: subprocess.Popen, workdir: str, timeout: float = 120) -> None:
    """Until rank 0 has logged a step (every rank is then inside the loop, handlers set)."""
    path = os.path.join(workdir, "metrics.jsonl")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, f"exited early:\n{proc.communicate()[0][-3000:]}"
        if os.path.exists(path) and any('"train/loss"' in x for x in open(path)):
            return
        time.sleep(0.05)
    raise TimeoutError("training did not start")


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session this test started
        out, _ = proc.communicate()
        raise AssertionError(f"still running after {timeout} s:\n{out[-3000:]}") from None
    return proc.returncode, out


SIGNAL_RUN = {**TINY, "solver.max_iter": 300, "solver.steps": (1000,),
              "solver.ims_per_batch": 2}


def test_sigusr1_to_one_rank_stops_all_ranks_at_the_same_step(tmp_path, data_root):
    """The signal reaches rank 1 and torchrun, not rank 0: rank 0 learns it from the step's
    all-reduce, both save nothing but rank 0's one checkpoint, torchrun survives, all exit 0."""
    wd = str(tmp_path / "run")
    env = _env(data_root, NNODES="1", NODE_RANK="0", NPROC_PER_NODE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    proc = subprocess.Popen(
        ["bash", "launch/multinode.sh", "configs/shapes.py:runlocal", f"--workdir={wd}",
         *_args(SIGNAL_RUN)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _wait_for_training(proc, wd)
    workers = {r: p for p in _children(proc.pid) if (r := _rank_of(p)) is not None}
    assert set(workers) == {0, 1}
    os.kill(workers[1], signal.SIGUSR1)
    os.kill(proc.pid, signal.SIGUSR1)  # torchrun (bash exec'd into it) must ignore it
    rc, out = _finish(proc)
    assert rc == 0, out[-3000:]
    stops = re.findall(r"stopped by (signal 10|a signal on another rank) at iteration (\d+)", out)
    assert sorted(s for s, _ in stops) == ["a signal on another rank", "signal 10"], out[-3000:]
    it = int(stops[0][1])
    assert stops[1][1] == str(it) and 0 < it < SIGNAL_RUN["solver.max_iter"]
    assert checkpoint.list_checkpoints(wd) == [checkpoint.checkpoint_name(it)]
    assert checkpoint.find_last(wd).endswith(checkpoint.checkpoint_name(it))


FAKE_SLURM = {
    # srun: drop its options, run the command as the job step (records the step's pid).
    "srun": 'while [[ "$1" == -* ]]; do shift; done\necho $$ > "$FAKE_SLURM/step.pid"\n'
            'export SLURM_NODEID=0\nexec "$@"\n',
    "scontrol": 'case "$1" in\n  show) echo 127.0.0.1 ;;\n'
                '  requeue) echo "$2" >> "$FAKE_SLURM/requeued" ;;\nesac\n',
    # scancel --signal=SIG JOB: every process of the step (torchrun and its workers).
    "scancel": 'sig=${1#--signal=}\n'
               'tree() { kill -s "$sig" "$1" 2>/dev/null || true\n'
               '  for c in $(cat /proc/$1/task/*/children 2>/dev/null); do tree "$c"; done; }\n'
               'tree "$(cat "$FAKE_SLURM/step.pid")"\n',
}


def test_slurm_warning_checkpoints_requeues_and_resumes_exactly(tmp_path, data_root):
    """launch/slurm.sbatch under stand-in srun / scontrol / scancel: SIGUSR1 to the batch script
    (SLURM's `--signal=B:USR1@120`) stops both ranks at one step and requeues the job; the
    requeued job resumes there and ends with the weights of an uninterrupted run."""
    fake = tmp_path / "slurm"
    (fake / "bin").mkdir(parents=True)
    for name, body in FAKE_SLURM.items():
        path = fake / "bin" / name
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(0o755)
    env = _env(data_root, FAKE_SLURM=str(fake), PATH=f"{fake / 'bin'}:{os.environ['PATH']}",
               SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="localhost", SLURM_JOB_NUM_NODES="1",
               SLURM_SUBMIT_DIR=ROOT, NPROC_PER_NODE="2", MASTER_PORT=str(_free_port()))
    wd = str(tmp_path / "job")
    cmd = ["bash", "launch/slurm.sbatch", "configs/shapes.py:runlocal", f"--workdir={wd}",
           *_args(SIGNAL_RUN)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _wait_for_training(proc, wd)
    os.kill(proc.pid, signal.SIGUSR1)
    rc, out = _finish(proc)
    assert rc == 0, out[-3000:]
    assert (fake / "requeued").read_text().split() == ["4242"]
    stop = checkpoint.find_last(wd)
    it = checkpoint.load(stop)["iteration"]
    assert 0 < it < SIGNAL_RUN["solver.max_iter"]
    assert checkpoint.list_checkpoints(wd) == [checkpoint.checkpoint_name(it)]

    # The requeued job: same command, resumes at `it`; stop it 2 steps later this time.
    end = {**SIGNAL_RUN, "solver.max_iter": it + 2}
    env["MASTER_PORT"] = str(_free_port())
    _run(cmd[:4] + _args(end), env)
    assert (fake / "requeued").read_text().split() == ["4242"]  # finished: no second requeue
    log = open(os.path.join(wd, "log.txt")).read()
    assert f"resumed from {stop} at iteration {it}" in log

    # Reference: the same 2-rank run without interruption.
    ref = str(tmp_path / "ref")
    _train_sh(2, ref, end, _env(data_root))
    w_job, w_ref = _final_weights(wd, it + 2), _final_weights(ref, it + 2)
    for k in w_ref:
        torch.testing.assert_close(w_job[k], w_ref[k], rtol=0, atol=0, msg=k)
