"""Checkpoints: one dict per file, written atomically, with a `last_checkpoint` pointer.

A checkpoint file is written to a temporary name in the workdir, flushed to disk, then renamed
over its final name; `last_checkpoint` (a text file holding the file name) is replaced the same way
only after that. A crash or a full disk at any moment therefore leaves the previous checkpoint and
pointer intact. Loading always uses `weights_only=True`: a checkpoint can hold tensors, numbers,
strings and containers of them, never code; and it checks the CRC32 of every record first, which
torch.load does not, so a damaged file is detected instead of resumed from.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from typing import Any

import torch

from mrcnn.fileio import atomic_write

log = logging.getLogger(__name__)

POINTER = "last_checkpoint"
_NAME = re.compile(r"^model_(\d{7,})\.pth$")
# What `mrcnn.fileio.atomic_write` leaves behind when the process dies mid-write (kill -9, power loss).
_STALE_TMP = re.compile(r"^\.(model_\d{7,}\.pth|last_checkpoint)\..+\.tmp$")


class CheckpointError(RuntimeError):
    """The workdir holds checkpoints but none can be read: starting again from iteration 0
    would silently throw the run away (and, with pruning, eventually its checkpoints)."""


def checkpoint_name(iteration: int) -> str:
    return f"model_{iteration:07d}.pth"


def list_checkpoints(workdir: str) -> list[str]:
    """Checkpoint file names in the workdir, oldest first."""
    if not os.path.isdir(workdir):
        return []
    names = [n for n in os.listdir(workdir) if _NAME.match(n)]
    return sorted(names, key=lambda n: int(_NAME.match(n).group(1)))


def save(workdir: str, state: dict[str, Any], iteration: int, keep: int = 3) -> str:
    """Writes `state` as model_<iteration>.pth, points `last_checkpoint` at it, prunes old ones.

    Returns the path. On any error (disk full, ...) the previous checkpoint and pointer remain.
    """
    os.makedirs(workdir, exist_ok=True)
    _remove_stale_temporaries(workdir)
    name = checkpoint_name(iteration)
    path = os.path.join(workdir, name)
    atomic_write(path, lambda f: torch.save(state, f), durable=True)
    atomic_write(os.path.join(workdir, POINTER), lambda f: f.write(name.encode() + b"\n"),
                 durable=True)
    if keep > 0:
        for old in list_checkpoints(workdir)[:-keep]:
            if old != name:
                try:
                    os.unlink(os.path.join(workdir, old))
                except OSError as e:
                    log.warning("could not remove old checkpoint %s: %s", old, e)
    return path


def _remove_stale_temporaries(workdir: str) -> None:
    """Deletes temporary files of saves that never finished. One process (rank 0) saves into a
    workdir, so any that exist when it starts a save belong to a dead process; left alone, each
    kill during a save would leave a checkpoint-sized file behind."""
    for n in os.listdir(workdir):
        if _STALE_TMP.match(n):
            try:
                os.unlink(os.path.join(workdir, n))
                log.info("removed %s, left by a save that did not finish", n)
            except OSError:
                pass


def find_last(workdir: str) -> str | None:
    """Path named by `<workdir>/last_checkpoint`, or None when there is no pointer or file."""
    pointer = os.path.join(workdir, POINTER)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, errors="replace") as f:  # a damaged pointer is ignored, not a crash
        name = f.read().strip()
    if not _NAME.match(name):  # the pointer only ever names a file in the workdir
        log.warning("%s holds %r, not a checkpoint name; ignoring it", pointer, name)
        return None
    path = os.path.join(workdir, name)
    return path if os.path.isfile(path) else None


def verify(path: str) -> None:
    """Raises zipfile.BadZipFile when a record of the checkpoint does not match its CRC32.

    torch.load reads the zip records without checking their checksums, so a flipped bit in a
    tensor would load as a silently different weight. Records saved without a CRC
    (`torch.serialization.set_crc32_options(False)` stores 0) cannot be checked; files that are
    not zips (the legacy format, or too damaged to be recognised) are left to torch.load.
    """
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if info.CRC == 0:
                continue
            with z.open(info) as f:  # reading to the end checks the CRC
                while f.read(1 << 24):
                    pass


def load(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's dict, checked (see `verify`) and unpickled with weights_only=True."""
    verify(path)
    return torch.load(path, map_location=map_location, weights_only=True)


def load_latest(workdir: str, map_location: str | torch.device = "cpu") -> tuple[dict, str] | None:
    """The newest checkpoint that loads, as (state, path); None when the workdir has none.

    Starts at `last_checkpoint`; a truncated or corrupt file is reported and the next older one
    is tried, so a damaged last file costs `checkpoint_period` iterations, not the run. Raises
    CheckpointError when checkpoints exist but none loads.
    """
    candidates = list_checkpoints(workdir)[::-1]
    last = find_last(workdir)
    if last is not None:
        candidates.remove(os.path.basename(last))
        candidates.insert(0, os.path.basename(last))
    failed = []
    for name in candidates:
        path = os.path.join(workdir, name)
        try:
            return load(path, map_location), path
        except Exception as e:  # truncated zip, bad CRC, refused pickle, unreadable disk, ...
            log.warning("checkpoint %s is unreadable (%s: %s); trying an older one",
                        path, type(e).__name__, e)
            failed.append(f"{name} ({type(e).__name__})")
    if failed:
        raise CheckpointError(
            f"none of the {len(failed)} checkpoints in {workdir} can be read: "
            f"{', '.join(failed)}. Starting over would discard the run; if that is what you "
            "want, move them (and last_checkpoint) out of the workdir")
    return None


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any], path: str) -> None:
    """Restores the optimizer state of a checkpoint; one that does not fit the configured
    optimizer (another `solver.optimizer`, other parameter groups) is a CheckpointError that says
    so, not a KeyError from inside torch."""
    if "optimizer" not in state:
        raise CheckpointError(
            f"{path} holds no optimizer state (a weights-only file?): it cannot be resumed from; "
            "pass it as --config.init.weights=PATH in a new --workdir instead")
    try:
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # a state of another optimizer lacks its keys
            for key in optimizer.defaults:
                group[key]
        optimizer.state_dict()
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path}: its optimizer state does not fit the configured optimizer "
            f"(config.solver.optimizer or the parameter groups changed since it was written: "
            f"{type(e).__name__}: {e}); resume with the config it was trained with, or start a new "
            "--workdir with --config.init.weights pointing at it") from e


TRAINING_KEYS = ("model", "optimizer", "iteration")


def check_training_state(state: Any, path: str) -> None:
    """A file a training can resume from: a dict with the model, optimizer and iteration. A bare
    state dict (weights only) in the workdir is a CheckpointError saying what to do with it."""
    missing = [k for k in TRAINING_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint (no {', '.join(missing)}: a weights-only "
            "file?): a run cannot resume from it; move it out of the workdir and pass it as "
            "--config.init.weights=PATH to start a run from these weights")


def disk_note(workdir: str) -> str:
    """", whose disk is full (N bytes free)" when the workdir's filesystem is (nearly) full."""
    import shutil

    try:
        free = shutil.disk_usage(workdir).free
    except OSError:
        return ""
    return f", whose disk is full ({free} bytes free)" if free < 64 * 2**20 else ""
