"""Large-scale jitter (Ghiasi et al., "Simple Copy-Paste", 2021; torchvision's `lsj` recipe):
random scale, horizontal flip, then a random crop or padding to a fixed square.

For a training image of (h, w) and `input.lsj_size` S: a factor u is drawn uniformly from
`input.lsj_scale_range` (0.1..2.0 in the recipes), the image is resized to
(int(h r), int(w r)) with r = u * min(S / h, S / w) (torchvision's ScaleJitter), flipped with
probability `input.flip_prob`, then a window of at most S x S at a uniformly drawn offset is cut
(FixedSizeCrop) and the result zero-padded at the bottom / right to exactly S x S (zero is the
mean colour after normalization). Every image of a batch has the same shape.

Annotations follow: polygons are clipped to the window (Sutherland-Hodgman against its four
sides), RLE masks cropped; a box becomes its crop-clipped original intersected with the extent
of what is left of its mask, so a half-cropped object gets a box around its visible part; an
instance with nothing left (no polygon area, no mask pixel, an empty box) is dropped. An image
may keep no instance: it trains as negatives only (the model handles empty targets).

The draws come in a fixed order (scale, flip, crop y, crop x) from the sample's generator, which
the training sampler seeds from (seed, step, position) (see samplers.py): the same step gives the
same crops after a resume, whatever the workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mrcnn.data import transforms as T
from mrcnn.structures import InstanceMasks, Targets


@dataclasses.dataclass(frozen=True)
class Jitter:
    """One LSJ draw: resized size (h, w), flip, crop offset (y, x) and the output side."""

    size: tuple[int, int]
    scale: float
    flipped: bool
    offset: tuple[int, int]
    out: int


def draw(
    height: int, width: int, out: int, scale_range, flip_prob: float, rng: np.random.Generator
) -> Jitter:
    """The jitter of an image of (height, width); always four draws from `rng`."""
    u = float(rng.uniform(float(scale_range[0]), float(scale_range[1])))
    r = u * min(out / height, out / width)
    size = (max(1, int(height * r)), max(1, int(width * r)))
    flipped = bool(rng.random() < flip_prob)
    # rng.integers(0, 1) consumes nothing: floats keep the stream position independent of
    # whether the image needed a crop.
    span = (max(size[0] - out, 0), max(size[1] - out, 0))
    oy = min(int(rng.random() * (span[0] + 1)), span[0])
    ox = min(int(rng.random() * (span[1] + 1)), span[1])
    return Jitter(size, r, flipped, (oy, ox), out)


def _clip_halfplane(pts: np.ndarray, axis: int, bound: float, keep_above: bool) -> np.ndarray:
    """Sutherland-Hodgman step: the closed polygon pts [n, 2] clipped to x_axis >= bound
    (keep_above) or <= bound. For each edge prev -> cur it emits the crossing point when the
    edge crosses the line, then cur when cur is inside, in that order."""
    if len(pts) == 0:
        return pts
    prev = np.roll(pts, 1, axis=0)
    c, p = pts[:, axis], prev[:, axis]
    inside = c >= bound if keep_above else c <= bound
    was_inside = p >= bound if keep_above else p <= bound
    cross = inside != was_inside
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(cross, (bound - p) / (c - p), 0.0)
    hit = prev + t[:, None] * (pts - prev)
    hit[:, axis] = bound  # exactly on the line, whatever the rounding of t
    both = np.stack([hit, pts], axis=1)  # [n, 2 (crossing, cur), 2 (x, y)]
    keep = np.stack([cross, inside], axis=1)
    return both[keep]


def clip_polygon(poly: np.ndarray, width: float, height: float) -> np.ndarray:
    """[2k] (x0, y0, ...) clipped to the rectangle [0, width] x [0, height] -> [2m]
    (empty when nothing of positive area is left)."""
    pts = poly.reshape(-1, 2).astype(np.float64)
    lo, hi = pts.min(0), pts.max(0)
    if lo[0] >= 0 and lo[1] >= 0 and hi[0] <= width and hi[1] <= height:
        return poly  # inside already: unchanged bits
    sides = ((0, 0.0, True), (0, width, False), (1, 0.0, True), (1, height, False))
    for axis, bound, above in sides:
        pts = _clip_halfplane(pts, axis, bound, above)
    if len(pts) < 3:
        return poly[:0]
    x, y = pts[:, 0], pts[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return pts.reshape(-1).astype(np.float32) if area > 0 else poly[:0]


def _extent(parts: list[np.ndarray]) -> np.ndarray:
    pts = np.concatenate([p.reshape(-1, 2) for p in parts])
    return np.array([*pts.min(0), *pts.max(0)], dtype=np.float32)


def _mask_extent(mask: Tensor) -> np.ndarray | None:
    ys = torch.nonzero(mask.any(1)).flatten()
    xs = torch.nonzero(mask.any(0)).flatten()
    if len(ys) == 0:
        return None
    # Pixel i covers [i, i + 1): the box is [first, last + 1).
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float32)


def _clipped_polygons(parts: list[Tensor], ox: int, oy: int, cw: int, ch: int) -> list[Tensor]:
    out = []
    for p in parts:
        q = p.numpy().astype(np.float32).copy()
        q[0::2] -= ox
        q[1::2] -= oy
        q = clip_polygon(q, cw, ch)
        if len(q):
            out.append(torch.from_numpy(np.ascontiguousarray(q)))
    return out


def crop_targets(target: Targets, j: Jitter) -> Targets:
    """`target` in the resized, flipped image -> in the jittered S x S image (see module doc)."""
    oy, ox = j.offset
    ch, cw = min(j.size[0], j.out), min(j.size[1], j.out)
    shift = torch.tensor([ox, oy, ox, oy], dtype=torch.float32)
    limit = torch.tensor([cw, ch, cw, ch], dtype=torch.float32)
    boxes = torch.minimum((target.boxes - shift).clamp(min=0), limit)
    masks = target.masks
    bitmasks = None
    if masks is not None and masks.bitmasks is not None:
        bitmasks = masks.bitmasks[:, oy : oy + ch, ox : ox + cw]
    polygons: list[list[Tensor]] = []
    for i in range(len(boxes)):
        parts = _clipped_polygons(masks.polygons[i], ox, oy, cw, ch) if masks is not None else []
        polygons.append(parts)
        if masks is None:
            continue  # boxes only: the clipped box
        if parts:
            ext = _extent([q.numpy() for q in parts])
        elif not masks.polygons[i] and bitmasks is not None:
            ext = _mask_extent(bitmasks[i])  # an RLE instance
        else:
            ext = None  # a polygon instance cropped away entirely
        if ext is None:
            boxes[i] = 0.0  # empty: dropped below
            continue
        ext = torch.from_numpy(ext)
        boxes[i, :2] = torch.maximum(boxes[i, :2], ext[:2])
        boxes[i, 2:] = torch.minimum(boxes[i, 2:], ext[2:])
    keep = torch.nonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).flatten()
    out_boxes, labels = boxes[keep], target.labels[keep]
    if masks is None:
        return Targets(out_boxes, labels, None)
    kept_polys = [polygons[i] for i in keep.tolist()]
    if bitmasks is not None:
        rle_kept = any(not p for p in kept_polys)
        bitmasks = F.pad(bitmasks[keep], (0, j.out - cw, 0, j.out - ch)) if rle_kept else None
    return Targets(out_boxes, labels, InstanceMasks(kept_polys, bitmasks))


def jitter_image(image: Tensor, input_cfg: ml_collections.ConfigDict, j: Jitter) -> Tensor:
    """uint8 [3, H, W] -> normalized float32 [3, S, S]: resize, flip, crop, pad."""
    x = T.normalize(image, input_cfg.pixel_mean, input_cfg.pixel_std, input_cfg.to_bgr255)
    downscale = j.size[0] < x.shape[-2] or j.size[1] < x.shape[-1]
    # Antialiased when shrinking (torchvision's ScaleJitter): at u = 0.1 a plain bilinear
    # resize would alias.
    x = F.interpolate(
        x[None], size=j.size, mode="bilinear", align_corners=False, antialias=downscale
    )[0]
    if j.flipped:
        x = x.flip(-1)
    oy, ox = j.offset
    x = x[:, oy : oy + j.out, ox : ox + j.out]
    return F.pad(x, (0, j.out - x.shape[-1], 0, j.out - x.shape[-2])).contiguous()


def lsj_sample(
    image: Tensor,
    input_cfg: ml_collections.ConfigDict,
    rng: np.random.Generator,
    make_targets: Callable[[T.ScaleInfo], Targets],
) -> tuple[Tensor, T.ScaleInfo, Targets]:
    """One jittered training sample: uint8 [3, H, W] -> (normalized float32 [3, S, S],
    ScaleInfo, Targets). `make_targets(info)` maps the annotations into the resized and flipped
    image `info` describes (coco.record_to_targets); they are then cropped with the image.
    The returned ScaleInfo has size (S, S) and the scale of the resize."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    j = draw(h, w, int(input_cfg.lsj_size), input_cfg.lsj_scale_range, input_cfg.flip_prob, rng)
    info = T.ScaleInfo((h, w), j.size, j.scale, j.flipped)
    target = crop_targets(make_targets(info), j)
    return jitter_image(image, input_cfg, j), dataclasses.replace(info, size=(j.out, j.out)), target
