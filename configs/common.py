"""Helpers shared by config files: argument parsing and the `runlocal` shrink."""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses `--config=configs/x.py:key=value,flag` into named options.

    `arg` is the string after the colon. Bare words set a boolean option to True
    ("runlocal" -> runlocal=True); `key=value` pairs are cast to the type of the default.
    Unknown options are an error that names them.
    """
    opts = ml_collections.ConfigDict(defaults)
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if key not in defaults:
            raise ValueError(
                f"unknown config argument {key!r}; known: {sorted(defaults)}"
            )
        if not sep:
            opts[key] = True
            continue
        default = defaults[key]
        if isinstance(default, bool):
            opts[key] = value.lower() in ("1", "true", "yes", "y")
        elif default is None:
            opts[key] = value
        else:
            opts[key] = type(default)(value)
    return opts


def shrink_for_local_run(config: ml_collections.ConfigDict) -> None:
    """Makes any config small enough for a CPU smoke run (seconds per iteration).

    Small images, a handful of iterations, few RoIs, the shapes dataset so no download is needed.
    """
    config.data.train.name = "shapes_train"
    config.data.val.name = "shapes_val"
    if config.dtype == "auto":  # smoke runs and the tests compute alike on every CPU
        config.dtype = "float32"
    config.data.num_workers = 0
    config.data.shapes.num_train = 16
    config.data.shapes.num_val = 4
    config.data.shapes.image_size = 128
    config.model.num_classes = config.data.shapes.num_classes + 1
    config.input.min_size_train = (128,)
    config.input.max_size_train = 128
    config.input.min_size_test = 128
    config.input.max_size_test = 128
    config.model.rpn.pre_nms_top_n_train = 200
    config.model.rpn.post_nms_top_n_train = 100
    config.model.rpn.pre_nms_top_n_test = 100
    config.model.rpn.post_nms_top_n_test = 50
    config.model.roi_heads.batch_size_per_image = 32
    config.solver.ims_per_batch = 2
    config.solver.max_iter = 4
    config.solver.steps = (3,)
    config.solver.warmup_iters = 2
    # From random init (no ImageNet weights) a FrozenBN ResNet-50/101 diverges in 2-3 steps.
    config.solver.clip_grad_norm = config.solver.clip_grad_norm or 1.0
    config.solver.checkpoint_period = 2
    config.test.ims_per_batch = 2
    config.eval.period = 0
    config.log_period = 1
    config.bench.iters = 2
    config.bench.warmup = 1


def shrink_to_tiny(config: ml_collections.ConfigDict) -> None:
    """`runlocal`, smaller still: 64 px images, a width-16 network, 8 training images, 4 steps,
    deterministic, no final evaluation. About 0.1 s a step on 2 CPU cores: for tests of the
    training machinery (resume, faults, DDP), not of accuracy."""
    shrink_for_local_run(config)
    config.data.shapes.num_train = 8
    config.data.shapes.num_val = 2
    config.data.shapes.image_size = 64
    config.input.min_size_train = (64,)
    config.input.max_size_train = 64
    config.input.min_size_test = 64
    config.input.max_size_test = 64
    config.model.backbone.width = 16
    config.model.backbone.fpn_channels = 32
    config.model.box_head.fc_dim = 64
    config.model.mask_head.conv_dim = 16
    config.model.mask_head.num_conv = 1
    config.eval.final = False
    config.deterministic = True
