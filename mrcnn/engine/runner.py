"""Sets up a run (device, process group, logging, workdir, resolved config) and dispatches."""

from __future__ import annotations

import json
import logging
import os
import sys

import ml_collections
import torch

from mrcnn import dist
from mrcnn.fileio import write_text_atomic

log = logging.getLogger("mrcnn")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "your input is wrong" (reported in one line), not "our code is wrong"."""
    from mrcnn import config_check, weights
    from mrcnn.engine import checkpoint, evaluate, workdir_lock

    # FileNotFoundError: a path the user gave (weights, images, annotations) does not exist.
    errors: list[type[BaseException]] = [
        config_check.ConfigError, weights.WeightsError, checkpoint.CheckpointError,
        workdir_lock.WorkdirLockedError, evaluate.ValSetError, FileNotFoundError]
    try:
        from mrcnn import data

        errors += [data.AnnotationError, data.ImageError, data.DatasetMissingError]
    except ImportError:
        pass
    return tuple(errors)


class UserError(Exception):
    """Wraps a user-input error so main.py can print it without a traceback."""


def setup_logging(workdir: str | None) -> None:
    """Rank 0 logs INFO to the console and to `workdir/log.txt`; other ranks log warnings only."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    level = logging.INFO if dist.is_main() else logging.WARNING
    root.setLevel(level)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    root.addHandler(console)
    if workdir and dist.is_main():
        os.makedirs(workdir, exist_ok=True)
        fh = logging.FileHandler(os.path.join(workdir, "log.txt"))
        fh.setFormatter(fmt)
        root.addHandler(fh)


def resolve_device(config: ml_collections.ConfigDict) -> torch.device:
    want = config.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("config.device='cuda' but no CUDA device is available")
    if want == "cuda":
        return torch.device("cuda", dist.local_rank())
    return torch.device(want)


def check_workdir(workdir: str, mode: str) -> None:
    """The workdir must be a folder this process can write into (every mode writes its config
    and log there); a file in its place or a read-only folder is one line, before any work."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir={workdir!r} is a file, not a folder")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"--workdir={workdir!r} cannot be created: {e.strerror}") from e
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UserError(f"--workdir={workdir!r} is not writable by this user ({mode} writes its "
                        "config, log and results there)")


def config_file_name(mode: str) -> str:
    """`config.json` is the training's resolved config (what the checkpoints were trained
    with); the other modes write theirs beside it, so an eval or analyze never overwrites it."""
    return "config.json" if mode == "train" else f"config.{mode}.json"


def write_config(config: ml_collections.ConfigDict, workdir: str, mode: str = "train") -> None:
    if not dist.is_main():
        return
    write_text_atomic(os.path.join(workdir, config_file_name(mode)),
                      config.to_json_best_effort(indent=2, sort_keys=True))


def run(mode: str, config: ml_collections.ConfigDict, workdir: str) -> None:
    from mrcnn import config_check

    try:
        config_check.validate(config, world_size=int(os.environ.get("WORLD_SIZE", "1")),
                              mode=mode)
        device = resolve_device(config)
    except (config_check.ConfigError, ValueError) as e:
        raise UserError(str(e)) from e
    check_workdir(workdir, mode)
    dist.init_from_env(device.type)
    setup_logging(workdir)
    write_config(config, workdir, mode)
    log.info("mode=%s workdir=%s device=%s world_size=%d", mode, workdir, device, dist.world_size())
    try:
        _dispatch(mode, config, workdir, device)
    except _user_errors() as e:
        dist.shutdown(wait_for_others=False)
        raise UserError(f"{type(e).__name__}: {e}") from e
    except BaseException:
        dist.shutdown(wait_for_others=False)
        raise
    dist.shutdown()


def _dispatch(mode: str, config: ml_collections.ConfigDict, workdir: str, device) -> None:
    """Calls the mode's function; nothing else happens here. Each mode's module is imported only
    when it runs, so a mode does not pay for the others' imports."""
    if mode == "train":
        from mrcnn.engine.train import train

        train(config, workdir, device)
    elif mode == "eval":
        from mrcnn.engine.evaluate import evaluate_checkpoint

        metrics = evaluate_checkpoint(config, workdir, device)
        if dist.is_main():
            log.info("metrics: %s", json.dumps(metrics))
    elif mode == "predict":
        from mrcnn.engine.predict import predict

        predict(config, workdir, device)
    elif mode == "bench":
        from mrcnn.engine.bench import bench

        bench(config, workdir, device)
    elif mode == "export":
        from mrcnn import export

        export.run(config, workdir, device)
    elif mode == "browse":
        from mrcnn.analysis import browse

        browse.run(config, workdir, device)
    elif mode == "analyze":
        from mrcnn.analysis import analyze

        analyze.run(config, workdir, device)
    else:
        raise ValueError(f"unknown mode {mode!r}")
