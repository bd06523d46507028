"""ResNet bodies (18/34/50/101/152) with a choice of normalization, freezing and stride placement.

Layout and names: `stem` (7x7/2 conv, norm, ReLU, 3x3/2 max-pool), then stages `res2`..`res5`
(strides 4, 8, 16, 32), each an `nn.Sequential` of blocks with `conv1/norm1, conv2/norm2,
[conv3/norm3], shortcut`. `width` is the stem width; stage `i` (0-based) has bottleneck width
`width * 2**i` and output width `width * 2**i * expansion`. With width=64 this is torchvision's
ResNet exactly (stride in the 3x3 conv), so its weights map one to one.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from mrcnn.modeling.norm import ConvNorm, make_norm

# depth -> (block type, blocks per stage res2..res5)
_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")


def _norm(name: str, channels: int, gn_groups: int) -> nn.Module:
    n = make_norm(name, channels, gn_groups)
    if n is None:
        raise ValueError("the ResNet body needs a normalization (FrozenBN, BN, SyncBN or GN)")
    return n


def _shortcut(c_in: int, c_out: int, stride: int, norm: str, gn_groups: int) -> nn.Module | None:
    if stride == 1 and c_in == c_out:
        return None
    return ConvNorm(c_in, c_out, 1, stride=stride, norm=norm, gn_groups=gn_groups)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). The stride is in the first conv."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, norm: str, gn_groups: int, **_):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, width, gn_groups)
        self.conv2 = nn.Conv2d(width, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, c_out, gn_groups)
        self.shortcut = _shortcut(c_in, c_out, stride, norm, gn_groups)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu_(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        identity = x if self.shortcut is None else self.shortcut(x)
        # y is this block's own fresh tensor and no norm's backward needs its output.
        return F.relu_(y.add_(identity))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (ResNet-50+). `stride_in_1x1` puts the stride in the first 1x1 conv
    (MSRA/caffe2 weights) instead of the 3x3 (torchvision)."""

    expansion = 4

    def __init__(
        self,
        c_in: int,
        width: int,
        stride: int,
        norm: str,
        gn_groups: int,
        stride_in_1x1: bool = False,
    ):
        super().__init__()
        c_out = width * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(c_in, width, 1, stride=s1, bias=False)
        self.norm1 = _norm(norm, width, gn_groups)
        self.conv2 = nn.Conv2d(width, width, 3, stride=s3, padding=1, bias=False)
        self.norm2 = _norm(norm, width, gn_groups)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.norm3 = _norm(norm, c_out, gn_groups)
        self.shortcut = _shortcut(c_in, c_out, stride, norm, gn_groups)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu_(self.norm1(self.conv1(x)))
        y = F.relu_(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        identity = x if self.shortcut is None else self.shortcut(x)
        # y is this block's own fresh tensor and no norm's backward needs its output.
        return F.relu_(y.add_(identity))


def make_stage(
    block: type,
    num_blocks: int,
    c_in: int,
    width: int,
    stride: int,
    norm: str,
    gn_groups: int,
    stride_in_1x1: bool,
) -> nn.Sequential:
    """One ResNet stage: the first block changes stride/width, the others keep them."""
    blocks = []
    for i in range(num_blocks):
        blocks.append(
            block(
                c_in if i == 0 else width * block.expansion,
                width,
                stride if i == 0 else 1,
                norm,
                gn_groups,
                stride_in_1x1=stride_in_1x1,
            )
        )
    return nn.Sequential(*blocks)


class Stem(nn.Module):
    def __init__(self, width: int, norm: str, gn_groups: int):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.norm = _norm(norm, width, gn_groups)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.norm(self.conv(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def resnet_spec(depth: int) -> tuple[type, tuple[int, ...]]:
    """(block class, blocks per stage res2..res5) of a ResNet depth."""
    if depth not in _SPECS:
        raise ValueError(f"ResNet depth {depth}: expected one of {sorted(_SPECS)}")
    kind, blocks = _SPECS[depth]
    return (BasicBlock if kind == "basic" else Bottleneck), blocks


def stage_out_channels(depth: int, width: int) -> tuple[int, ...]:
    """Output channels of res2..res5."""
    block, _ = resnet_spec(depth)
    return tuple(width * 2**i * block.expansion for i in range(4))


class ResNet(nn.Module):
    """ResNet body returning the outputs of stages res2..res{last} (strides 4..).

    x: [B, 3, H, W] float -> list of [B, C_i, ceil(H / s_i), ceil(W / s_i)].
    num_stages=3 stops after res4 (the C4 model runs res5 in the RoI head).
    freeze_at: 0 nothing; 1 the stem; k >= 2 the stem and res2..res{k}: their parameters get
    requires_grad=False and their norms become FrozenBN (BN statistics stop updating).
    """

    def __init__(
        self,
        depth: int = 50,
        width: int = 64,
        norm: str = "FrozenBN",
        gn_groups: int = 32,
        freeze_at: int = 2,
        stride_in_1x1: bool = False,
        num_stages: int = 4,
    ):
        super().__init__()
        block, blocks = resnet_spec(depth)
        frozen_norm = "FrozenBN" if norm in ("BN", "SyncBN") else norm
        self.stem = Stem(width, frozen_norm if freeze_at >= 1 else norm, gn_groups)
        c_in = width
        self.stage_names = STAGE_NAMES[:num_stages]
        self.out_channels = []
        for i, name in enumerate(self.stage_names):
            stage_norm = frozen_norm if freeze_at >= i + 2 else norm
            stage = make_stage(
                block, blocks[i], c_in, width * 2**i, 1 if i == 0 else 2, stage_norm, gn_groups,
                stride_in_1x1,
            )
            self.add_module(name, stage)
            c_in = width * 2**i * block.expansion
            self.out_channels.append(c_in)
        init_resnet(self)
        freeze(self.stem, freeze_at >= 1)
        for i, name in enumerate(self.stage_names):
            freeze(getattr(self, name), freeze_at >= i + 2)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outs.append(x)
        return outs


def init_resnet(module: nn.Module) -> None:
    """torchvision's ResNet init: He-normal (fan_out) convs, unit-scale norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def freeze(module: nn.Module, frozen: bool = True) -> None:
    """Stops gradients into `module`'s parameters."""
    if frozen:
        for p in module.parameters():
            p.requires_grad_(False)
