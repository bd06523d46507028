"""Normalization layers chosen by name, and the conv + norm (+ ReLU) block every head uses.

Names (config `model.backbone.norm`, `fpn_norm`, `mask_head.norm`):
- "FrozenBN": a fixed per-channel affine `x * weight + bias`. BatchNorm statistics are folded
  into it when weights are loaded, so it costs one multiply-add and has no trainable state.
- "BN": `nn.BatchNorm2d`; "SyncBN": `nn.SyncBatchNorm` (a plain BatchNorm outside a process
  group, so a single-process run works unchanged).
- "GN": `nn.GroupNorm(gn_groups, C)`.
- "": no normalization (the conv then has a bias).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# BatchNorm's default epsilon: the one used when BN statistics are folded without a stated eps.
BN_EPS = 1e-5


def fold_bn(
    weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor, eps: float = BN_EPS
) -> tuple[Tensor, Tensor]:
    """BatchNorm (in eval mode) as one affine map: returns (scale, shift), each [C].

    The operations are those of torchvision's FrozenBatchNorm2d.forward, in the same order, so
    `x * scale + shift` is bit-identical to torchvision's frozen BN with the same eps.
    """
    scale = weight * (running_var + eps).rsqrt()
    shift = bias - running_mean * scale
    return scale, shift


class FrozenBatchNorm2d(nn.Module):
    """y = x * weight + bias per channel; `weight`, `bias` are buffers (never trained).

    x: [N, C, H, W] any float dtype (the buffers are cast to it). Loading a state dict that holds
    BatchNorm keys (`running_mean`, `running_var`) folds them with `eps` (BatchNorm's 1e-5), so a
    checkpoint of a BN model loads into a FrozenBN model.
    inplace=True overwrites x (the model's norms follow a conv whose output nothing else reads):
    same values, half the memory traffic of `x * w + b`, which matters on a CPU.
    """

    def __init__(self, num_features: int, eps: float = BN_EPS, inplace: bool = False):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.inplace = inplace
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        state_dict.pop(prefix + "num_batches_tracked", None)
        rm, rv = prefix + "running_mean", prefix + "running_var"
        if rm in state_dict and rv in state_dict:
            w = state_dict.get(prefix + "weight", torch.ones(self.num_features))
            b = state_dict.get(prefix + "bias", torch.zeros(self.num_features))
            scale, shift = fold_bn(w, b, state_dict.pop(rm), state_dict.pop(rv), self.eps)
            state_dict[prefix + "weight"], state_dict[prefix + "bias"] = scale, shift
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype).reshape(1, -1, 1, 1)
        b = self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        if self.inplace:
            return x.mul_(w).add_(b)
        return x * w + b

    def extra_repr(self) -> str:
        return f"{self.num_features}"


def make_norm(name: str, channels: int, gn_groups: int = 32) -> nn.Module | None:
    """The normalization layer called `name` for `channels` channels; None for "".

    Meant to follow a conv: a FrozenBN is built in-place (it overwrites the conv's output).
    """
    if name == "":
        return None
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels, inplace=True)
    if name == "BN":
        return nn.BatchNorm2d(channels)
    if name == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if name == "GN":
        if channels % gn_groups:
            raise ValueError(f"GroupNorm: {channels} channels do not split into {gn_groups} groups")
        return nn.GroupNorm(gn_groups, channels)
    raise ValueError(f"unknown norm {name!r}: expected FrozenBN, BN, SyncBN, GN or ''")


class ConvNorm(nn.Module):
    """conv -> norm (optional) -> ReLU (optional). The conv has a bias only without a norm.

    Submodules are named `conv` and `norm` (state-dict keys `conv.weight`, `norm.weight`, ...).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        norm: str = "",
        gn_groups: int = 32,
        relu: bool = False,
    ):
        super().__init__()
        n = make_norm(norm, out_channels, gn_groups)
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=n is None,
        )
        self.norm = n if n is not None else nn.Identity()
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.conv(x))
        return torch.relu_(x) if self.relu else x
