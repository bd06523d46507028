"""Feature Pyramid Network: P2..P5 from res2..res5 by a top-down path, P6 by subsampling P5.

The arithmetic is torchvision's FeaturePyramidNetwork + LastLevelMaxPool (nearest upsampling to
the lateral's size, lateral + top-down in that order, P6 = every second pixel of P5), so its
weights give identical features. P6 is sliced (`P5[..., ::2, ::2]`), not pooled as torchvision's
`max_pool2d(P5, 1, stride 2)`: the same values (a max over one element) and size ceil(P5 / 2),
but torch 2.11's pooling shape function tests the remainder of (P5 - 1) / 2, which under
torch.export became a guard on the canvas's parity in 32 px cells (the exported program then
rejected 3 of 4 image sizes).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from mrcnn.modeling.backbone import ResNet
from mrcnn.modeling.norm import ConvNorm


class FPN(nn.Module):
    """in: res2..res5 features; out: [P2, P3, P4, P5, P6], each with `out_channels` channels.

    Submodules: `lateral.{i}` (1x1) and `output.{i}` (3x3), i = 0 for res2 .. 3 for res5.
    norm: "" (convs with bias), or any norm.make_norm name (then the convs have no bias):
    "BN" / "SyncBN" is torchvision's maskrcnn_resnet50_fpn_v2 FPN, "GN" maskrcnn-benchmark's.
    """

    def __init__(
        self, in_channels: Sequence[int], out_channels: int, norm: str = "", gn_groups: int = 32
    ):
        super().__init__()
        self.lateral = nn.ModuleList(
            ConvNorm(c, out_channels, 1, norm=norm, gn_groups=gn_groups) for c in in_channels
        )
        self.output = nn.ModuleList(
            ConvNorm(out_channels, out_channels, 3, norm=norm, gn_groups=gn_groups)
            for _ in in_channels
        )
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # torchvision's FPN init (caffe2's "XavierFill").
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        last = self.lateral[-1](feats[-1])
        outs = [self.output[-1](last)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.lateral[i](feats[i])
            top_down = F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            last = lateral.add_(top_down)  # the lateral conv's fresh output
            outs.insert(0, self.output[i](last))
        outs.append(outs[-1][..., ::2, ::2].clone())  # a tensor of its own, not a view of P5
        return outs


class Backbone(nn.Module):
    """ResNet body (+ FPN). x: [B, 3, H, W] -> list of feature maps, finest first.

    FPN: [P2, P3, P4, P5, P6] (strides 4..64, `out_channels` each). C4 (fpn None): [res4]
    (stride 16, the body stops after res4).
    """

    def __init__(self, body: ResNet, fpn: FPN | None):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels if fpn is not None else body.out_channels[-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.body(x)
        if self.fpn is None:
            return feats[-1:]
        return self.fpn(feats)
