"""Shared helpers of the evaluation / prediction tests: a tiny COCO dataset written to disk, an
"oracle" model that returns its ground truth, a fake data loader and a fake multi-rank `dist`.
tests/coco/test_tiny_coco_fixture.py checks the helpers themselves."""

from __future__ import annotations

import dataclasses
import json
import os
import threading

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import nn

from mrcnn.structures import Batch, Detections, ImageBatch, ImageInfo

CATEGORY_IDS = (1, 5, 90)  # deliberately not contiguous
CATEGORY_NAMES = ("square", "box", "tile")


@dataclasses.dataclass
class TinyCoco:
    """A COCO-format dataset on disk and its ground truth per image in original pixels."""

    img_dir: str
    ann_file: str
    image_ids: list[int]
    file_names: dict[int, str]
    sizes: dict[int, tuple[int, int]]
    gt: dict[int, Detections]  # labels = contiguous 1..3; masks uint8 [K, H, W]
    coco: COCO


def fake_meta(ids_as_labels: bool = False):
    """The model's category table for the tiny dataset (labels 1..3 -> ids 1, 5, 90)."""
    from mrcnn.data import CategoryTable

    return CategoryTable.from_categories(zip(CATEGORY_IDS, CATEGORY_NAMES), ids_as_labels)


def background_level(image_id: int) -> int:
    return 30 + 7 * (image_id % 29)


def make_tiny_coco(root: str, seed: int, num_images: int = 5) -> TinyCoco:
    """`num_images` PNGs (64x64 and 48x64) with 1-3 filled squares each; the squares are
    annotated as polygons. Image ids are sparse (not 0..N-1) and each image's background grey
    level identifies it (`background_level`)."""
    rng = np.random.default_rng(seed)
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    images, anns, file_names, sizes = [], [], {}, {}
    ann_id = 1
    for k in range(num_images):
        image_id = 3 + 11 * k
        h, w = (64, 64) if k % 2 == 0 else (48, 64)
        img = np.full((h, w, 3), background_level(image_id), np.uint8)
        # Squares on a 2x2 grid of disjoint cells so that they never overlap; sizes span the
        # small (< 32^2) and medium COCO area ranges.
        if k == 0:  # one medium object (area >= 32^2), the others are small
            squares = [(40, int(rng.integers(2, 20)), int(rng.integers(2, 20)))]
        else:
            squares = []
            for cell in rng.permutation(4)[: int(rng.integers(1, 4))]:
                cy, cx = divmod(int(cell), 2)
                cell_h, cell_w = h // 2, w // 2
                side = int(rng.integers(6, min(cell_h, cell_w) - 2))
                x = cx * cell_w + 1 + int(rng.integers(0, cell_w - side - 1))
                y = cy * cell_h + 1 + int(rng.integers(0, cell_h - side - 1))
                squares.append((side, x, y))
        for side, x, y in squares:
            img[y : y + side, x : x + side] = rng.integers(230, 256, 3)  # never the background
            cat = int(rng.choice(CATEGORY_IDS))
            poly = [x, y, x + side, y, x + side, y + side, x, y + side]
            anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x, y, side, side],
                    "area": side * side,
                    "iscrowd": 0,
                    "segmentation": [[float(v) for v in poly]],
                }
            )
            ann_id += 1
        name = f"img_{k:02d}.png"
        Image.fromarray(img).save(os.path.join(img_dir, name))
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        file_names[image_id], sizes[image_id] = name, (h, w)
    ann_file = os.path.join(root, "annotations.json")
    with open(ann_file, "w") as f:
        json.dump(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CATEGORY_NAMES)],
            },
            f,
        )
    coco = load_coco(ann_file)
    gt = {i: gt_detections(coco, i) for i in file_names}
    return TinyCoco(img_dir, ann_file, sorted(file_names), file_names, sizes, gt, coco)


def load_coco(ann_file: str) -> COCO:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(ann_file)


def gt_detections(coco: COCO, image_id: int) -> Detections:
    """The ground truth as detections: score 1, contiguous labels, masks rasterized by
    pycocotools."""
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    info = coco.loadImgs([image_id])[0]
    h, w = info["height"], info["width"]
    if not anns:
        return Detections(
            torch.zeros(0, 4),
            torch.zeros(0),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, h, w, dtype=torch.uint8),
        )
    boxes = torch.tensor(
        [
            [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in anns
        ],
        dtype=torch.float32,
    )
    labels = torch.tensor([CATEGORY_IDS.index(a["category_id"]) + 1 for a in anns])
    masks = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])).to(torch.uint8)
    return Detections(boxes, torch.ones(len(anns)), labels, masks)


# ----------------------------------------------------------------------------- fake pipeline


@dataclasses.dataclass
class FakeDataset:
    ann_file: str
    image_ids: list[int]
    img_dir: str

    @property
    def parsed(self):
        """What the real test dataset holds: the annotation file as our parser accepts it."""
        from mrcnn.data.annotations import parse_coco_json

        return parse_coco_json(self.ann_file, training=False)


def fake_loader(ds: TinyCoco, ids: list[int], batch_size: int):
    """Batches whose pixel [b, 0, 0, 0] holds the image id (what `OracleModel` reads)."""
    for s in range(0, len(ids), batch_size):
        chunk = ids[s : s + batch_size]
        h = max(ds.sizes[i][0] for i in chunk)
        w = max(ds.sizes[i][1] for i in chunk)
        t = torch.zeros(len(chunk), 3, h, w)
        for b, i in enumerate(chunk):
            t[b, 0, 0, 0] = i
        infos = [ImageInfo(i, ds.file_names[i], ds.sizes[i], ds.sizes[i]) for i in chunk]
        yield Batch(ImageBatch(t, [ds.sizes[i] for i in chunk]), infos)


def shard(ids: list[int], rank: int, world_size: int) -> list[int]:
    n = len(ids)
    return ids[rank * n // world_size : (rank + 1) * n // world_size]


class OracleModel(nn.Module):
    """Returns the ground truth of the image whose id `fake_loader` wrote into pixel [0, 0, 0].

    Its detections are already final (original pixels, full-size uint8 masks): use it with an
    identity postprocess. `labels_as_category_ids`: labels are the dataset's category ids.
    """

    def __init__(self, gt: dict[int, Detections], labels_as_category_ids: bool = False):
        super().__init__()
        self.gt = gt
        self.labels_as_category_ids = labels_as_category_ids
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, images: ImageBatch) -> list[Detections]:
        assert not self.training and not torch.is_grad_enabled()
        self.calls += 1
        out = []
        for b in range(len(images)):
            d = self.gt[int(images.tensor[b, 0, 0, 0].item())]
            labels = d.labels
            if self.labels_as_category_ids:
                labels = torch.tensor(
                    [CATEGORY_IDS[i - 1] for i in labels.tolist()], dtype=torch.long
                )
            out.append(Detections(d.boxes.clone(), d.scores.clone(), labels, d.masks.clone()))
        return out


class ColourOracle(OracleModel):
    """The oracle for batches from the real loader: it recognizes an image by its background
    grey level (`background_level`) in pixel [0, 0] of the normalized tensor. The tiny images
    must not be resized (input.min_size_test = max_size_test = 64)."""

    def __init__(self, gt: dict[int, Detections], pixel_mean, pixel_std):
        super().__init__(gt)
        self.by_level = {background_level(i): i for i in gt}
        self.mean, self.std = float(pixel_mean[0]), float(pixel_std[0])

    def forward(self, images: ImageBatch) -> list[Detections]:
        t = images.tensor.clone()
        for b in range(len(images)):
            level = round((float(t[b, 0, 0, 0]) * self.std + self.mean) * 255)
            t[b, 0, 0, 0] = self.by_level[level]
        return super().forward(ImageBatch(t, images.image_sizes))


class EmptyModel(nn.Module):
    def forward(self, images: ImageBatch) -> list[Detections]:
        return [
            Detections(
                torch.zeros(0, 4),
                torch.zeros(0),
                torch.zeros(0, dtype=torch.long),
                torch.zeros(0, h, w, dtype=torch.uint8),
            )
            for h, w in images.image_sizes
        ]


def identity_postprocess(det, size, orig_size, mask_threshold=0.5):
    return det


class FakeDist:
    """`mrcnn.dist` for ranks simulated by threads: rank from a thread-local, collectives by
    barriers. Patch its methods over mrcnn.dist's functions."""

    def __init__(self, world_size: int):
        self.ws = world_size
        self.local = threading.local()
        self.barrier = threading.Barrier(world_size, timeout=60)
        self.slots: list = [None] * world_size
        self.gathers = 0

    def rank(self) -> int:
        return getattr(self.local, "rank", 0)

    def world_size(self) -> int:
        return self.ws

    def is_main(self) -> bool:
        return self.rank() == 0

    def all_gather_object(self, obj):
        self.slots[self.rank()] = obj
        self.barrier.wait()
        out = list(self.slots)
        if self.rank() == 0:
            self.gathers += 1
        self.barrier.wait()
        return out

    def broadcast_object(self, obj, src: int = 0):
        if self.rank() == src:
            self.box = obj
        self.barrier.wait()
        out = self.box
        self.barrier.wait()
        return out

    def patch(self, monkeypatch) -> None:
        from mrcnn import dist

        for name in ("rank", "world_size", "is_main", "all_gather_object", "broadcast_object"):
            monkeypatch.setattr(dist, name, getattr(self, name))

    def run(self, fn):
        """fn(rank) on world_size threads; returns the results in rank order, re-raises."""
        results: list = [None] * self.ws
        errors: list = [None] * self.ws

        def body(r):
            self.local.rank = r
            try:
                results[r] = fn(r)
            except BaseException as e:  # reported to the test below
                errors[r] = e

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.ws)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        return results, errors


def noisy_detections(tiny, seed):
    """Imperfect detections: jittered boxes, shifted masks, random scores, some misses, some
    wrong labels and false positives. Original pixels, contiguous labels."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in tiny.image_ids:
        gt = tiny.gt[i]
        h, w = tiny.sizes[i]
        keep = torch.rand(len(gt), generator=g) > 0.2
        boxes = gt.boxes[keep] + torch.randn(int(keep.sum()), 4, generator=g) * 1.5
        masks = gt.masks[keep].clone()
        for k in range(len(masks)):
            dy, dx = torch.randint(-2, 3, (2,), generator=g).tolist()
            masks[k] = torch.roll(masks[k], (dy, dx), (0, 1))
        labels = gt.labels[keep].clone()
        flip = torch.rand(len(labels), generator=g) < 0.15
        labels[flip] = labels[flip] % 3 + 1
        nfp = int(torch.randint(0, 3, (1,), generator=g))
        xy = torch.rand(nfp, 2, generator=g) * 40
        fp_boxes = torch.cat([xy, xy + 4 + torch.rand(nfp, 2, generator=g) * 15], 1)
        fp_masks = torch.zeros(nfp, h, w, dtype=torch.uint8)
        for k, b in enumerate(fp_boxes.int().tolist()):
            fp_masks[k, b[1] : b[3], b[0] : b[2]] = 1
        out[i] = Detections(
            torch.cat([boxes, fp_boxes]),
            torch.rand(len(boxes) + nfp, generator=g),
            torch.cat([labels, torch.randint(1, 4, (nfp,), generator=g)]),
            torch.cat([masks, fp_masks]),
        )
    return out
