"""`build(config, device, purpose)`: the one way every mode gets its model.

It builds `config.model`, loads the weights the purpose calls for, moves the model to the device
and applies the fast paths that `fast_paths(config, device, purpose)` decides, so train, eval,
predict, bench and export cannot run different models by accident. What a switch changed is
returned in `Built`, not hidden on the model.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import ml_collections
import torch
from torch import nn

from mrcnn import dist
from mrcnn.build.categories import model_categories
from mrcnn.build.cuda_graphs import CudaGraphs
from mrcnn.build.fast_paths import FastPaths, apply, fast_paths
from mrcnn.config_check import ConfigError
from mrcnn.data import CategoryTable

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Built:
    """A model ready for its purpose, and what was done to it."""

    model: nn.Module
    fast: FastPaths
    purpose: str
    weights: str | None = None  # the file the weights came from (None: initialised here)
    weights_format: str | None = None
    graphs: CudaGraphs | None = None  # perf.cuda_graphs: training graphs are captured by train
    categories: CategoryTable | None = None  # what the labels mean (None: load=False)


def resolve_weights(config: ml_collections.ConfigDict, workdir: str | None) -> tuple[str, str]:
    """The (path, format) of the weights to run: `init.weights` if set, else the workdir's last
    checkpoint. Raises FileNotFoundError naming both places when neither exists."""
    from mrcnn.engine.checkpoint import find_last

    if config.init.weights:
        if not os.path.isfile(config.init.weights):
            raise FileNotFoundError(f"config.init.weights={config.init.weights!r} does not exist")
        return config.init.weights, config.init.format
    last = find_last(workdir) if workdir else None
    if last is not None:
        return last, "native"
    raise FileNotFoundError(
        f"no weights to run: config.init.weights is not set and the workdir {workdir!r} has no "
        "checkpoint (no 'last_checkpoint' file naming an existing one). Train first, or pass "
        "--config.init.weights=PATH (with --config.init.format=native|torchvision).")


def _sync_bn(model: nn.Module, config: ml_collections.ConfigDict,
             device: torch.device) -> nn.Module:
    if config.model.backbone.norm == "SyncBN" and dist.world_size() > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if dist.world_size() > 1 and device.type != "cuda" and any(
            isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        # torch's SyncBatchNorm only synchronizes CUDA tensors; it would fail at the first step.
        raise ConfigError(f"config.model.backbone.norm={config.model.backbone.norm!r}: SyncBN "
                          f"needs CUDA devices; on {device.type} ranks use BN (per-rank "
                          "statistics) or GN")
    return model


def build(config: ml_collections.ConfigDict, device: torch.device, purpose: str,
          workdir: str | None = None, load: bool = True) -> Built:
    """The model of `config` for `purpose` ("train", "eval", "predict", "bench", "export").

    Weights (unless load=False): for train, `init.weights` when set (a resumed run then loads
    its checkpoint over them); for the other purposes, `init.weights` or else the workdir's last
    checkpoint, strict about the class layers (detections of random heads mean nothing), and a
    missing file fails before the slow build. Inference purposes return the model in eval mode.
    `Built.categories` says what its labels mean (mrcnn/build/categories.py).
    """
    fast = fast_paths(config, device, purpose)
    inference = purpose != "train"
    path = fmt = None
    if load and inference:
        path, fmt = resolve_weights(config, workdir)
    elif load and config.init.weights:
        path, fmt = config.init.weights, config.init.format
    # Before the slow build: a table that does not fit model.num_classes fails at once.
    categories = model_categories(config, path, fmt) if load else None
    from mrcnn.modeling import build_model
    from mrcnn.weights import load_weights

    model = build_model(config.model)
    if purpose == "train":
        model = _sync_bn(model, config, device)
    if path is not None:
        load_weights(model, path, fmt, strict_classes=inference)
        log.info("%s model: loaded %s weights from %s", purpose, fmt, path)
    model.to(device)
    apply(model, fast)
    if inference:
        model.eval()
    graphs = None
    if fast.cuda_graphs:
        # DDP wants 11 warm-up iterations before a capture (torch's CUDA graphs notes).
        graphs = CudaGraphs(model, fast.pad_to, warmup_iters=11 if dist.world_size() > 1 else 3)
    log.info("%s model on %s, fast paths: %s, dtype %s%s", purpose, device, fast.describe(),
             fast.dtype, " (config.dtype='auto')" if config.dtype == "auto" else "")
    return Built(model, fast, purpose, path, fmt, graphs, categories)
