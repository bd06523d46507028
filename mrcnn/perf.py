"""Fast paths as config switches (`config.perf`), applied to a built model in one place.

- `perf.channels_last`: NHWC weights (and the training loop feeds NHWC images): faster convs on
  tensor cores and with oneDNN on CPUs.
- `perf.compile`: `torch.compile` of the backbone (+FPN) and the box/mask heads, in place
  (`nn.Module.compile`), so state_dict keys and checkpoints stay the same. The RPN's proposal
  selection and the RoI sampling stay eager (data-dependent shapes); the custom ops have fake
  kernels, so graphs that reach them do not break.
"""

from __future__ import annotations

import logging

import ml_collections
import torch
from torch import nn

log = logging.getLogger(__name__)

COMPILED_PARTS = ("backbone", "rpn", "box_head", "box_predictor", "mask_head", "mask_predictor")


def apply_perf_switches(model: nn.Module, config: ml_collections.ConfigDict) -> nn.Module:
    if config.perf.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.perf.compile:
        parts = []
        for name in COMPILED_PARTS:
            module = getattr(model, name, None)
            if isinstance(module, nn.Module):
                module.compile(dynamic=None)
                parts.append(name)
        log.info("torch.compile: %s", ", ".join(parts))
    return model
