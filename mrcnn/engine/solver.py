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
    if solver.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=solver.base_lr, momentum=solver.momentum)
    if solver.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=solver.base_lr)
    raise ValueError(f"config.solver.optimizer={solver.optimizer!r}: sgd | adamw")


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Writes the scheduled lr into each group; returns the lr of an unscaled group."""
    for g in optimizer.param_groups:
        g["lr"] = base_lr * g.get("lr_scale", 1.0) * factor
    return base_lr * factor
