"""The v2 architecture keys, part by part against torchvision's own modules (the RPN head with
2 convs, the conv box head, BatchNorm in FPN and mask head), the v1/v2 detection of torchvision
state dicts, and the configuration errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.ops import FeaturePyramidNetwork

from configs import coco_torchvision_v1, coco_torchvision_v2, r50_fpn_1x
from mrcnn.config_check import ConfigError, validate
from mrcnn.data import coco_categories
from mrcnn.modeling import build_model
from mrcnn.modeling.box_head import ConvFCHead, MLPHead
from mrcnn.modeling.fpn import FPN
from mrcnn.modeling.mask_head import MaskHead
from mrcnn.modeling.rpn import RPNHead
from mrcnn.weights import (
    V1_LAYOUT,
    V2_LAYOUT,
    WeightsError,
    convert_torchvision_state_dict,
    load_weights,
    model_layout,
    torchvision_layout,
)


def _randomize_bn(module: nn.Module, g: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


def _copy_by_order(dst: nn.Module, src: nn.Module) -> None:
    """Parameters and buffers of two modules with the same layers in the same order."""
    a = [v for k, v in dst.state_dict().items() if not k.endswith("num_batches_tracked")]
    b = [v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert [t.shape for t in a] == [t.shape for t in b]
    with torch.no_grad():
        for x, y in zip(a, b):
            x.copy_(y)


@pytest.mark.parametrize("train", [False, True])
def test_conv_box_head_equals_torchvision(train):
    g = torch.Generator().manual_seed(0)
    tv = FastRCNNConvFCHead((16, 7, 7), [8, 8, 8, 8], [32], norm_layer=nn.BatchNorm2d)
    _randomize_bn(tv, g)
    ours = ConvFCHead(16, 7, num_conv=4, conv_dim=8, num_fc=1, fc_dim=32, norm="BN")
    _copy_by_order(ours, tv)
    tv.train(train)
    ours.train(train)
    x = torch.randn(11, 16, 7, 7, generator=g)
    torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)
    if train:  # the batch statistics moved the running ones identically
        torch.testing.assert_close(ours.convs[3].norm.running_var, tv[3][1].running_var)


def test_two_conv_rpn_head_equals_torchvision():
    g = torch.Generator().manual_seed(1)
    tv = TVRPNHead(8, 3, conv_depth=2)
    for p in tv.parameters():
        p.data.normal_(0, 0.3, generator=g)
    ours = RPNHead(8, 3, conv_depth=2)
    with torch.no_grad():
        ours.trunk[0].weight.copy_(tv.conv[0][0].weight)
        ours.trunk[0].bias.copy_(tv.conv[0][0].bias)
        ours.conv.weight.copy_(tv.conv[1][0].weight)
        ours.conv.bias.copy_(tv.conv[1][0].bias)
        for name in ("cls_logits", "bbox_pred"):
            getattr(ours, name).load_state_dict(getattr(tv, name).state_dict())
    feats = [torch.randn(2, 8, s, s + 3, generator=g) for s in (12, 6, 3, 1)]
    (lo, do), (lt, dt) = ours(feats), tv(feats)
    for a, b in zip(lo + do, lt + dt):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ours.conv_depth == 2 and RPNHead(8, 3).conv_depth == 1
    assert "trunk.0.weight" not in RPNHead(8, 3).state_dict()  # v1 keys unchanged
    with pytest.raises(ValueError, match="conv_depth"):
        RPNHead(8, 3, conv_depth=0)


def test_bn_fpn_and_mask_head_equal_torchvision():
    g = torch.Generator().manual_seed(2)
    tv_fpn = FeaturePyramidNetwork([8, 16, 32, 64], 16, norm_layer=nn.BatchNorm2d)
    ours_fpn = FPN([8, 16, 32, 64], 16, norm="BN")
    _randomize_bn(tv_fpn, g)
    sd = {f"backbone.fpn.{k}": v for k, v in tv_fpn.state_dict().items()}
    conv = convert_torchvision_state_dict(sd, fold_bn_eps=None)
    ours_fpn.load_state_dict(
        {k[len("backbone.fpn."):]: v for k, v in conv.items()}, strict=False
    )
    tv_fpn.eval()
    ours_fpn.eval()
    feats = [torch.randn(1, c, s, s, generator=g) for c, s in ((8, 32), (16, 16), (32, 8), (64, 4))]
    expected = list(tv_fpn({str(i): f for i, f in enumerate(feats)}).values())
    got = ours_fpn([f.clone() for f in feats])
    for a, b in zip(got[:4], expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    tv_mask = MaskRCNNHeads(16, [8, 8, 8, 8], 1, norm_layer=nn.BatchNorm2d)
    _randomize_bn(tv_mask, g)
    ours_mask = MaskHead(16, 4, 8, norm="BN")
    _copy_by_order(ours_mask, tv_mask)
    tv_mask.eval()
    ours_mask.eval()
    x = torch.randn(5, 16, 14, 14, generator=g)
    torch.testing.assert_close(ours_mask(x), tv_mask(x), rtol=0, atol=0)


def test_defaults_are_v1_and_ready_configs_build_each_layout():
    base = build_model(r50_fpn_1x.get_config().model)
    assert isinstance(base.box_head, MLPHead) and model_layout(base) == V1_LAYOUT
    assert model_layout(build_model(coco_torchvision_v1.get_config().model)) == V1_LAYOUT
    v2 = build_model(coco_torchvision_v2.get_config().model)
    assert isinstance(v2.box_head, ConvFCHead) and model_layout(v2) == V2_LAYOUT


@pytest.fixture(scope="module")
def tv_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tv")
    paths = {}
    for name, fn in (("v1", torchvision.models.detection.maskrcnn_resnet50_fpn),
                     ("v2", torchvision.models.detection.maskrcnn_resnet50_fpn_v2)):
        sd = fn(weights=None, weights_backbone=None).state_dict()
        assert torchvision_layout(sd) == (V1_LAYOUT if name == "v1" else V2_LAYOUT)
        paths[name] = str(d / f"{name}.pth")
        torch.save(sd, paths[name])
    return paths


def test_wrong_variant_names_the_config(tv_files):
    v1 = build_model(coco_torchvision_v1.get_config().model)
    v2 = build_model(coco_torchvision_v2.get_config().model)
    with pytest.raises(WeightsError, match=r"maskrcnn_resnet50_fpn_v2 .*coco_torchvision_v2\.py"):
        load_weights(v1, tv_files["v2"], "torchvision", strict_classes=True)
    with pytest.raises(WeightsError, match=r"maskrcnn_resnet50_fpn .*coco_torchvision_v1\.py"):
        load_weights(v2, tv_files["v1"], "torchvision", strict_classes=True)
    assert load_weights(v2, tv_files["v2"], "torchvision", strict_classes=True) == []


@pytest.mark.parametrize("changes,key", [
    ({"rpn.conv_depth": 2}, "model.rpn.sparse_grad"),
    ({"rpn.conv_depth": 0}, "model.rpn.conv_depth"),
    ({"box_head.norm": "BN"}, "model.box_head.norm"),
    ({"box_head.num_conv": -1}, "model.box_head.num_conv"),
    ({"mask_head.norm": "LN"}, "model.mask_head.norm"),
    ({"backbone.fpn_norm": "batchnorm"}, "model.backbone.fpn_norm"),
])
def test_bad_head_configs_name_the_key(changes, key):
    c = r50_fpn_1x.get_config()
    for k, v in changes.items():
        sec, name = k.split(".")
        c.model[sec][name] = v
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(c)


def test_c4_refuses_a_conv_box_head():
    c = r50_fpn_1x.get_config()
    c.model.backbone.fpn = False
    c.model.mask_head.resolution = 14
    c.model.box_head.num_conv = 4
    with pytest.raises(ConfigError, match=r"model\.box_head\.num_conv"):
        validate(c)


def test_ready_configs_validate():
    for mod in (coco_torchvision_v1, coco_torchvision_v2):
        c = mod.get_config()
        validate(c, mode="eval")
        assert c.model.num_classes == 91 and c.data.category_ids_as_labels
        assert c.init.format == "torchvision"


def test_coco_categories_match_torchvision_weights_meta():
    # torchvision lists its 91 outputs by category id, "N/A" where COCO has no category.
    names = torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    assert len(names) == coco_categories.NUM_CLASSES_BY_ID
    expected = [(i, n) for i, n in enumerate(names) if n not in ("__background__", "N/A")]
    assert list(coco_categories.id_name_pairs()) == expected
    cats = coco_categories.coco_json_categories()
    assert len(cats) == 80 and all(c["supercategory"] for c in cats)


V2_TINY = {
    "backbone.fpn_norm": "BN", "rpn.conv_depth": 2, "rpn.sparse_grad": False,
    "box_head.num_conv": 4, "box_head.conv_dim": 16, "box_head.num_fc": 1,
    "box_head.norm": "BN", "mask_head.norm": "BN",
}


@pytest.mark.parametrize("empty_second", [False, True])
def test_v2_architecture_trains_and_infers(empty_second):
    from tests.modeling.test_model import check_detections, make_batch, tiny_config
    from mrcnn.structures import InstanceMasks, Targets

    torch.manual_seed(0)
    cfg = tiny_config(**V2_TINY)
    model = build_model(cfg).train()
    images, targets = make_batch()
    if empty_second:  # e.g. an LSJ crop that kept no object: negatives only
        targets[1] = Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                             InstanceMasks([]))
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()) and len(losses) == 5
    sum(losses.values()).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert model.rpn.trunk[0].weight.grad.abs().sum() > 0
    assert model.box_head.convs[0].norm.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        check_detections(model(images), images, cfg, model)
    with pytest.raises(ValueError, match="sparse_grad"):
        build_model(tiny_config(**{**V2_TINY, "rpn.sparse_grad": True}))


def test_recipe_configs_hold_the_published_hyperparameters():
    from configs import r50_fpn_nvidia_2022, r50_fpn_v2_lsj
    from mrcnn.engine.solver import lr_factor

    c = r50_fpn_v2_lsj.get_config()
    s = c.solver
    assert (s.ims_per_batch, s.base_lr, s.momentum) == (64, 0.1, 0.9)
    assert (s.weight_decay, s.weight_decay_norm, s.weight_decay_bias) == (4e-5, 4e-5, 4e-5)
    per_epoch = -(-117266 // 64)  # COCO 2017 train images with annotations, 64 per step
    assert s.max_iter == 400 * per_epoch and tuple(s.steps) == (352 * per_epoch, 384 * per_epoch)
    assert c.input.lsj_size == 800 and tuple(c.input.lsj_scale_range) == (0.1, 2.0)
    assert {c.model.backbone.norm, c.model.backbone.fpn_norm, c.model.box_head.norm,
            c.model.mask_head.norm} == {"SyncBN"} and c.model.backbone.freeze_at == 0
    assert model_layout(build_model(c.model)) == V2_LAYOUT
    n = r50_fpn_nvidia_2022.get_config().solver
    assert (n.ims_per_batch, n.base_lr, n.max_iter) == (96, 0.12, 16667)
    assert tuple(n.steps) == (12000, 16000)
    # NVIDIA's mlperf_linear warmup: lr = base_lr - (800 - step) * 1e-4
    for step in (0, 1, 400, 799):
        assert lr_factor(step, n) * n.base_lr == pytest.approx(0.12 - (800 - step) * 1e-4)
