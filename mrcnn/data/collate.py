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


# ----------------------------------------------------------------------------- fixed shapes
# `perf.pad_to`: every batch is padded to exactly one of two shapes, (H, W) for landscape-or-
# square images and (W, H) for portrait ones, so the fixed-shape part of the model (backbone,
# FPN, RPN head; CUDA graphs) only ever sees those two. The data pipeline already groups
# training batches by orientation (samplers.py, `data.aspect_ratio_grouping`), and resizing
# keeps each image's orientation, so one orientation per training batch is the normal case.
# A training batch that still mixes them (grouping off, or a dataset too small for one whole
# group batch) is an error: padding it would need a third, square shape. Test batches come in
# image-id order and mix orientations freely: `split_by_orientation` cuts them into one batch
# per orientation instead.


def is_portrait(size: tuple[int, int]) -> bool:
    """(h, w) -> True when h > w; square counts as landscape (samplers.aspect_groups agrees)."""
    return int(size[0]) > int(size[1])


def orientation_shape(portrait: bool, pad_to: tuple[int, int]) -> tuple[int, int]:
    """The fixed (H, W) of one orientation: `pad_to` = (short, long) as is for landscape-or-square
    batches, transposed for portrait ones."""
    h, w = int(pad_to[0]), int(pad_to[1])
    return (w, h) if portrait else (h, w)


def fixed_shape(
    sizes: list[tuple[int, int]], pad_to: tuple[int, int], names: list[str] | None = None
) -> tuple[int, int]:
    """The (H, W) a batch of images with (h, w) `sizes` is padded to under `perf.pad_to`.

    Raises ValueError for a batch mixing orientations, or for an image larger than its shape
    (naming the image when `names` is given, and the config key).
    """
    if not sizes:
        raise ValueError("an empty batch has no shape")
    portrait = {is_portrait(s) for s in sizes}
    if len(portrait) > 1:
        raise ValueError(
            f"config.perf.pad_to={tuple(pad_to)!r}: the batch mixes landscape and portrait images "
            f"(sizes {sizes}); training batches must be grouped by orientation "
            "(config.data.aspect_ratio_grouping=True and a dataset with at least one whole "
            "batch per orientation), test batches are split with split_by_orientation"
        )
    H, W = orientation_shape(portrait.pop(), pad_to)
    for i, (h, w) in enumerate(sizes):
        if h > H or w > W:
            who = names[i] if names is not None else f"image {i} of the batch"
            raise ValueError(
                f"config.perf.pad_to={tuple(pad_to)!r}: {who} is {h}x{w} after resizing, larger "
                f"than its padded shape {H}x{W}; raise perf.pad_to to cover "
                "input.max_size_* (rounded up to input.size_divisibility)"
            )
    return H, W


def pad_images_to(images: ImageBatch, shape: tuple[int, int]) -> ImageBatch:
    """A copy of `images` whose tensor is exactly [B, C, *shape], on the same device and in the
    same memory format. Each image's pixels keep their top-left place; everything else is 0.

    Works from any collated tensor, even one larger than `shape` in a dimension (a mixed batch
    padded to its largest image), as long as every image itself fits in `shape`.
    """
    H, W = int(shape[0]), int(shape[1])
    x = images.tensor
    for h, w in images.image_sizes:
        if h > H or w > W:
            raise ValueError(f"an image of {h}x{w} does not fit in the padded shape {H}x{W}")
    if tuple(x.shape[-2:]) == (H, W):
        return ImageBatch(x, list(images.image_sizes))
    fmt = (torch.channels_last if x.dim() == 4 and x.shape[1] > 1
           and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    out = x.new_zeros((x.shape[0], x.shape[1], H, W)).contiguous(memory_format=fmt)
    # The collated padding is already zero, so the overlap is copied whole.
    h, w = min(H, x.shape[-2]), min(W, x.shape[-1])
    out[:, :, :h, :w].copy_(x[:, :, :h, :w])
    return ImageBatch(out, list(images.image_sizes))


def _names(batch: Batch) -> list[str]:
    return [f"image {info.image_id} ({info.file_name})" for info in batch.infos]


def pad_batch_to(batch: Batch, pad_to: tuple[int, int]) -> Batch:
    """`batch` with its images padded to their orientation's fixed shape (see `fixed_shape`);
    a mixed or too-large batch is a ValueError naming the image and `perf.pad_to`."""
    shape = fixed_shape(batch.images.image_sizes, pad_to, _names(batch))
    return Batch(pad_images_to(batch.images, shape), batch.infos, batch.targets)


def split_by_orientation(batch: Batch, pad_to: tuple[int, int]) -> list[Batch]:
    """One batch per orientation present (landscape first), each padded to its fixed shape;
    the images keep their relative order. A single-orientation batch gives [pad_batch_to(...)]."""
    sizes = batch.images.image_sizes
    groups = [[i for i, s in enumerate(sizes) if is_portrait(s) == p] for p in (False, True)]
    groups = [g for g in groups if g]
    if len(groups) <= 1:
        return [pad_batch_to(batch, pad_to)]
    out = []
    for idx in groups:
        index = torch.tensor(idx, device=batch.images.tensor.device)
        part = Batch(
            ImageBatch(batch.images.tensor.index_select(0, index), [sizes[i] for i in idx]),
            [batch.infos[i] for i in idx],
            None if batch.targets is None else [batch.targets[i] for i in idx],
        )
        out.append(pad_batch_to(part, pad_to))
    return out
