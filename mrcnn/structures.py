"""The few data structures that cross module boundaries.

Conventions used everywhere in the project:
- boxes are float tensors [N, 4] in (x1, y1, x2, y2), absolute pixels of the *resized* image
  unless a name says otherwise (`orig_` = original image pixels);
- labels are int64: 0 is background, 1..num_classes-1 are the contiguous foreground classes;
  matcher outputs use -1 for "below the background threshold" and -2 for "ignore";
- image sizes are (height, width).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor


@dataclasses.dataclass
class ImageBatch:
    """Normalized images zero-padded to one size.

    tensor: [B, 3, H, W] float, normalized; padding (right and bottom) is exactly 0.
    image_sizes: per image (h, w) after resizing, before padding.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]

    def to(self, device, non_blocking: bool = False) -> "ImageBatch":
        return ImageBatch(self.tensor.to(device, non_blocking=non_blocking), self.image_sizes)

    def __len__(self) -> int:
        return len(self.image_sizes)


@dataclasses.dataclass
class InstanceMasks:
    """Ground-truth masks of one image's instances, polygons kept as polygons.

    polygons: one list per instance of float32 tensors [2k] (x0, y0, x1, y1, ...), resized-image
      pixel coordinates; an instance given as RLE has an empty list here and its mask in `bitmasks`.
    bitmasks: optional uint8 [N, H, W] (resized-image size) for RLE instances; rows of
      polygon instances are unused. None when every instance is a polygon.
    """

    polygons: list[list[Tensor]]
    bitmasks: Tensor | None = None

    def __len__(self) -> int:
        return len(self.polygons)

    def is_polygon(self) -> list[bool]:
        return [len(p) > 0 for p in self.polygons]

    def to(self, device, non_blocking: bool = False) -> "InstanceMasks":
        return InstanceMasks(
            [[p.to(device, non_blocking=non_blocking) for p in inst] for inst in self.polygons],
            None if self.bitmasks is None else self.bitmasks.to(device, non_blocking=non_blocking),
        )


@dataclasses.dataclass
class Targets:
    """Ground truth of one image, in resized-image pixels.

    boxes: float32 [N, 4] xyxy; labels: int64 [N] in 1..num_classes-1; masks: InstanceMasks.
    """

    boxes: Tensor
    labels: Tensor
    masks: InstanceMasks | None = None

    def to(self, device, non_blocking: bool = False) -> "Targets":
        return Targets(
            self.boxes.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            None if self.masks is None else self.masks.to(device, non_blocking=non_blocking),
        )


@dataclasses.dataclass
class ImageInfo:
    """What is needed to map predictions back to the dataset: id, file, sizes."""

    image_id: int
    file_name: str
    orig_size: tuple[int, int]  # (h, w) of the file as decoded
    size: tuple[int, int]  # (h, w) after resizing (before padding)
    flipped: bool = False


@dataclasses.dataclass
class Batch:
    """One batch from the data loader."""

    images: ImageBatch
    infos: list[ImageInfo]
    targets: list[Targets] | None = None

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            self.infos,
            None
            if self.targets is None
            else [t.to(device, non_blocking=non_blocking) for t in self.targets],
        )

    def pin_memory(self) -> "Batch":
        self.images.tensor = self.images.tensor.pin_memory()
        return self


@dataclasses.dataclass
class Detections:
    """Detections of one image.

    boxes: float32 [K, 4] xyxy; scores: float32 [K]; labels: int64 [K] (contiguous, >= 1);
    masks: float32 [K, 1, M, M] mask-head probabilities in the box (before pasting), or, after
    `paste`, uint8/bool [K, H, W] full-image masks. Coordinates are those of the image the
    detections were last rescaled to.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device) -> "Detections":
        return Detections(
            self.boxes.to(device),
            self.scores.to(device),
            self.labels.to(device),
            None if self.masks is None else self.masks.to(device),
        )


def empty_detections(device: torch.device | str = "cpu") -> Detections:
    return Detections(
        torch.zeros((0, 4), device=device),
        torch.zeros((0,), device=device),
        torch.zeros((0,), dtype=torch.int64, device=device),
        None,
    )
