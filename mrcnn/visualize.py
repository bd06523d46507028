"""Drawing detections onto images (predict's PNGs and the TensorBoard images of evaluation)."""

from __future__ import annotations

import colorsys
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from mrcnn.structures import Detections

_GOLDEN = 0.618033988749895


def class_color(label: int) -> tuple[int, int, int]:
    """A fixed, saturated RGB colour per label: hues spaced by the golden ratio, so that
    neighbouring labels differ strongly and the colour of a class never changes between images."""
    h = (0.12 + label * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _name(names: Mapping[int, str] | Sequence[str], label: int) -> str:
    if isinstance(names, Mapping):
        return names.get(label, str(label))
    return names[label] if 0 <= label < len(names) else str(label)


def blend_masks(
    image: Tensor, masks: Tensor, colors: Sequence[tuple[int, int, int]], alpha: float
) -> Tensor:
    """Each mask's pixels blended towards its colour: out = (1 - alpha) * image + alpha * colour.

    image: uint8 [3, H, W]; masks: bool/uint8 [K, H, W]; colors: K RGB triples. Where masks
    overlap, the later one wins (pass them in increasing score). torchvision's
    draw_segmentation_masks blacks out overlaps instead, and costs one boolean-indexed copy of the
    image per mask (seconds for 100 masks at 800x1200); here it is one pass over the image.
    """
    if masks.shape[0] == 0:
        return image.clone()
    k = masks.shape[0]
    # top[y, x] = 1 + the last mask covering the pixel (0: none), as one max over the masks;
    # uint8 arithmetic when the indices fit (100 masks at 800x1200: tens of ms).
    dtype = torch.uint8 if k < 256 else torch.int32
    index = torch.arange(1, k + 1, dtype=dtype)[:, None, None]
    top = (masks.bool().to(dtype) * index).amax(0).long()
    palette = torch.tensor([(0, 0, 0), *colors], dtype=torch.float32)  # [K + 1, 3]
    blended = image.float() * (1 - alpha) + palette[top].permute(2, 0, 1) * alpha
    return torch.where(top > 0, blended.round().clamp(0, 255).to(torch.uint8), image)


def draw_detections(
    image: Tensor,
    det: Detections,
    names: Mapping[int, str] | Sequence[str],
    score_thresh: float = 0.0,
    *,
    alpha: float = 0.5,
    box_width: int = 2,
) -> Tensor:
    """The image with the detections scoring >= score_thresh drawn on it.

    image: uint8 [3, H, W] RGB, original size. det: in original-image pixels: boxes float [K, 4]
      xyxy, scores [K], labels int64 [K] (>= 1), masks uint8/bool [K, H, W] or None.
    names: label -> class name; a sequence is indexed by label (so names[0] is the background).
      An unknown label is written as its number.
    Returns a new uint8 [3, H, W] tensor: each mask blended in its class colour (alpha, see
      `blend_masks`), each box outlined in it (torchvision's draw_bounding_boxes) with the text
      "name 0.93" (black on the class colour). Where masks overlap, the most confident detection
      is on top.
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"expected a uint8 [3, H, W] image, got {image.dtype} {tuple(image.shape)}"
        )
    h, w = image.shape[1:]
    keep = (det.scores >= score_thresh).nonzero().flatten().cpu()
    if keep.numel() == 0:
        return image.clone()
    order = keep[det.scores.cpu()[keep].argsort(stable=True)]  # ascending score
    labels = det.labels.cpu()[order].tolist()
    scores = det.scores.cpu()[order].tolist()
    colors = [class_color(int(lab)) for lab in labels]
    out = image.cpu()
    if det.masks is not None:
        masks = det.masks.cpu()[order]
        if masks.shape[-2:] != (h, w):
            raise ValueError(f"masks are {tuple(masks.shape[-2:])}, the image is {(h, w)}")
        out = blend_masks(out, masks, colors, alpha)
    boxes = det.boxes.cpu().float()[order]
    # Clamp into the image and keep x1 <= x2: torchvision rejects inverted boxes.
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2])
    texts = [f"{_name(names, int(lab))} {s:.2f}" for lab, s in zip(labels, scores)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision warns about its default font size
        # Black text on a patch of the class colour: readable over the mask of the same colour.
        out = draw_bounding_boxes(
            out, boxes, labels=texts, colors=colors, width=box_width, fill_labels=True
        )
    return out
