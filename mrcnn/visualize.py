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


# ----------------------------------------------------------------------------- ground truth,
# side-by-side panels and contact sheets (the analysis pages)


def draw_instances(
    image: Tensor,
    boxes: Tensor,
    colors: Sequence[tuple[int, int, int]],
    texts: Sequence[str] | None = None,
    masks: Tensor | None = None,
    *,
    alpha: float = 0.45,
    box_width: int = 2,
    font: str | None = None,
    font_size: int | None = None,
) -> Tensor:
    """Any instances (ground truth, marked detections) drawn like `draw_detections`.

    image: uint8 [3, H, W]; boxes: float [K, 4] xyxy in its pixels; colors: K RGB triples;
    texts: K labels (None: no text); masks: bool/uint8 [K, H, W] or None. Later instances are
    drawn over earlier ones. font: a TrueType file for the texts at font_size (None: PIL's
    small bitmap font). Returns a new uint8 [3, H, W] tensor.
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"expected a uint8 [3, H, W] image, got {image.dtype} {tuple(image.shape)}"
        )
    if boxes.shape[0] == 0:
        return image.clone()
    h, w = image.shape[1:]
    out = image.cpu()
    if masks is not None and masks.shape[0]:
        if tuple(masks.shape[-2:]) != (h, w):
            raise ValueError(f"masks are {tuple(masks.shape[-2:])}, the image is {(h, w)}")
        out = blend_masks(out, masks.cpu(), list(colors), alpha)
    boxes = boxes.detach().cpu().float().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision warns about its default font size
        out = draw_bounding_boxes(
            out, boxes, labels=list(texts) if texts is not None else None,
            colors=list(colors), width=box_width, fill_labels=texts is not None,
            font=font, font_size=font_size if font else None,
        )
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def with_caption(image: Tensor, lines: Sequence[str], font_size: int = 13) -> Tensor:
    """The image above a white band holding `lines` of black text; uint8 [3, H + band, W]."""
    import numpy as np
    from PIL import Image, ImageDraw

    w = image.shape[2]
    font = _font(font_size)
    line_h = font_size + 4
    band = Image.new("RGB", (int(w), line_h * len(lines) + 6), "white")
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * line_h), line, fill="black", font=font)
    band_t = torch.from_numpy(np.asarray(band).copy()).permute(2, 0, 1)
    return torch.cat([image.cpu(), band_t], dim=1)


def _fit(image: Tensor, height: int, width: int) -> Tensor:
    """Pasted at the top left of a white height x width canvas."""
    canvas = torch.full((3, height, width), 255, dtype=torch.uint8)
    canvas[:, : image.shape[1], : image.shape[2]] = image
    return canvas


def side_by_side(images: Sequence[Tensor], gap: int = 8) -> Tensor:
    """uint8 [3, H, W] images in one row, top-aligned on white, `gap` pixels apart."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    height = max(int(i.shape[1]) for i in images)
    parts = []
    for k, img in enumerate(images):
        if k:
            parts.append(torch.full((3, height, gap), 255, dtype=torch.uint8))
        parts.append(_fit(img.cpu(), height, int(img.shape[2])))
    return torch.cat(parts, dim=2)


def contact_sheet(images: Sequence[Tensor], columns: int = 4, tile: int = 256,
                  gap: int = 6) -> Tensor:
    """Images scaled to fit `tile` x `tile` (never enlarged past 2x), in a grid of `columns`."""
    import torch.nn.functional as F

    if not images:
        raise ValueError("contact_sheet needs at least one image")
    tiles = []
    for img in images:
        h, w = int(img.shape[1]), int(img.shape[2])
        s = min(tile / h, tile / w, 2.0)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        small = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear",
                              antialias=True, align_corners=False)[0]
        tiles.append(_fit(small.round().clamp(0, 255).to(torch.uint8), tile, tile))
    columns = max(1, min(columns, len(tiles)))
    rows = []
    for r in range(0, len(tiles), columns):
        row = tiles[r : r + columns]
        row += [torch.full((3, tile, tile), 255, dtype=torch.uint8)] * (columns - len(row))
        rows.append(side_by_side(row, gap))
    sep = torch.full((3, gap, rows[0].shape[2]), 255, dtype=torch.uint8)
    out = [rows[0]]
    for row in rows[1:]:
        out += [sep, row]
    return torch.cat(out, dim=1)


def save_png(image: Tensor, path: str) -> str:
    """uint8 [3, H, W] -> a PNG at `path`, written to a temporary name and renamed."""
    import io
    import os
    import tempfile

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy()).save(buf, format="PNG")
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    with os.fdopen(fd, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)
    return path


def enlarge(image: Tensor, min_side: int = 384) -> tuple[Tensor, int]:
    """(image repeated by the whole factor s that brings its long side near `min_side`, s):
    labels drawn on a 128-pixel image would cover it. s is 1 for images that large already."""
    s = max(1, int(min_side) // max(int(image.shape[1]), int(image.shape[2])))
    if s == 1:
        return image, 1
    return image.repeat_interleave(s, -2).repeat_interleave(s, -1), s
