"""One training per workdir: an advisory lock held by the training's rank 0 for its whole run.

Two trainings in one workdir would interleave `metrics.jsonl`, prune each other's checkpoints and
delete each other's temporary files. The lock is `fcntl.flock` on `<workdir>/train.lock`, which
the kernel releases when the holder dies, however it dies (kill -9 too), so a lock file left
behind is stale by construction and is taken over with a note of who held it. The file holds
the holder's host, pid and start time, for the message the next training prints. Eval and
predict do not take it: they may run beside a training.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"


class WorkdirLockedError(RuntimeError):
    """Another training holds the workdir."""


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        return json.loads(raw.decode() or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _describe(h: dict) -> str:
    if not h:
        return "unknown holder"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("since", 0)))
    return f"pid {h.get('pid')} on host {h.get('host')}, since {since}"


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir for one training, or raises
    WorkdirLockedError naming the holder."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_holder(fd))
            os.close(fd)
            raise WorkdirLockedError(
                f"{os.path.dirname(self.path)} is in use by another training ({holder}); "
                "wait for it, stop it, or use another --workdir (eval and predict may run "
                "beside it)") from None
        except OSError as e:  # a filesystem without flock: say so rather than run unguarded
            os.close(fd)
            raise WorkdirLockedError(
                f"cannot lock {self.path} ({e}): this filesystem does not support flock; use a "
                "--workdir on one that does") from e
        previous = _holder(fd)
        if previous:
            log.info("workdir lock: the previous holder (%s) is gone; taking it over",
                     _describe(previous))
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # released cleanly: nothing stale to report next time
        os.close(self.fd)  # closing releases the flock
        self.fd = None
