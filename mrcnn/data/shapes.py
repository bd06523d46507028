"""The synthetic shapes dataset: COCO-format instance segmentation generated on first use.

Squares, circles and triangles (more shapes when `data.shapes.num_classes` > 3) of random size,
colour, rotation and position, overlapping and occluding each other on textured backgrounds
(noise, gradients, stripes). 1..`max_objects` objects per `image_size` x `image_size` image.
Each instance is annotated with its *visible* region: a fully visible instance as its polygon
(the exact vertices it was drawn from; circles are 24-gons), a partly occluded one as compressed
RLE, one less than 30% visible not at all. bbox and area come from the visible mask.

Shapes are drawn with pycocotools' own polygon rasterizer, so a polygon annotation rasterizes
to exactly the painted pixels. Everything is a function of (`data.shapes.seed`, split, image
index): the same parameters give the same bytes. The dataset lands in
`<data root>/shapes/<parameters>/`, written to a temporary folder and renamed into place, so an
interrupted generation never leaves a half dataset behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import socket
import time

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

log = logging.getLogger(__name__)

SHAPE_NAMES = ("square", "circle", "triangle", "pentagon", "hexagon", "star")
_NUM_VERTICES = {"square": 4, "circle": 24, "triangle": 3, "pentagon": 5, "hexagon": 6, "star": 10}
GENERATOR_VERSION = 1  # bump when the drawing changes: it is part of the folder name
MIN_VISIBLE_FRACTION = 0.3
_SPLIT_CODE = {"train": 0, "val": 1}


@dataclasses.dataclass(frozen=True)
class ShapesParams:
    seed: int = 0
    num_train: int = 2000
    num_val: int = 200
    image_size: int = 128
    num_classes: int = 3
    max_objects: int = 4
    image_format: str = "jpg"  # jpg (quality 95) | png

    def __post_init__(self):
        if not 1 <= self.num_classes <= len(SHAPE_NAMES):
            raise ValueError(
                f"data.shapes.num_classes={self.num_classes}: must be in "
                f"1..{len(SHAPE_NAMES)} ({', '.join(SHAPE_NAMES)})"
            )
        if self.max_objects < 1:
            raise ValueError(f"data.shapes.max_objects={self.max_objects}: must be >= 1")
        if self.image_size < 16:
            raise ValueError(f"data.shapes.image_size={self.image_size}: must be >= 16")
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError("data.shapes.num_train and num_val must be >= 1")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"shapes image_format must be jpg or png, got {self.image_format!r}")

    def key(self) -> str:
        """Folder name: every parameter that changes the files, so a change regenerates."""
        return (
            f"v{GENERATOR_VERSION}_seed{self.seed}_n{self.num_train}-{self.num_val}"
            f"_px{self.image_size}_c{self.num_classes}_o{self.max_objects}_{self.image_format}"
        )

    def num_images(self, split: str) -> int:
        return self.num_train if split == "train" else self.num_val


def dataset_dir(params: ShapesParams, root: str) -> str:
    return os.path.join(root, "shapes", params.key())


def split_paths(params: ShapesParams, split: str, root: str) -> tuple[str, str]:
    """(img_dir, ann_file) of a split."""
    d = dataset_dir(params, root)
    return os.path.join(d, split), os.path.join(d, "annotations", f"instances_{split}.json")


def categories(num_classes: int) -> list[dict]:
    """COCO categories: ids 1..num_classes in SHAPE_NAMES order."""
    return [
        {"id": i + 1, "name": SHAPE_NAMES[i], "supercategory": "shape"} for i in range(num_classes)
    ]


# ----------------------------------------------------------------------------- drawing


def shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """float64 [2k] (x0, y0, ...) vertices of a regular shape of circumradius r (a star
    alternates r and 0.45 r), rounded to 0.01 px: the exact numbers written into the json."""
    n = _NUM_VERTICES[kind]
    t = angle + 2 * np.pi * np.arange(n) / n
    radius = np.full(n, r)
    if kind == "star":
        radius[1::2] *= 0.45
    xy = np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)
    return np.round(xy.reshape(-1), 2)


def rasterize_polygons(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """bool [H, W]: the pixels pycocotools assigns to the union of `polygons`."""
    rles = mask_util.frPyObjects(polygons, height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Separable linear upsampling of [k, k, C] to [size, size, C] (smooth noise blobs)."""
    k = grid.shape[0]
    u = np.linspace(0, k - 1, size)
    i0 = np.floor(u).astype(int).clip(0, k - 2)
    t = (u - i0)[:, None, None]
    rows = grid[i0] * (1 - t) + grid[i0 + 1] * t
    t2 = (u - i0)[None, :, None]
    return rows[:, i0] * (1 - t2) + rows[:, i0 + 1] * t2


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c1, c2 = rng.integers(0, 256, (2, 3)).astype(np.float64)
    kind = int(rng.integers(3))
    if kind == 0:  # smooth colour noise around one colour
        k = int(rng.integers(3, 9))
        img = c1 + _upsample(rng.normal(0, 1, (k, k, 3)), size) * rng.uniform(15, 50)
    elif kind == 1:  # linear gradient between two colours
        theta = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(theta) + yy * np.sin(theta)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    else:  # stripes of two colours at a random angle, period and duty cycle
        theta, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        phase = (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform()
        img = np.where((phase % 1.0 < rng.uniform(0.3, 0.7))[..., None], c1, c2)
    return img + rng.normal(0, rng.uniform(2, 8), (size, size, 3))


@dataclasses.dataclass
class Rendered:
    """One generated image. image: uint8 [S, S, 3] RGB; annotations: COCO records without ids
    (category_id, segmentation, bbox, area, iscrowd); visible: bool [n, S, S] the visible
    pixels of each annotated instance (what its annotation must rasterize to)."""

    image: np.ndarray
    annotations: list[dict]
    visible: np.ndarray


def render(params: ShapesParams, split: str, index: int) -> Rendered:
    """Draws image `index` of `split`: a pure function of the parameters and the index."""
    s = params.image_size
    rng = np.random.default_rng([params.seed, _SPLIT_CODE[split], index, GENERATOR_VERSION])
    img = _background(rng, s)
    polys, masks, classes = [], [], []
    for _ in range(int(rng.integers(1, params.max_objects + 1))):
        cls = int(rng.integers(params.num_classes))
        r = rng.uniform(0.1, 0.3) * s
        cx, cy = rng.uniform(r, s - r, size=2)
        poly = shape_polygon(SHAPE_NAMES[cls], cx, cy, r, rng.uniform(0, 2 * np.pi))
        mask = rasterize_polygons([poly.tolist()], s, s)
        # A colour that stands out from what it covers, so every instance is visible.
        under = img[mask].mean(axis=0)
        for _ in range(20):
            colour = rng.integers(0, 256, 3).astype(np.float64)
            if np.abs(colour - under).sum() > 120:
                break
        img[mask] = colour + rng.normal(0, 3, (int(mask.sum()), 3))
        polys.append(poly)
        masks.append(mask)
        classes.append(cls)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    anns, visible = [], []
    covered = np.zeros((s, s), dtype=bool)  # pixels of shapes drawn later (on top)
    for poly, mask, cls in reversed(list(zip(polys, masks, classes))):
        vis = mask & ~covered
        covered |= mask
        full, seen = int(mask.sum()), int(vis.sum())
        if full == 0 or seen < MIN_VISIBLE_FRACTION * full:
            continue
        rle = mask_util.encode(np.asfortranarray(vis.astype(np.uint8)))
        if seen == full:
            segmentation = [poly.tolist()]
        else:
            segmentation = {"size": [s, s], "counts": rle["counts"].decode("ascii")}
        anns.append(
            {
                "category_id": cls + 1,
                "segmentation": segmentation,
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "area": seen,
                "iscrowd": 0,
            }
        )
        visible.append(vis)
    anns.reverse()  # drawing order
    visible.reverse()
    return Rendered(image, anns, np.stack(visible) if visible else np.zeros((0, s, s), bool))


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(image).save(buf, format="JPEG", quality=95)
    else:
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_split(params: ShapesParams, split: str, out_dir: str) -> dict:
    """Writes the images of `split` into out_dir/split and returns its COCO dict."""
    img_dir = os.path.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, anns = [], []
    for index in range(params.num_images(split)):
        r = render(params, split, index)
        file_name = f"{index:06d}.{params.image_format}"
        with open(os.path.join(img_dir, file_name), "wb") as f:
            f.write(_encode(r.image, params.image_format))
        image_id = index + 1
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": params.image_size,
                "width": params.image_size,
            }
        )
        for a in r.annotations:
            anns.append({"id": len(anns) + 1, "image_id": image_id, **a})
    return {
        "info": {
            "description": "mrcnn synthetic shapes",
            "version": GENERATOR_VERSION,
            "split": split,
            "params": dataclasses.asdict(params),
        },
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": categories(params.num_classes),
    }


def generate(params: ShapesParams, out_dir: str) -> None:
    """Writes both splits and their annotation files into out_dir (not atomic by itself)."""
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    for split in ("train", "val"):
        coco = write_split(params, split, out_dir)
        with open(os.path.join(out_dir, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(coco, f, separators=(",", ":"))
    with open(os.path.join(out_dir, "params.json"), "w") as f:
        json.dump(dataclasses.asdict(params), f, indent=1, sort_keys=True)


@contextlib.contextmanager
def _file_lock(path: str):
    """An exclusive lock between processes of this machine (ranks of one node); a no-op where
    fcntl does not exist. Across machines the atomic rename alone keeps the result whole."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _complete(final: str) -> bool:
    return all(
        os.path.isfile(os.path.join(final, p))
        for p in (
            "params.json",
            "annotations/instances_train.json",
            "annotations/instances_val.json",
        )
    )


def ensure_generated(params: ShapesParams, root: str) -> str:
    """Generates the dataset of `params` under `root` unless it is already there; returns its
    folder (`dataset_dir`; each split's paths are `split_paths`).

    Idempotent (a second call is a few stat calls) and atomic: generation writes a temporary
    folder that is renamed into place at the end; leftovers of a killed run are removed.
    """
    final = dataset_dir(params, root)
    if _complete(final):
        return final
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    with _file_lock(os.path.join(parent, f".{params.key()}.lock")):
        if _complete(final):  # another process generated it while we waited
            return final
        host = socket.gethostname()
        prefix = f".tmp-{params.key()}-{host}-"
        for name in os.listdir(parent):  # left by a killed generation on this machine
            if name.startswith(prefix):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        tmp = os.path.join(parent, f"{prefix}{os.getpid()}")
        t0 = time.perf_counter()
        log.info(
            "generating the shapes dataset (%d train + %d val images) in %s",
            params.num_train,
            params.num_val,
            final,
        )
        try:
            generate(params, tmp)
            if os.path.isdir(final) and not _complete(final):  # damaged by hand: replace it
                shutil.rmtree(final)
            try:
                os.rename(tmp, final)
            except OSError:
                if not _complete(final):
                    raise
                # Another machine sharing the folder finished first: keep its copy.
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("shapes dataset ready in %.1f s", time.perf_counter() - t0)
    return final
