"""Rejects impossible configs at start, naming the key, before any work is done."""

from __future__ import annotations

import logging

import ml_collections

from mrcnn import precision

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def _fail(key: str, value, why: str) -> None:
    raise ConfigError(f"config.{key}={value!r}: {why}")


def validate(config: ml_collections.ConfigDict, world_size: int = 1, mode: str = "train") -> None:
    s = config.solver
    if config.dtype not in precision.NAMES:
        _fail("dtype", config.dtype, "must be one of " + ", ".join(precision.NAMES))
    if config.device not in ("auto", "cpu", "cuda"):
        _fail("device", config.device, "must be auto, cpu or cuda")
    if not s.base_lr > 0:
        _fail("solver.base_lr", s.base_lr, "must be > 0")
    if s.ims_per_batch <= 0:
        _fail("solver.ims_per_batch", s.ims_per_batch, "must be > 0")
    if s.accumulate_steps < 1:
        _fail("solver.accumulate_steps", s.accumulate_steps, "must be >= 1")
    if s.ims_per_batch % (world_size * s.accumulate_steps):
        _fail(
            "solver.ims_per_batch",
            s.ims_per_batch,
            f"must divide by world size x accumulate_steps = {world_size} x {s.accumulate_steps}",
        )
    if config.test.ims_per_batch <= 0 or config.test.ims_per_batch % world_size:
        _fail("test.ims_per_batch", config.test.ims_per_batch,
              f"the global test batch must be > 0 and divide by the world size {world_size}")
    if s.max_iter <= 0:
        _fail("solver.max_iter", s.max_iter, "must be > 0")
    _validate_schedule(s, mode)
    if list(s.steps) != sorted(s.steps):
        _fail("solver.steps", s.steps, "must be increasing")
    if not 0 < s.warmup_factor <= 1:
        _fail("solver.warmup_factor", s.warmup_factor, "must be in (0, 1]")
    if s.weight_decay < 0:
        _fail("solver.weight_decay", s.weight_decay, "must be >= 0")
    if s.optimizer not in ("sgd", "adamw"):
        _fail("solver.optimizer", s.optimizer, "must be sgd or adamw")
    if s.checkpoint_period < 0:
        _fail("solver.checkpoint_period", s.checkpoint_period, "must be >= 0")
    m = config.model
    if m.num_classes < 2:
        _fail("model.num_classes", m.num_classes, "must count background and >= 1 class")
    if m.backbone.depth not in (18, 34, 50, 101, 152):
        _fail("model.backbone.depth", m.backbone.depth, "must be 18, 34, 50, 101 or 152")
    if m.backbone.norm not in ("FrozenBN", "BN", "SyncBN", "GN"):
        _fail("model.backbone.norm", m.backbone.norm, "must be FrozenBN, BN, SyncBN or GN")
    if not 0 <= m.backbone.freeze_at <= 5:
        _fail("model.backbone.freeze_at", m.backbone.freeze_at, "must be in 0..5")
    if m.backbone.fpn and len(m.anchor.sizes) != 5:
        _fail("model.anchor.sizes", m.anchor.sizes, "FPN needs one size per level P2..P6 (5)")
    for key in ("rpn", "roi_heads"):
        sec = m[key]
        if not 0 <= sec.bg_iou_thresh <= sec.fg_iou_thresh <= 1:
            _fail(f"model.{key}.bg_iou_thresh", sec.bg_iou_thresh, "need 0 <= bg <= fg <= 1")
        if not 0 < sec.positive_fraction <= 1:
            _fail(f"model.{key}.positive_fraction", sec.positive_fraction, "must be in (0, 1]")
    _validate_heads(m)
    # FPN: one 2x deconv on the pooled features; C4: res5 halves them first.
    mask_res = 2 * (m.mask_head.pooler_resolution // (1 if m.backbone.fpn else 2))
    if m.mask_head.resolution != mask_res:
        _fail(
            "model.mask_head.resolution",
            m.mask_head.resolution,
            f"must be {mask_res}: 2 x mask_head.pooler_resolution (FPN: one 2x deconv), or "
            "2 x (pooler_resolution // 2) with C4 (res5 halves the pooled features)",
        )
    i = config.input
    if not tuple(i.min_size_train):
        _fail("input.min_size_train", tuple(i.min_size_train), "give at least one size, e.g. (800,)")
    if min(i.min_size_train) <= 0 or i.max_size_train <= 0:
        _fail("input.min_size_train", i.min_size_train, "sizes must be > 0")
    if len(i.pixel_mean) != 3 or len(i.pixel_std) != 3 or min(i.pixel_std) <= 0:
        _fail("input.pixel_std", i.pixel_std, "need 3 means and 3 positive stds")
    if config.init.format not in ("native", "torchvision", "torchvision_backbone"):
        _fail("init.format", config.init.format, "must be native, torchvision or torchvision_backbone")
    if config.data.on_bad_image not in ("skip", "fail"):
        _fail("data.on_bad_image", config.data.on_bad_image, "must be skip or fail")
    if config.data.on_bad_annotation not in ("skip", "fail"):
        _fail("data.on_bad_annotation", config.data.on_bad_annotation, "must be skip or fail")
    _validate_run(config)
    _validate_lsj(config)
    _validate_perf(config, mode)
    if mode == "predict" and not config.predict.input:
        _fail("predict.input", config.predict.input, "set it to an image file, folder or glob")


def _validate_schedule(s: ml_collections.ConfigDict, mode: str) -> None:
    """Impossible values are errors; a schedule longer than a shortened run is only a warning
    (smoke runs shorten max_iter all the time): the schedule then does what it says, up to
    max_iter."""
    if s.warmup_method not in ("linear", "constant"):
        _fail("solver.warmup_method", s.warmup_method, "must be linear or constant")
    if s.warmup_iters < 0:
        _fail("solver.warmup_iters", s.warmup_iters, "must be >= 0")
    if any(step <= 0 for step in s.steps):
        _fail("solver.steps", tuple(s.steps), "must be > 0")
    if mode != "train":
        return
    if s.warmup_iters > s.max_iter:
        log.warning("config.solver.warmup_iters=%d exceeds solver.max_iter=%d: the whole run "
                    "is in warmup", s.warmup_iters, s.max_iter)
    late = [step for step in s.steps if step >= s.max_iter]
    if late:
        log.warning("config.solver.steps %s are at or past solver.max_iter=%d: those lr decays "
                    "never happen", late, s.max_iter)


def _validate_run(config: ml_collections.ConfigDict) -> None:
    """Periods, workers and head sizes: values that would divide by zero, hang or crash late."""
    if config.log_period < 1:
        _fail("log_period", config.log_period, "must be >= 1")
    if config.data.num_workers < 0:
        _fail("data.num_workers", config.data.num_workers, "must be >= 0 (0: load in the main "
              "process)")
    if config.eval.period < 0:
        _fail("eval.period", config.eval.period, "must be >= 0 (0: no periodic evaluation)")
    if config.eval.num_images < 0:
        _fail("eval.num_images", config.eval.num_images, "must be >= 0 (0: all)")
    for key in ("box_head", "mask_head"):
        if config.model[key].pooler_resolution < 1:
            _fail(f"model.{key}.pooler_resolution", config.model[key].pooler_resolution,
                  "must be >= 1")
    if config.model.roi_heads.detections_per_img < 1:
        _fail("model.roi_heads.detections_per_img", config.model.roi_heads.detections_per_img,
              "must be >= 1")
    if config.solver.keep_checkpoints < 0:
        _fail("solver.keep_checkpoints", config.solver.keep_checkpoints,
              "must be >= 0 (0: keep all)")
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            _fail("device", "cuda", "no CUDA device is available here (torch.cuda.is_available() "
                  "is False): use device=cpu or auto")


_HEAD_NORMS = ("", "GN", "BN", "SyncBN", "FrozenBN")


def _validate_heads(m: ml_collections.ConfigDict) -> None:
    """The v2 architecture keys (torchvision's maskrcnn_resnet50_fpn_v2)."""
    norms = (("backbone.fpn_norm", m.backbone.fpn_norm), ("box_head.norm", m.box_head.norm),
             ("mask_head.norm", m.mask_head.norm))
    for key, value in norms:
        if value not in _HEAD_NORMS:
            _fail(f"model.{key}", value, "must be '', GN, BN, SyncBN or FrozenBN")
    if m.rpn.conv_depth < 1:
        _fail("model.rpn.conv_depth", m.rpn.conv_depth, "must be >= 1")
    if m.rpn.conv_depth > 1 and m.rpn.sparse_grad:
        _fail("model.rpn.sparse_grad", True, f"the sampled-anchor gradient re-evaluates one "
              f"conv; with model.rpn.conv_depth={m.rpn.conv_depth} set it to False")
    if m.box_head.num_conv < 0:
        _fail("model.box_head.num_conv", m.box_head.num_conv, "must be >= 0")
    if m.box_head.num_conv and not m.backbone.fpn:
        _fail("model.box_head.num_conv", m.box_head.num_conv, "the C4 box head is res5: "
              "convolutions apply to FPN models only (set it to 0)")
    if m.box_head.num_conv and m.box_head.num_fc < 1:
        _fail("model.box_head.num_fc", m.box_head.num_fc, "a conv box head needs >= 1 fc")
    if m.box_head.norm and not m.box_head.num_conv:
        _fail("model.box_head.norm", m.box_head.norm, "normalizes the box head's convs: "
              "set model.box_head.num_conv > 0 (torchvision's v2: 4) or norm=''")


def _validate_lsj(config: ml_collections.ConfigDict) -> None:
    i = config.input
    if not i.lsj_size:
        return
    d = int(i.size_divisibility)
    if i.lsj_size < 0 or (d > 1 and i.lsj_size % d):
        _fail("input.lsj_size", i.lsj_size, f"must be 0 (off) or > 0 and divisible by "
              f"input.size_divisibility={d}")
    lo_hi = tuple(i.lsj_scale_range)
    if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
        _fail("input.lsj_scale_range", lo_hi, "must be (low, high) with 0 < low <= high")
    pad_to = tuple(config.perf.pad_to)
    if pad_to and min(pad_to) < i.lsj_size:
        _fail("perf.pad_to", pad_to, f"LSJ training images are {i.lsj_size} x {i.lsj_size} "
              "(input.lsj_size): pad_to must cover them")


def _validate_perf(config: ml_collections.ConfigDict, mode: str) -> None:
    p, i = config.perf, config.input
    from mrcnn.build.onednn import FC6_CHOICES

    fc6 = p.get("fc6", "auto")
    if fc6 not in FC6_CHOICES:
        _fail("perf.fc6", fc6, f"must be one of {FC6_CHOICES}")
    pad_to = tuple(p.pad_to)
    if pad_to:
        if len(pad_to) != 2 or not all(isinstance(v, int) and v > 0 for v in pad_to):
            _fail("perf.pad_to", pad_to, "must be () or (H, W) with positive integers")
        if pad_to[0] > pad_to[1]:
            _fail("perf.pad_to", pad_to, "give the landscape shape (H <= W); portrait batches "
                  "are padded to (W, H)")
        d = int(i.size_divisibility)
        if d > 1 and (pad_to[0] % d or pad_to[1] % d):
            _fail("perf.pad_to", pad_to, f"both sides must divide by input.size_divisibility={d}")
        if mode != "bench":  # bench pads its own synthetic images (bench.image_size)
            short = max(max(i.min_size_train), i.min_size_test)
            long_ = max(i.max_size_train, i.max_size_test)
            if pad_to[0] < short or pad_to[1] < long_:
                _fail("perf.pad_to", pad_to,
                      f"a resized image can be up to {short}x{long_} (input.min_size_*, "
                      "input.max_size_*): pad_to must cover it")
        if mode == "train" and not config.data.aspect_ratio_grouping:
            _fail("perf.pad_to", pad_to, "training batches must have one orientation: set "
                  "data.aspect_ratio_grouping=True")
    if p.cuda_graphs:
        if not pad_to:
            _fail("perf.cuda_graphs", True, "needs fixed shapes: set perf.pad_to, e.g. "
                  "(800, 1344) for input.max_size_*=1333")
        if config.solver.accumulate_steps > 1 and mode == "train":
            # The graphed backward returns static gradient buffers that AccumulateGrad keeps:
            # the next micro-step would overwrite the gradients summed so far.
            _fail("perf.cuda_graphs", True, "cannot train with solver.accumulate_steps="
                  f"{config.solver.accumulate_steps} > 1 (the graphs' static gradient buffers "
                  "would be overwritten by each micro-step): turn one off")
        if p.compile:
            _fail("perf.cuda_graphs", True, "is exclusive with perf.compile (torch.compile "
                  "makes its own graphs with mode='reduce-overhead'): turn one off")
        import torch

        if config.device == "cpu" or not torch.cuda.is_available():
            _fail("perf.cuda_graphs", True, f"needs a CUDA device (config.device="
                  f"{config.device!r}, CUDA available: {torch.cuda.is_available()})")
