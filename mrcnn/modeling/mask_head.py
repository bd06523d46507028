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
    [R, C, S, S] -> [R, num_classes, 2S, 2S]. Submodules `deconv`, `logits`.

    With `labels` (int64 [R]) only each RoI's own class is computed: -> [R, 2S, 2S]. Training
    and inference only ever read that channel (the loss of the gt class, the mask of the
    predicted class), so the other num_classes - 1 channels of the 1x1 conv are skipped.
    """

    def __init__(self, in_channels: int, dim: int, num_classes: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, dim, 2, stride=2)
        self.logits = nn.Conv2d(dim, num_classes, 1)
        for m in (self.deconv, self.logits):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = F.relu_(self.deconv(x))
        if labels is None:
            return self.logits(h)
        w = self.logits.weight[labels, :, 0, 0].to(h.dtype)  # [R, D]
        b = self.logits.bias[labels].to(h.dtype)  # [R]
        return torch.einsum("rdhw,rd->rhw", h, w) + b[:, None, None]


def select_class(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """Each RoI's own class channel: logits [R, K, M, M], labels int64 [R] -> [R, M, M]."""
    idx = torch.arange(labels.shape[0], device=labels.device)
    return mask_logits[idx, labels]
