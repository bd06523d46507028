"""Benchmark of the `ops` kernels against torchvision (or the seed's pycocotools path), CPU.

    .venv/bin/python -m bench.ops [--json out.json] [--repeats 5] [--threads 2]

Each row times ours and the baseline in the same run (median of `repeats` after one warm-up)
and prints a markdown table with the ratio ours / baseline (lower is better).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import paste_masks_in_image

import ops
from ops import reference


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, OpenMP pool, lazy initialisation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _proposals(n: int, h: float, w: float, g: torch.Generator) -> torch.Tensor:
    # RPN-like boxes: anywhere in an h x w image, sides 8..256 px.
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
    wh = 8 + torch.rand(n, 2, generator=g) * 248
    return torch.cat([xy, xy + wh], 1)


def _polygon_batch(n_rois: int, g: torch.Generator):
    """n_rois instances of 1-2 star-shaped polygons (8-24 points) and a jittered box each."""
    coords, poly_offsets, roi_offsets, rois = [], [0], [0], []
    for _ in range(n_rois):
        k = int(torch.randint(1, 3, (1,), generator=g))
        cx, cy = (torch.rand(2, generator=g) * 600 + 100).tolist()
        size = float(torch.rand(1, generator=g) * 150 + 20)
        for _ in range(k):
            pts = int(torch.randint(8, 25, (1,), generator=g))
            ang = torch.sort(torch.rand(pts, generator=g) * 6.2832)[0]
            rad = size * (0.5 + 0.5 * torch.rand(pts, generator=g))
            p = torch.stack([cx + rad * torch.cos(ang), cy + rad * torch.sin(ang)], 1).reshape(-1)
            coords.append(p)
            poly_offsets.append(poly_offsets[-1] + p.numel())
        roi_offsets.append(roi_offsets[-1] + k)
        jitter = (torch.rand(4, generator=g) - 0.5) * size * 0.4
        rois.append(torch.tensor([cx - size, cy - size, cx + size, cy + size]) + jitter)
    return (
        torch.cat(coords).float(),
        torch.tensor(poly_offsets),
        torch.tensor(roi_offsets),
        torch.stack(rois).float(),
    )


def run(repeats: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows: list[dict] = []

    def add(name: str, ours: Callable, base: Callable, baseline: str = "torchvision") -> None:
        t_ours, t_base = _median_ms(ours, repeats), _median_ms(base, repeats)
        rows.append(
            {
                "op": name,
                "ours_ms": t_ours,
                "baseline_ms": t_base,
                "ratio": t_ours / t_base,
                "baseline": baseline,
            }
        )
        print(f"  {name}: {t_ours:.2f} ms vs {t_base:.2f} ms", flush=True)

    # RoIAlign: an FPN P2-sized level, 1000 RoIs, 7x7, sampling_ratio 2.
    feat = torch.randn(1, 256, 200, 304, generator=g)
    rois = torch.cat([torch.zeros(1000, 1), _proposals(1000, 800, 1216, g)], 1)
    scale = 0.25
    add(
        "roi_align fwd 1000x256x7x7",
        lambda: ops.roi_align(feat, rois, 7, scale, 2, False),
        lambda: torchvision.ops.roi_align(feat, rois, 7, scale, 2, False),
    )
    feat_g = feat.clone().requires_grad_(True)

    def fwd_bwd(fn: Callable) -> Callable:
        def step():
            out = fn(feat_g, rois, 7, scale, 2, False)
            (grad,) = torch.autograd.grad(out, feat_g, torch.ones_like(out))
            return grad

        return step

    add(
        "roi_align fwd+bwd 1000x256x7x7", fwd_bwd(ops.roi_align), fwd_bwd(torchvision.ops.roi_align)
    )

    boxes = _proposals(12000, 800, 1216, g)
    scores = torch.rand(12000, generator=g)
    add(
        "nms 12000 @0.7",
        lambda: ops.nms(boxes, scores, 0.7),
        lambda: torchvision.ops.nms(boxes, scores, 0.7),
    )
    classes = torch.randint(0, 80, (12000,), generator=g)
    add(
        "batched_nms 12000 / 80 classes @0.5",
        lambda: ops.batched_nms(boxes, scores, classes, 0.5),
        lambda: torchvision.ops.batched_nms(boxes, scores, classes, 0.5),
    )
    b1, b2 = boxes[:2000], boxes[2000:4000]
    add("box_iou 2000x2000", lambda: ops.box_iou(b1, b2), lambda: torchvision.ops.box_iou(b1, b2))

    masks = torch.rand(100, 28, 28, generator=g)
    det = _proposals(100, 800, 1216, g).clamp(max=torch.tensor([1215, 799, 1215, 799.0]))
    add(
        "paste_masks 100x28x28 -> 800x1216",
        lambda: ops.paste_masks(masks, det, 800, 1216),
        lambda: paste_masks_in_image(masks[:, None], det, (800, 1216))[:, 0] > 0.5,
    )

    poly = _polygon_batch(512, g)
    add(
        "polygons_to_masks 512 RoIs 28x28",
        lambda: ops.polygons_to_masks(*poly, 28),
        lambda: reference.polygons_to_masks_pycocotools(*poly, 28),
        baseline="pycocotools (seed)",
    )

    gen = AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),))
    cell = gen.cell_anchors[0].round()
    add(
        "grid_anchors 200x304x3",
        lambda: ops.grid_anchors(cell, 200, 304, 4),
        lambda: gen.grid_anchors([(200, 304)], [[torch.tensor(4), torch.tensor(4)]]),
    )
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    deltas = torch.randn(200 * 304 * 3, 4, generator=g) * 0.1
    anchors = _proposals(200 * 304 * 3, 800, 1216, g)
    add(
        "decode_boxes 182400",
        lambda: ops.decode_boxes(deltas, anchors),
        lambda: coder.decode_single(deltas, anchors),
    )
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| op | ours (ms) | baseline (ms) | ratio | baseline |", "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['ours_ms']:.2f} | {r['baseline_ms']:.2f} | "
            f"{r['ratio']:.3f} | {r['baseline']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = ops.info()
    print(f"ops: {info}  torch {torch.__version__}  torchvision {torchvision.__version__}")
    rows = run(args.repeats)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "threads": args.threads, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
