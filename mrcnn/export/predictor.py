"""From lists of images of any sizes to calls of a same-size batch program, and back.

A program (eager DeployModel, .pt2, AOTInductor, onnxruntime) takes uint8 [B, 3, H, W] of one
size and returns the flat outputs of wrapper.OUTPUT_NAMES. `Predictor` groups a list of
images by size (first-appearance order, at most `max_batch` per call), runs the program and
returns one dict per input image, in input order:
  boxes float32 [K, 4] xyxy (original pixels), labels int64 [K] (model labels), scores
  float32 [K], masks uint8 [K, H, W].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

RunBatch = Callable[[Tensor], Sequence[Tensor]]


def group_by_size(images: Sequence[Tensor], max_batch: int) -> list[list[int]]:
    """Indices of `images` in groups of one (H, W), each at most `max_batch` long."""
    groups: dict[tuple[int, int], list[list[int]]] = {}
    for i, im in enumerate(images):
        runs = groups.setdefault(tuple(im.shape[-2:]), [[]])
        if len(runs[-1]) == max_batch:
            runs.append([])
        runs[-1].append(i)
    return [run for runs in groups.values() for run in runs]


def split_outputs(outputs: Sequence[Tensor], count: int) -> list[dict[str, Tensor]]:
    """Flat (boxes, scores, labels, batch_idx, masks) of a `count`-image call -> per image."""
    boxes, scores, labels, img, masks = (torch.as_tensor(o) for o in outputs)
    out = []
    for i in range(count):
        sel = torch.nonzero(img == i).squeeze(1)
        out.append({"boxes": boxes[sel].float(), "labels": labels[sel].long(),
                    "scores": scores[sel].float(), "masks": masks[sel].to(torch.uint8)})
    return out


class Predictor:
    """Callable: list of uint8 [3, H, W] -> list of per-image dicts (see the module doc).

    check: called with (h, w) of each image before it runs (the program's size limits).
    categories: the sidecar's table, [{"label", "id", "name"}], for the caller's use.
    """

    def __init__(self, run_batch: RunBatch, max_batch: int = 8,
                 check: Callable[[int, int], None] | None = None, categories=None):
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.check = check
        self.categories = categories or []

    def __call__(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        for im in images:
            if im.dtype != torch.uint8 or im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"expected uint8 [3, H, W] images, got {im.dtype} "
                                 f"{list(im.shape)}")
            if self.check is not None:
                self.check(int(im.shape[1]), int(im.shape[2]))
        results: list[dict[str, Tensor] | None] = [None] * len(images)
        for idx in group_by_size(images, self.max_batch):
            batch = torch.stack([images[i] for i in idx]).contiguous()
            with torch.inference_mode():
                outputs = self.run_batch(batch)
            for i, det in zip(idx, split_outputs(outputs, len(idx))):
                results[i] = det
        return results  # type: ignore[return-value]
