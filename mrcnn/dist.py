"""torch.distributed helpers: set-up from torchrun's environment, rank queries, gathers.

Every function works without a process group (one process) so callers never branch on it.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as td


def init_from_env(device_type: str) -> None:
    """Joins the process group torchrun describes (WORLD_SIZE > 1); a no-op otherwise.

    NCCL on GPUs, gloo on CPUs. Each rank uses the GPU numbered by LOCAL_RANK.
    """
    if td.is_available() and not td.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank())
        td.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))


def is_dist() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if is_dist() else 0


def world_size() -> int:
    return td.get_world_size() if is_dist() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        td.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list without a process group)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    td.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_dist():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if not is_dist():
        return t
    t = t.clone()
    td.all_reduce(t)
    return t / world_size()


def shutdown(wait_for_others: bool = True) -> None:
    """Leaves the process group, by default together: a rank that destroys it while another is
    still in a collective can abort the other (gloo: "terminate called without an active
    exception"). After an error, leave at once (`wait_for_others=False`): the others may never
    arrive."""
    if is_dist():
        try:
            if wait_for_others:
                td.barrier()
        finally:
            td.destroy_process_group()
