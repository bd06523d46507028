"""Box heads (RoI features -> a vector per RoI) and the box predictor (class logits, deltas)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from mrcnn.modeling.backbone import init_resnet, make_stage, resnet_spec
from mrcnn.modeling.norm import ConvNorm


class MLPHead(nn.Module):
    """FPN box head: flatten [R, C, S, S] -> num_fc x (Linear(fc_dim) + ReLU) -> [R, fc_dim].

    Submodules `fc.{i}`; torchvision's TwoMLPHead (fc6, fc7) is the case num_fc=2.
    """

    def __init__(self, in_channels: int, resolution: int, num_fc: int, fc_dim: int):
        super().__init__()
        dims = [in_channels * resolution * resolution] + [fc_dim] * num_fc
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        for m in self.fc:
            # caffe2's XavierFill, as detectron2's FastRCNNConvFCHead.
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)
        self.out_channels = dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for fc in self.fc:
            x = F.relu_(fc(x))
        return x


class ConvFCHead(nn.Module):
    """FPN box head with convolutions: num_conv x (3x3 conv(conv_dim) [+ norm] + ReLU) on
    [R, C, S, S], flatten, then num_fc x (Linear(fc_dim) + ReLU) -> [R, fc_dim].

    Submodules `convs.{i}` (ConvNorm) and `fc.{j}`. torchvision's maskrcnn_resnet50_fpn_v2 box
    head (FastRCNNConvFCHead) is num_conv=4, conv_dim=256, num_fc=1, fc_dim=1024, norm="BN";
    detectron2's "4conv1fc" the same with GN.
    """

    def __init__(
        self,
        in_channels: int,
        resolution: int,
        num_conv: int,
        conv_dim: int,
        num_fc: int,
        fc_dim: int,
        norm: str = "",
        gn_groups: int = 32,
    ):
        super().__init__()
        if num_conv < 1 or num_fc < 1:
            raise ValueError(f"ConvFCHead needs >= 1 conv and >= 1 fc, got {num_conv}, {num_fc}")
        dims = [in_channels] + [conv_dim] * num_conv
        self.convs = nn.ModuleList(
            ConvNorm(a, b, 3, norm=norm, gn_groups=gn_groups, relu=True)
            for a, b in zip(dims[:-1], dims[1:])
        )
        fc_dims = [conv_dim * resolution * resolution] + [fc_dim] * num_fc
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(fc_dims[:-1], fc_dims[1:]))
        for m in self.convs.modules():
            if isinstance(m, nn.Conv2d):
                # torchvision's FastRCNNConvFCHead (He normal, fan_out), detectron2's MSRAFill.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.fc:
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)
        self.out_channels = fc_dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        x = x.flatten(1)
        for fc in self.fc:
            x = F.relu_(fc(x))
        return x


def build_fpn_box_head(in_channels: int, box_cfg, gn_groups: int = 32) -> nn.Module:
    """The FPN box head `config.model.box_head` describes: MLPHead without convolutions (v1,
    torchvision's TwoMLPHead), ConvFCHead with `num_conv` > 0 (v2)."""
    res = box_cfg.pooler_resolution
    if box_cfg.num_conv == 0:
        return MLPHead(in_channels, res, box_cfg.num_fc, box_cfg.fc_dim)
    return ConvFCHead(
        in_channels, res, box_cfg.num_conv, box_cfg.conv_dim, box_cfg.num_fc, box_cfg.fc_dim,
        box_cfg.norm, gn_groups,
    )


class Res5Head(nn.Module):
    """C4 box head: ResNet's res5 stage on pooled res4 features, then global average pooling.

    forward_features: [R, C4, S, S] -> [R, C5, S/2, S/2] (the C4 mask branch reuses it);
    forward: -> [R, C5]. `res5` is named like the body's stages, so ImageNet weights of res5
    map onto it.
    """

    def __init__(
        self, depth: int, width: int, norm: str, gn_groups: int, stride_in_1x1: bool
    ):
        super().__init__()
        block, blocks = resnet_spec(depth)
        c_in = width * 4 * block.expansion
        self.res5 = make_stage(
            block, blocks[3], c_in, width * 8, 2, norm, gn_groups, stride_in_1x1
        )
        init_resnet(self)
        self.out_channels = width * 8 * block.expansion

    def forward_features(self, x: Tensor) -> Tensor:
        return self.res5(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))


class BoxPredictor(nn.Module):
    """[R, D] -> (class logits [R, num_classes], deltas [R, num_classes * 4]), class-specific
    regression (column block k holds class k's deltas; block 0, background, is unused)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)
