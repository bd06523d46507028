"""Mask head (RoI features -> per-class mask logits) and its inference selection."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mrcnn.modeling.norm import ConvNorm


class MaskHead(nn.Module):
    """FPN mask head: num_conv x (3x3 conv(conv_dim) [+ GN] + ReLU) on [R, C, S, S].

    Submodules `convs.{i}` (ConvNorm). torchvision's MaskRCNNHeads is num_conv=4, no norm.
    """

    def __init__(
        self, in_channels: int, num_conv: int, conv_dim: int, norm: str = "", gn_groups: int = 32
    ):
        super().__init__()
        dims = [in_channels] + [conv_dim] * num_conv
        self.convs = nn.ModuleList(
            ConvNorm(a, b, 3, norm=norm, gn_groups=gn_groups, relu=True)
            for a, b in zip(dims[:-1], dims[1:])
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.out_channels = dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        return x


class MaskPredictor(nn.Module):
    """2x2 stride-2 transposed conv + ReLU, then 1x1 conv to per-class logits:
    [R, C, S, S] -> [R, num_classes, 2S, 2S]. Submodules `deconv`, `logits`."""

    def __init__(self, in_channels: int, dim: int, num_classes: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, dim, 2, stride=2)
        self.logits = nn.Conv2d(dim, num_classes, 1)
        for m in (self.deconv, self.logits):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(F.relu_(self.deconv(x)))


def select_class_masks(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """Probabilities of each RoI's own class: logits [R, K, M, M], labels int64 [R]
    -> float [R, 1, M, M] (sigmoid; torchvision's maskrcnn_inference)."""
    idx = torch.arange(labels.shape[0], device=labels.device)
    return mask_logits[idx, labels][:, None].sigmoid()
