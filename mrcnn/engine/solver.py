"""Optimizer and learning-rate schedule.

The schedule is a pure function of the optimizer step (`lr_factor`); the training loop writes
`base_lr * group["lr_scale"] * lr_factor(step)` into every parameter group before each step.
"""

from __future__ import annotations

import bisect

import ml_collections
import torch
from torch import nn

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm2d,
)


def lr_factor(step: int, solver: ml_collections.ConfigDict) -> float:
    """Multiplier of `solver.base_lr` at optimizer step `step` (0-based).

    Linear (or constant) warmup from `warmup_factor` over `warmup_iters` steps, then multiplied by
    `gamma` at each of `steps` - maskrcnn-benchmark's WarmupMultiStepLR, as a function.
    """
    factor = solver.gamma ** bisect.bisect_right(list(solver.steps), step)
    if step < solver.warmup_iters:
        if solver.warmup_method == "constant":
            warm = solver.warmup_factor
        elif solver.warmup_method == "linear":
            alpha = step / solver.warmup_iters
            warm = solver.warmup_factor * (1 - alpha) + alpha
        else:
            raise ValueError(f"config.solver.warmup_method={solver.warmup_method!r}: linear|constant")
        factor *= warm
    return factor


def param_groups(model: nn.Module, solver: ml_collections.ConfigDict) -> list[dict]:
    """Groups trainable parameters by (lr scale, weight decay).

    Biases get `bias_lr_factor` x lr and `weight_decay_bias` (the seed's recipe: 2x lr, no decay);
    normalization weights get `weight_decay_norm`. Frozen parameters are left out.
    """
    norm_params = set()
    for module in model.modules():
        if isinstance(module, _NORM_TYPES):
            for p in module.parameters(recurse=False):
                norm_params.add(id(p))
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in norm_params:
            key = (1.0, solver.weight_decay_norm)
        elif name.endswith(".bias"):
            key = (solver.bias_lr_factor, solver.weight_decay_bias)
        else:
            key = (1.0, solver.weight_decay)
        groups.setdefault(key, []).append(p)
    return [
        {"params": ps, "lr_scale": scale, "weight_decay": wd, "lr": solver.base_lr * scale}
        for (scale, wd), ps in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, solver: ml_collections.ConfigDict) -> torch.optim.Optimizer:
    groups = param_groups(model, solver)
    if not groups:
        raise ValueError("the model has no trainable parameters (check model.backbone.freeze_at)")
    # fused: one kernel per parameter group, and the step takes a device-side skip flag
    # (`optimizer.found_inf`, the GradScaler's mechanism), so the training loop can leave out a
    # non-finite step without reading the loss on the host (engine/train.py).
    if solver.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=solver.base_lr, momentum=solver.momentum, fused=True)
    if solver.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=solver.base_lr, fused=True)
    raise ValueError(f"config.solver.optimizer={solver.optimizer!r}: sgd | adamw")


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Writes the scheduled lr into each group; returns the lr of an unscaled group."""
    for g in optimizer.param_groups:
        g["lr"] = base_lr * g.get("lr_scale", 1.0) * factor
    return base_lr * factor


def align_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Gives every gradient and every per-parameter state tensor its parameter's strides.

    The fused kernels walk a parameter, its gradient and its state as flat arrays, so a state
    in another memory format than its parameter is silently updated element-for-wrong-element
    (measured: a channels_last weight with a contiguous moment differs by 0.15 after one AdamW
    step). A state loaded from a checkpoint keeps the layout it was saved with, which need not
    be the parameter's (the fast paths make conv weights channels_last). Only metadata is
    compared when all is aligned, so this is cheap enough to run before every step.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None and p.grad.stride() != p.stride():
                p.grad = _like(p, p.grad)
            state = optimizer.state.get(p)
            if not state:
                continue
            for k, v in state.items():
                if (isinstance(v, torch.Tensor) and v.shape == p.shape
                        and v.stride() != p.stride()):
                    state[k] = _like(p, v)


def mark_updated(optimizer: torch.optim.Optimizer) -> None:
    """Bumps the version counter of every parameter after a fused step.

    The fused kernels update the weights in place without bumping their version counters (the
    foreach ones do); anything keyed on `Tensor._version` would keep using stale weights
    (the oneDNN path's prepacked weights are: without this bump, a run resumed at step 2
    differed from an uninterrupted one by 1.6e-3 at step 3; with it they are bit-identical)."""
    torch.autograd.graph.increment_version(
        [p for g in optimizer.param_groups for p in g["params"]])


def _like(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(p, dtype=v.dtype).copy_(v)
