"""Atomic file writes: a temporary file in the same folder, flushed, then renamed over the target.

A reader (or a process that resumes after a crash, a full disk or `kill -9`) therefore sees the
old file or the new one, never half of one. Every file the project writes into a workdir that
someone relies on (checkpoints, `last_checkpoint`, results json, metrics, drawings) goes through
here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from typing import IO, Any

# The temporary names `atomic_write` uses: ".<final name>.<random>.tmp".
TMP_NAME = re.compile(r"^\.(?P<final>.+)\.[^.]+\.tmp$")


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True,
                 durable: bool = False) -> None:
    """Calls `write(f)` on a temporary file beside `path`, then renames it over `path`.

    durable: also fsync the file and its folder, so the rename survives a power loss (for
    checkpoints; results files only need to be whole)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    # mkstemp makes the file private (0600); results in a shared workdir get what open() would
    # give them: 0666 less the umask.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        with contextlib.suppress(OSError):
            dfd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str, obj: Any, **dump_kwargs) -> None:
    """`json.dump(obj)` into `path`, atomically."""
    atomic_write(path, lambda f: json.dump(obj, f, **dump_kwargs), binary=False)


def write_text_atomic(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)
