"""Batching: zero-padding images to one size and assembling `Batch` objects."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mrcnn.structures import Batch, ImageBatch


def padded_size(sizes: list[tuple[int, int]], size_divisibility: int) -> tuple[int, int]:
    """The (H, W) every image of a batch is padded to: the largest h and w, rounded up to a
    multiple of `size_divisibility` (0 or 1: no rounding)."""
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    if size_divisibility > 1:
        d = float(size_divisibility)
        h, w = int(math.ceil(h / d) * d), int(math.ceil(w / d) * d)
    return h, w


def collate_images(images: list[Tensor], size_divisibility: int) -> ImageBatch:
    """Normalized float [3, h_i, w_i] images -> ImageBatch with tensor [B, 3, H, W].

    Each image sits in the top-left corner; the padding on the right and bottom is exactly 0
    (torchvision's `batch_images`). image_sizes keeps each (h_i, w_i). An empty list gives a
    [0, 3, 0, 0] tensor.
    """
    if not images:
        return ImageBatch(torch.zeros((0, 3, 0, 0)), [])
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    h, w = padded_size(sizes, size_divisibility)
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return ImageBatch(out, sizes)


def collate_train(samples: list[dict[str, Any]], size_divisibility: int) -> tuple[Batch, list]:
    """Training samples (dicts with image, info, target, skipped) -> (Batch, skipped files).

    The skipped files (images replaced because they could not be read) travel next to the batch
    so the main process can count them; worker processes cannot update its counters.
    """
    images = collate_images([s["image"] for s in samples], size_divisibility)
    batch = Batch(images, [s["info"] for s in samples], [s["target"] for s in samples])
    return batch, [f for s in samples for f in s["skipped"]]


def collate_test(
    samples: list[dict[str, Any] | None], size_divisibility: int
) -> tuple[Batch, list]:
    """Test samples -> (Batch without targets, skipped files); unreadable images (None when
    `data.on_bad_image` is skip) are left out of the batch."""
    good = [s for s in samples if s is not None and s.get("image") is not None]
    skipped = [f for s in samples if s is not None for f in s.get("skipped", [])]
    images = collate_images([s["image"] for s in good], size_divisibility)
    return Batch(images, [s["info"] for s in good], None), skipped
