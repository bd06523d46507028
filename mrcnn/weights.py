"""Loading weights into the model: our checkpoints and torchvision's.

Formats (`config.init.format`):
- "native": our checkpoint, a dict with a "model" state dict, or a bare state dict;
- "torchvision": a `maskrcnn_resnet50_fpn` or `maskrcnn_resnet50_fpn_v2` state dict (e.g.
  torchvision's COCO weights, 91 outputs indexed by COCO category id: configs/coco_torchvision_v1.py
  and _v2.py are built for them); the variant is read from the keys, and a config of the other
  variant is an error naming the config to use;
- "torchvision_backbone": torchvision ResNet ImageNet classification weights, body only.

Key mismatches and shape mismatches are errors that list the keys. The one tolerated mismatch
is the number of classes: then the class-specific layers (box classifier, box regressor, mask
logits) keep their random init and the skipped keys are logged.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mrcnn.modeling.norm import BN_EPS, FrozenBatchNorm2d, fold_bn

log = logging.getLogger(__name__)

FORMATS = ("native", "torchvision", "torchvision_backbone")


class WeightsError(ValueError):
    """A weights file that cannot be used: unreadable, refused (pickled code), or not matching
    the model (the message lists the keys). A user error: main.py prints it without a traceback."""


# Our keys of layers whose shape depends on the number of classes.
CLASS_SPECIFIC_PREFIXES = (
    "box_predictor.cls_score.",
    "box_predictor.bbox_pred.",
    "mask_predictor.logits.",
)

# torchvision's released detection weights are meant for FrozenBatchNorm2d with eps=0
# (torchvision calls overwrite_eps(model, 0.0) when it loads them); ImageNet classification
# weights come from nn.BatchNorm2d with its default eps.
TORCHVISION_DETECTION_BN_EPS = 0.0
TORCHVISION_CLASSIFICATION_BN_EPS = 1e-5

_BN_STATS = ("weight", "bias", "running_mean", "running_var")

def _rename_body(key: str) -> str | None:
    """A torchvision ResNet key (without prefix) -> ours, None for keys we do not keep."""
    if key.endswith("num_batches_tracked") or key.startswith("fc."):
        return None
    if key == "conv1.weight":
        return "stem.conv.weight"
    m = re.fullmatch(r"bn1\.(\w+)", key)
    if m:
        return f"stem.norm.{m[1]}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.conv(\d)\.weight", key)
    if m:
        return f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.bn(\d)\.(\w+)", key)
    if m:
        return f"res{int(m[1]) + 1}.{m[2]}.norm{m[3]}.{m[4]}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.0\.weight", key)
    if m:
        return f"res{int(m[1]) + 1}.{m[2]}.shortcut.conv.weight"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.1\.(\w+)", key)
    if m:
        return f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"
    raise KeyError(f"unrecognized torchvision ResNet key {key!r}")


@dataclasses.dataclass(frozen=True)
class TorchvisionLayout:
    """What distinguishes torchvision's Mask R-CNN variants, read from a state dict's keys.

    rpn_conv_depth: 3x3 convs of the RPN head (v1: 1, v2: 2); box_convs: convs of the box head
    (v1: 0, TwoMLPHead; v2: 4, FastRCNNConvFCHead); fpn_norm / mask_norm: BatchNorm after the
    FPN / mask-head convs (v2).
    """

    rpn_conv_depth: int
    box_convs: int
    fpn_norm: bool
    mask_norm: bool

    @property
    def name(self) -> str:
        if self == V1_LAYOUT:
            return "maskrcnn_resnet50_fpn"
        if self == V2_LAYOUT:
            return "maskrcnn_resnet50_fpn_v2"
        return f"a custom torchvision Mask R-CNN ({self})"


V1_LAYOUT = TorchvisionLayout(rpn_conv_depth=1, box_convs=0, fpn_norm=False, mask_norm=False)
V2_LAYOUT = TorchvisionLayout(rpn_conv_depth=2, box_convs=4, fpn_norm=True, mask_norm=True)
# The ready configs that build each released architecture (with COCO's 91-way heads).
LAYOUT_CONFIGS = {
    V1_LAYOUT: "configs/coco_torchvision_v1.py",
    V2_LAYOUT: "configs/coco_torchvision_v2.py",
}


def torchvision_layout(sd: Mapping[str, Tensor]) -> TorchvisionLayout:
    """The variant of a torchvision Mask R-CNN state dict, from its keys alone."""
    rpn = {m[1] for k in sd if (m := re.fullmatch(r"rpn\.head\.conv\.(\d+)\.0\.weight", k))}
    box = {m[1] for k in sd if (m := re.fullmatch(r"roi_heads\.box_head\.(\d+)\.0\.weight", k))}
    return TorchvisionLayout(
        rpn_conv_depth=max(len(rpn), 1),  # the pre-0.13 layout has a bare `rpn.head.conv`
        box_convs=len(box),
        fpn_norm=any(re.match(r"backbone\.fpn\.inner_blocks\.\d+\.1\.", k) for k in sd),
        mask_norm=any(re.match(r"roi_heads\.mask_head\.\d+\.1\.", k) for k in sd),
    )


def model_layout(model: nn.Module) -> TorchvisionLayout | None:
    """The torchvision variant our `model` (a MaskRCNN) has the shape of; None for C4."""
    if not getattr(model, "use_fpn", True) or not hasattr(model, "backbone"):
        return None  # C4, or not one of our models (the key check lists what differs)
    fpn = model.backbone.fpn
    mask_head = getattr(model, "mask_head", None)
    return TorchvisionLayout(
        rpn_conv_depth=model.rpn.conv_depth,
        box_convs=len(getattr(model.box_head, "convs", ())),
        fpn_norm=not isinstance(fpn.lateral[0].norm, nn.Identity),
        mask_norm=mask_head is not None and not isinstance(mask_head.convs[0].norm, nn.Identity),
    )


def _detection_rules(layout: TorchvisionLayout) -> list[tuple[str, str]]:
    """(regex, replacement) pairs from torchvision's Mask R-CNN keys to ours, for `layout`."""
    last_rpn = layout.rpn_conv_depth - 1
    rules = [
        # FPN: `.0.` is the conv (also torchvision's pre-0.13 bare layout), `.1.` its norm.
        (r"backbone\.fpn\.inner_blocks\.(\d+)(?:\.0)?\.(weight|bias)",
         r"backbone.fpn.lateral.\1.conv.\2"),
        (r"backbone\.fpn\.layer_blocks\.(\d+)(?:\.0)?\.(weight|bias)",
         r"backbone.fpn.output.\1.conv.\2"),
        (r"backbone\.fpn\.inner_blocks\.(\d+)\.1\.(\w+)", r"backbone.fpn.lateral.\1.norm.\2"),
        (r"backbone\.fpn\.layer_blocks\.(\d+)\.1\.(\w+)", r"backbone.fpn.output.\1.norm.\2"),
        # RPN: the last conv is ours `rpn.conv`, the ones before it `rpn.trunk.{i}`.
        (rf"rpn\.head\.conv(?:\.{last_rpn}\.0)?\.(weight|bias)", r"rpn.conv.\1"),
        (r"rpn\.head\.conv\.(\d+)\.0\.(weight|bias)", r"rpn.trunk.\1.\2"),
        (r"rpn\.head\.cls_logits\.(weight|bias)", r"rpn.cls_logits.\1"),
        (r"rpn\.head\.bbox_pred\.(weight|bias)", r"rpn.bbox_pred.\1"),
        (r"roi_heads\.box_head\.fc6\.(weight|bias)", r"box_head.fc.0.\1"),
        (r"roi_heads\.box_head\.fc7\.(weight|bias)", r"box_head.fc.1.\1"),
        (r"roi_heads\.box_head\.(\d+)\.0\.weight", r"box_head.convs.\1.conv.weight"),
        (r"roi_heads\.box_head\.(\d+)\.0\.bias", r"box_head.convs.\1.conv.bias"),
        (r"roi_heads\.box_head\.(\d+)\.1\.(\w+)", r"box_head.convs.\1.norm.\2"),
        (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)", r"box_predictor.\1.\2"),
        (r"roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)", r"mask_head.convs.\1.conv.\2"),
        (r"roi_heads\.mask_head\.(\d+)\.1\.(\w+)", r"mask_head.convs.\1.norm.\2"),
        (r"roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)", r"mask_predictor.deconv.\1"),
        (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)", r"mask_predictor.logits.\1"),
    ]
    return rules


def _rename_detection(key: str, layout: TorchvisionLayout = V1_LAYOUT) -> str | None:
    """A torchvision Mask R-CNN key (maskrcnn_resnet50_fpn or _v2, see `layout`) -> ours
    (None: dropped)."""
    if key.endswith("num_batches_tracked"):
        return None
    if key.startswith("backbone.body."):
        new = _rename_body(key[len("backbone.body.") :])
        return None if new is None else "backbone.body." + new
    for pattern, repl in _detection_rules(layout):
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    m = re.fullmatch(r"roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)", key)  # pre-0.13
    if m:
        return f"mask_head.convs.{int(m[1]) - 1}.conv.{m[2]}"
    # FastRCNNConvFCHead's Linear layers follow its convs and a Flatten: indices
    # box_convs + 1, + 3, ... (a ReLU between them).
    m = re.fullmatch(r"roi_heads\.box_head\.(\d+)\.(weight|bias)", key)
    if m and int(m[1]) > layout.box_convs and (int(m[1]) - layout.box_convs - 1) % 2 == 0:
        return f"box_head.fc.{(int(m[1]) - layout.box_convs - 1) // 2}.{m[2]}"
    raise KeyError(
        f"unrecognized torchvision Mask R-CNN key {key!r} (maskrcnn_resnet50_fpn and "
        "maskrcnn_resnet50_fpn_v2 layouts are supported)"
    )


def _fold_norms(sd: dict[str, Tensor], eps: float) -> dict[str, Tensor]:
    """Replaces each (weight, bias, running_mean, running_var) group by FrozenBN's folded
    (weight, bias)."""
    out = dict(sd)
    for key in [k for k in sd if k.endswith(".running_mean")]:
        p = key[: -len("running_mean")]
        w, b, rm, rv = (out.pop(p + s) for s in _BN_STATS)
        out[p + "weight"], out[p + "bias"] = fold_bn(
            w.float(), b.float(), rm.float(), rv.float(), eps
        )
    return out


def released_bn_eps(layout: TorchvisionLayout) -> float:
    """The BatchNorm eps torchvision runs its released weights of `layout` with: v1's
    FrozenBatchNorm2d is set to eps=0 when its COCO weights load; v2 keeps nn.BatchNorm2d's 1e-5."""
    return TORCHVISION_DETECTION_BN_EPS if layout == V1_LAYOUT else BN_EPS


def convert_torchvision_state_dict(
    sd: Mapping[str, Tensor], fold_bn_eps: float | None | str = "released"
) -> dict[str, Tensor]:
    """torchvision `maskrcnn_resnet50_fpn` or `maskrcnn_resnet50_fpn_v2` state dict -> ours
    (pure; inputs are not modified). The variant is read from the keys (`torchvision_layout`).

    fold_bn_eps: the eps the BN statistics are folded into FrozenBN affines with: "released"
    (default) the one torchvision uses for its released weights of that variant (v1: 0, v2:
    1e-5); a number (1e-5 for a v1 model built with weights=None); None keeps them as
    BatchNorm statistics (for models with BN layers).
    """
    layout = torchvision_layout(sd)
    out = {}
    for k, v in sd.items():
        new = _rename_detection(k, layout)
        if new is not None:
            out[new] = v
    if fold_bn_eps == "released":
        fold_bn_eps = released_bn_eps(layout)
    return out if fold_bn_eps is None else _fold_norms(out, float(fold_bn_eps))


def check_torchvision_layout(model: nn.Module, sd: Mapping[str, Tensor]) -> TorchvisionLayout:
    """The layout of torchvision state dict `sd`; a WeightsError naming the config to use when
    `model` has the other variant's architecture."""
    want = torchvision_layout(sd)
    have = model_layout(model)
    if have is None or getattr(model, "mask_head", None) is None:
        return want  # C4 or a box-only model: the key check lists what differs
    if have == want:
        return want
    fix = LAYOUT_CONFIGS.get(want)
    hint = (
        f"use --config={fix}" if fix else
        "set model.rpn.conv_depth, model.box_head.num_conv, model.backbone.fpn_norm and "
        "model.mask_head.norm to match it"
    )
    raise WeightsError(
        f"the weights are {want.name} but the config builds {have.name}: {hint}"
    )


def convert_torchvision_backbone(
    sd: Mapping[str, Tensor], fold_bn_eps: float | None = TORCHVISION_CLASSIFICATION_BN_EPS
) -> dict[str, Tensor]:
    """torchvision ImageNet ResNet state dict -> our `backbone.body.*` keys (fc dropped).
    With a C4 model, res5 also goes to `box_head.res5.*` (see `load_weights`)."""
    out = {}
    for k, v in sd.items():
        new = _rename_body(k)
        if new is not None:
            out["backbone.body." + new] = v
    return out if fold_bn_eps is None else _fold_norms(out, fold_bn_eps)


def _unwrap(obj) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"expected a state dict (or a dict with 'model'), got {type(obj).__name__}"
        )
    # DistributedDataParallel / torch.compile wrappers prefix every key.
    sd = dict(obj)
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _fold_where_frozen(model: nn.Module, sd: dict[str, Tensor], eps: float) -> dict[str, Tensor]:
    """Folds the BN statistics of the norms that are FrozenBN in `model`; BatchNorm targets keep
    them; a GroupNorm target cannot take BatchNorm statistics (error)."""
    modules = dict(model.named_modules())
    out = dict(sd)
    for key in [k for k in sd if k.endswith(".running_mean")]:
        p = key[: -len("running_mean")]
        target = modules.get(p[:-1])
        if isinstance(target, FrozenBatchNorm2d):
            out.pop(p + "num_batches_tracked", None)
            w, b, rm, rv = (out.pop(p + s) for s in _BN_STATS)
            out[p + "weight"], out[p + "bias"] = fold_bn(
                w.float(), b.float(), rm.float(), rv.float(), eps
            )
        elif isinstance(target, nn.GroupNorm):
            raise WeightsError(
                f"{p[:-1]} is a GroupNorm but the weights hold BatchNorm statistics; use "
                "model.backbone.norm=FrozenBN or BN with these weights"
            )
    return out


def load_state_dict_checked(
    model: nn.Module,
    sd: Mapping[str, Tensor],
    strict_classes: bool = False,
    only: str | tuple[str, ...] = "",
) -> list[str]:
    """Loads `sd` into `model`; returns the keys skipped for a different number of classes.

    Every missing or unexpected key and every shape mismatch is an error listing them, except
    (when not strict_classes) shape mismatches of the class-specific layers. only: key prefix(es);
    model keys outside them may be missing (loading a part of the model, e.g. the body).
    """
    own = model.state_dict()
    # BatchNorm's step counter is bookkeeping, not a weight: absent from converted weights.
    missing = sorted(
        k for k in own
        if k.startswith(only) and k not in sd and not k.endswith("num_batches_tracked")
    )
    unexpected = sorted(k for k in sd if k not in own)
    mismatched, skipped = [], []
    for k, v in sd.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            if not strict_classes and k.startswith(CLASS_SPECIFIC_PREFIXES):
                skipped.append(k)
            else:
                mismatched.append(
                    f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                )
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
    if problems:
        raise WeightsError("cannot load the weights:\n  " + "\n  ".join(problems))
    load = {k: v for k, v in sd.items() if k not in skipped}
    result = model.load_state_dict(load, strict=False)
    leftover = [
        k for k in result.missing_keys
        if k.startswith(only) and k not in skipped and not k.endswith("num_batches_tracked")
    ]
    if leftover or result.unexpected_keys:
        raise WeightsError(f"cannot load: missing {leftover}, unexpected {result.unexpected_keys}")
    if skipped:
        log.warning(
            "different number of classes: kept the random init of %d class-specific tensors: %s",
            len(skipped),
            skipped,
        )
    return skipped


def _check_coco_classes(
    model: nn.Module, sd: Mapping[str, Tensor], layout: TorchvisionLayout, strict: bool
) -> None:
    """With strict classes (eval, predict), torchvision's COCO heads (91 outputs indexed by
    category id) in a model of another size is one error saying what to set, not a list of
    six shape mismatches."""
    w = sd.get("box_predictor.cls_score.weight")
    own = getattr(getattr(model, "box_predictor", None), "cls_score", None)
    if not strict or w is None or own is None or w.shape[0] == own.out_features:
        return
    fix = LAYOUT_CONFIGS.get(layout)
    raise WeightsError(
        f"the weights have {w.shape[0]} classes, the model {own.out_features}"
        + (f": torchvision's COCO weights need --config={fix} (or model.num_classes=91 and "
           "data.category_ids_as_labels=True)" if w.shape[0] == 91 else
           f": set model.num_classes={w.shape[0]}")
    )


def load_weights(
    model: nn.Module, path: str, fmt: str = "native", strict_classes: bool = False
) -> list[str]:
    """Loads the weights at `path` in format `fmt` into `model` (a MaskRCNN) in place.

    Returns the class-specific keys that were skipped because the number of classes differs
    (an error instead when strict_classes). The file is read with weights_only=True.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown weights format {fmt!r}; expected one of {FORMATS}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        # Missing or truncated file, not a torch file, or pickled code that weights_only refuses.
        raise WeightsError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from e
    sd = _unwrap(obj)
    try:
        if fmt == "native":
            # A checkpoint of a BN model loads into a FrozenBN model with its statistics folded.
            sd = _fold_where_frozen(model, sd, BN_EPS)
            skipped = load_state_dict_checked(model, sd, strict_classes)
        elif fmt == "torchvision":
            layout = check_torchvision_layout(model, sd)
            sd = _fold_where_frozen(
                model, convert_torchvision_state_dict(sd, None), released_bn_eps(layout)
            )
            _check_coco_classes(model, sd, layout, strict_classes)
            skipped = load_state_dict_checked(model, sd, strict_classes)
        else:
            sd = convert_torchvision_backbone(sd, None)
            if getattr(model, "use_fpn", True) is False:
                # C4: the classification net's res5 is the RoI head's res5.
                res5 = "backbone.body.res5."
                sd = {
                    ("box_head." + k[len("backbone.body.") :] if k.startswith(res5) else k): v
                    for k, v in sd.items()
                }
            sd = _fold_where_frozen(model, sd, TORCHVISION_CLASSIFICATION_BN_EPS)
            skipped = load_state_dict_checked(
                model, sd, strict_classes=True, only=("backbone.body.", "box_head.res5.")
            )
    except (KeyError, WeightsError) as e:  # unknown key, mismatched keys: name the file too
        raise WeightsError(f"{path} ({fmt} format): {e.args[0]}") from e
    log.info("loaded %s weights from %s", fmt, path)
    return skipped
