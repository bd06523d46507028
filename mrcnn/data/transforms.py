"""Image and annotation transforms: normalize, resize, horizontal flip.

The image path computes exactly what torchvision's `GeneralizedRCNNTransform` computes (normalize
the float image, then bilinear resize with `recompute_scale_factor=True`), so weights trained
with torchvision see the same inputs. Annotations follow the image: boxes are scaled per axis by
new / old size (torchvision's `resize_boxes`), polygons likewise, bitmasks by nearest resize to
the image's new size; a flip maps x to w - x (boxes: x1' = w - x2, x2' = w - x1).

All coordinates are absolute pixels, xyxy for boxes; sizes are (height, width).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class ScaleInfo:
    """How `preprocess` changed an image: what is needed to map annotations or predictions.

    orig_size: (h, w) of the decoded image; size: (h, w) after resizing; scale: the factor
    given to the resize (the actual per-axis factors are size / orig_size); flipped: whether the
    resized image was mirrored left-right.
    """

    orig_size: tuple[int, int]
    size: tuple[int, int]
    scale: float
    flipped: bool = False


def resize_scale(height: int, width: int, min_size: float, max_size: float) -> float:
    """The factor that brings the short side to `min_size` unless the long side would pass
    `max_size` (torchvision's rule)."""
    return min(float(min_size) / min(height, width), float(max_size) / max(height, width))


def normalize(
    image: Tensor, mean: Sequence[float], std: Sequence[float], to_bgr255: bool = False
) -> Tensor:
    """uint8 or float [3, H, W] RGB -> normalized float32.

    Default: RGB in [0, 1], (x - mean) / std (torchvision). to_bgr255: BGR in [0, 255] minus the
    mean only (MSRA / caffe2 weights; `mean` is then in BGR 0..255 units and `std` is unused).
    """
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    m = torch.as_tensor(mean, dtype=x.dtype)[:, None, None]
    if to_bgr255:
        return x.flip(0) * 255.0 - m
    s = torch.as_tensor(std, dtype=x.dtype)[:, None, None]
    return (x - m) / s


def resize_image(image: Tensor, min_size: float, max_size: float) -> tuple[Tensor, float]:
    """Float [C, H, W] -> (bilinearly resized [C, h, w], the scale factor given).

    Each side is at least 1 px: a thin strip (4000 x 1) would floor to 0 rows, which no
    convolution takes. Only then is the size given explicitly; every other image takes
    torchvision's scale-factor path (and its exact numbers).
    """
    h, w = image.shape[-2:]
    scale = resize_scale(h, w, min_size, max_size)
    # interpolate's output size with recompute_scale_factor: floor(side * scale), in double.
    if math.floor(h * scale) < 1 or math.floor(w * scale) < 1:
        size = (max(1, math.floor(h * scale)), max(1, math.floor(w * scale)))
        out = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        return out, scale
    out = F.interpolate(
        image[None],
        scale_factor=scale,
        mode="bilinear",
        recompute_scale_factor=True,
        align_corners=False,
    )[0]
    return out, scale


def resize_boxes(boxes: Tensor, orig_size: Sequence[int], new_size: Sequence[int]) -> Tensor:
    """[N, 4] xyxy scaled by new / old size per axis, with float32 ratios like torchvision."""
    rh = torch.tensor(new_size[0], dtype=torch.float32) / torch.tensor(
        orig_size[0], dtype=torch.float32
    )
    rw = torch.tensor(new_size[1], dtype=torch.float32) / torch.tensor(
        orig_size[1], dtype=torch.float32
    )
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * rw, y1 * rh, x2 * rw, y2 * rh), dim=1)


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror [N, 4] xyxy boxes in an image `width` wide: x1' = w - x2, x2' = w - x1."""
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=1)


def resize_polygon(poly: Tensor, orig_size: Sequence[int], new_size: Sequence[int]) -> Tensor:
    """[2k] (x0, y0, x1, y1, ...) scaled like boxes."""
    rh = torch.tensor(new_size[0], dtype=torch.float32) / torch.tensor(
        orig_size[0], dtype=torch.float32
    )
    rw = torch.tensor(new_size[1], dtype=torch.float32) / torch.tensor(
        orig_size[1], dtype=torch.float32
    )
    out = poly.clone()
    out[0::2] *= rw
    out[1::2] *= rh
    return out


def flip_polygon(poly: Tensor, width: int) -> Tensor:
    """Mirror a [2k] polygon: x' = w - x (pixel i covers [i, i + 1), so it lands on w - 1 - i)."""
    out = poly.clone()
    out[0::2] = width - out[0::2]
    return out


def resize_bitmasks(masks: Tensor, new_size: Sequence[int]) -> Tensor:
    """uint8 [N, H, W] -> uint8 [N, h, w], nearest (torchvision's mask resize)."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, int(new_size[0]), int(new_size[1])))
    return F.interpolate(masks[:, None], size=(int(new_size[0]), int(new_size[1])), mode="nearest")[
        :, 0
    ]


def preprocess(
    image: Tensor,
    input_cfg: ml_collections.ConfigDict,
    train: bool,
    rng: np.random.Generator | None = None,
) -> tuple[Tensor, ScaleInfo]:
    """uint8 [3, H, W] RGB -> (normalized float32 [3, h, w], ScaleInfo).

    Test: short side `input.min_size_test`, long side at most `input.max_size_test`.
    Train: the short side is drawn from `input.min_size_train` (multi-scale), then the image is
    flipped with probability `input.flip_prob`; `rng` makes both draws (a fresh generator when
    None). The draws are always made in that order, so one rng state gives one augmentation.
    """
    orig_size = (int(image.shape[-2]), int(image.shape[-1]))
    flipped = False
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        sizes = list(input_cfg.min_size_train)
        min_size = sizes[int(rng.integers(len(sizes)))]
        max_size = input_cfg.max_size_train
        flipped = bool(rng.random() < input_cfg.flip_prob)
    else:
        min_size, max_size = input_cfg.min_size_test, input_cfg.max_size_test
    x = normalize(image, input_cfg.pixel_mean, input_cfg.pixel_std, input_cfg.to_bgr255)
    x, scale = resize_image(x, min_size, max_size)
    if flipped:
        x = x.flip(-1)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    return x.contiguous(), ScaleInfo(orig_size, size, scale, flipped)
