"""Weight import: native checkpoints, torchvision detection weights, torchvision ImageNet
backbones; errors that name the offending keys."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBN

from configs import r50_fpn_1x
from mrcnn.modeling import build_model
from mrcnn.modeling.norm import FrozenBatchNorm2d
from mrcnn.weights import (
    CLASS_SPECIFIC_PREFIXES,
    WeightsError,
    convert_torchvision_backbone,
    convert_torchvision_state_dict,
    load_weights,
)
from tests.modeling.test_model import tiny_config


@pytest.fixture(scope="module")
def tv_state_dict():
    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    sd = tv.state_dict()
    g = torch.Generator().manual_seed(1)
    for k, v in sd.items():  # non-trivial BN statistics
        if k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
        elif k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
    return sd


@pytest.fixture(scope="module")
def tv_file(tv_state_dict, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tv.pth"
    torch.save(tv_state_dict, path)
    return str(path)


def r50_config(num_classes: int = 91, **backbone):
    c = r50_fpn_1x.get_config().model
    c.num_classes = num_classes
    for k, v in backbone.items():
        c.backbone[k] = v
    return c


def test_convert_covers_every_key(tv_state_dict):
    model = build_model(r50_config())
    sd = convert_torchvision_state_dict(tv_state_dict, fold_bn_eps=0.0)
    assert set(sd) == set(model.state_dict())
    result = model.load_state_dict(sd)
    assert not result.missing_keys and not result.unexpected_keys
    # the conversion is pure: the input is untouched
    assert "backbone.body.bn1.running_mean" in tv_state_dict


def test_torchvision_file_folds_bn_with_eps0(tv_state_dict, tv_file):
    model = build_model(r50_config())
    assert load_weights(model, tv_file, "torchvision") == []
    # torchvision runs its released weights with FrozenBatchNorm2d(eps=0)
    bn = TVFrozenBN(64, eps=0.0)
    for s in ("weight", "bias", "running_mean", "running_var"):
        getattr(bn, s).copy_(tv_state_dict[f"backbone.body.bn1.{s}"])
    x = torch.randn(2, 64, 5, 5)
    expected = bn(x)
    torch.testing.assert_close(model.backbone.body.stem.norm(x.clone()), expected, rtol=0, atol=0)
    assert torch.equal(
        model.box_predictor.cls_score.weight,
        tv_state_dict["roi_heads.box_predictor.cls_score.weight"],
    )


def test_different_num_classes_skips_class_layers(tv_state_dict, tv_file, caplog):
    path = tv_file
    model = build_model(r50_config(num_classes=5))
    before = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith(CLASS_SPECIFIC_PREFIXES)
    }
    with caplog.at_level(logging.WARNING):
        skipped = load_weights(model, str(path), "torchvision")
    assert sorted(skipped) == sorted(before)
    assert len(skipped) == 6 and "class-specific" in caplog.text
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert torch.equal(after["rpn.conv.weight"], tv_state_dict["rpn.head.conv.0.0.weight"])
    # Eval / predict (strict classes): one line saying which config fits COCO's 91-way heads.
    with pytest.raises(WeightsError, match=r"91 classes.*configs/coco_torchvision_v1\.py"):
        other = build_model(r50_config(num_classes=5))
        load_weights(other, str(path), "torchvision", strict_classes=True)


def test_native_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    a = build_model(tiny_config(**{"backbone.norm": "BN", "backbone.freeze_at": 1}))
    path = tmp_path / "ckpt.pth"
    torch.save({"model": a.state_dict(), "iteration": 3}, path)
    torch.manual_seed(1)
    b = build_model(tiny_config(**{"backbone.norm": "BN", "backbone.freeze_at": 1}))
    load_weights(b, str(path), "native")
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k
    # DDP-prefixed bare state dict
    torch.save({"module." + k: v for k, v in a.state_dict().items()}, path)
    load_weights(b, str(path), "native")

    sd = a.state_dict()
    sd.pop("rpn.conv.weight")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        load_weights(b, str(path), "native")
    assert "rpn.conv.weight" in str(err.value) and "extra.weight" in str(err.value)

    sd = a.state_dict()
    sd["rpn.conv.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"rpn\.conv\.weight: checkpoint \(3, 3, 3, 3\)"):
        load_weights(b, str(path), "native")
    with pytest.raises(ValueError, match="format"):
        load_weights(b, str(path), "caffe2")


def test_native_bn_checkpoint_into_frozen_bn_model(tmp_path):
    torch.manual_seed(0)
    bn_model = build_model(tiny_config(**{"backbone.norm": "BN", "backbone.freeze_at": 0}))
    for m in bn_model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "bn.pth"
    torch.save(bn_model.state_dict(), path)
    frozen = build_model(tiny_config(**{"backbone.norm": "FrozenBN", "backbone.freeze_at": 0}))
    load_weights(frozen, str(path), "native")
    bn_model.eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(frozen.backbone(x)[0], bn_model.backbone(x)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fpn,depth", [(True, 50), (False, 18)])
def test_torchvision_backbone(fpn, depth, tmp_path):
    torch.manual_seed(0)
    net = getattr(torchvision.models, f"resnet{depth}")()
    g = torch.Generator().manual_seed(2)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
    net.eval()
    path = tmp_path / "resnet.pth"
    torch.save(net.state_dict(), path)
    model = build_model(r50_config(num_classes=3, fpn=fpn, freeze_at=2, depth=depth))
    before = model.rpn.conv.weight.clone()
    load_weights(model, str(path), "torchvision_backbone")
    assert torch.equal(model.rpn.conv.weight, before)  # heads untouched
    x = torch.randn(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        ref = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
        feats = model.backbone.body(x)
        # BatchNorm's kernel and the folded affine round differently: compare at the scale of
        # the (large, uncalibrated) activations.
        torch.testing.assert_close(feats[2], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
        res5 = model.box_head.res5 if not fpn else model.backbone.body.res5
        ref5 = net.layer4(ref)
        atol5 = 1e-5 * float(ref5.abs().max())
        torch.testing.assert_close(res5(feats[2]), ref5, rtol=1e-4, atol=atol5)
    assert isinstance(model.backbone.body.res4[0].norm1, FrozenBatchNorm2d)


def test_torchvision_backbone_keeps_bn_statistics_and_refuses_gn(tmp_path):
    net = torchvision.models.resnet18()
    net.layer1[0].bn1.running_var.fill_(3.0)
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    model = build_model(r50_config(num_classes=3, norm="BN", freeze_at=0, depth=18))
    load_weights(model, str(path), "torchvision_backbone")
    assert torch.equal(model.backbone.body.res2[0].norm1.running_var, torch.full((64,), 3.0))
    gn = build_model(r50_config(num_classes=3, norm="GN", depth=18))
    with pytest.raises(ValueError, match="GroupNorm"):
        load_weights(gn, str(path), "torchvision_backbone")


def test_legacy_torchvision_key_names(tv_state_dict):
    legacy = {}
    for k, v in tv_state_dict.items():
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        k = k.replace("backbone.fpn.inner_blocks.0.0.", "backbone.fpn.inner_blocks.0.")
        for i in range(4):
            k = k.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
        legacy[k] = v
    a = convert_torchvision_state_dict(tv_state_dict)
    b = convert_torchvision_state_dict(legacy)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # v2 keys convert (tests/modeling/test_v2_*.py); a key of neither layout is named.
    with pytest.raises(KeyError, match=r"keypoint_head.*maskrcnn_resnet50_fpn_v2"):
        convert_torchvision_state_dict({"roi_heads.keypoint_head.0.0.weight": torch.zeros(1)})


def test_convert_backbone_drops_classifier():
    sd = convert_torchvision_backbone(torchvision.models.resnet18().state_dict())
    assert not any("fc" in k for k in sd)
    assert "backbone.body.res5.1.conv2.weight" in sd and "backbone.body.stem.norm.weight" in sd
    assert not any("running" in k for k in sd)  # folded
