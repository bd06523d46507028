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

    # Proposal matching vs the Python path it replaces (the IoU matrix with padded gt rows at
    # -1, then the matcher): the RPN's (all anchors of an 800 x 1216 batch of 2, 20 gts each,
    # low-quality matches) and the RoI heads' (2000 proposals + the gts per image).
    from mrcnn.modeling.boxes import pairwise_iou
    from mrcnn.modeling.matcher import match

    def python_match(gt, valid, boxes, high, low, allow):
        iou = pairwise_iou(gt, boxes if boxes.dim() == 3 else boxes[None])
        q = torch.where(valid[..., None], iou, torch.full_like(iou, -1.0))
        return match(q, high, low, allow, gt_valid=valid)

    n_anchors = 3 * sum((800 // s + (800 % s > 0)) * (1216 // s) for s in (4, 8, 16, 32, 64))
    all_anchors = _proposals(n_anchors, 800, 1216, g)
    gt = torch.stack([_proposals(20, 800, 1216, g) for _ in range(2)])
    gt_valid = torch.ones(2, 20, dtype=torch.bool)
    gt_valid[1, 12:] = False  # padding
    add(
        f"match_boxes RPN 2 x 20 gt x {n_anchors} anchors",
        lambda: ops.match_boxes(gt, gt_valid, all_anchors, 0.7, 0.3, True),
        lambda: python_match(gt, gt_valid, all_anchors, 0.7, 0.3, True),
        baseline="Python IoU + matcher",
    )
    props = torch.cat([torch.stack([_proposals(2000, 800, 1216, g) for _ in range(2)]), gt], 1)
    add(
        "match_boxes RoI 2 x 20 gt x 2020 proposals",
        lambda: ops.match_boxes(gt, gt_valid, props, 0.5, 0.5, False),
        lambda: python_match(gt, gt_valid, props, 0.5, 0.5, False),
        baseline="Python IoU + matcher",
    )
    tgt = _proposals(2 * n_anchors, 800, 1216, g)
    ref = all_anchors.repeat(2, 1)
    add(
        f"encode_boxes {2 * n_anchors}",
        lambda: ops.encode_boxes(tgt, ref),
        lambda: coder.encode_single(tgt, ref),
    )

    # One RoIAlign over the 4 FPN levels of an 800 x 1216 image (1000 proposals of every size,
    # 256 channels, 7x7, sampling_ratio 2) vs the per-level Python path it replaces (sort by
    # level, host read of the counts, one roi_align per level) and vs torchvision.
    from collections import OrderedDict

    from torchvision.ops import MultiScaleRoIAlign

    from mrcnn.modeling import poolers

    pyramid = [torch.randn(1, 256, 800 // s, 1216 // s, generator=g) for s in (4, 8, 16, 32)]
    xy = torch.rand(1000, 2, generator=g) * torch.tensor([1100.0, 700.0])
    side = torch.exp(torch.rand(1000, 1, generator=g) * 6.2) + 8  # 9 .. ~500 px: every level
    ml_boxes = torch.cat([xy, xy + side], 1)
    ml_rois = torch.cat([torch.zeros(1000, 1), ml_boxes], 1)
    ml_scales = [0.25, 0.125, 0.0625, 0.03125]
    tv_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)

    def per_level(feats):
        levels = poolers.map_levels(ml_boxes, 2, 5)
        order = torch.argsort(levels, stable=True)
        counts = torch.bincount(levels, minlength=4).tolist()
        pooled = [
            ops.roi_align(f, r, 7, s, 2, False)
            for f, r, s, n in zip(feats, ml_rois[order].split(counts), ml_scales, counts)
            if n
        ]
        sorted_out = torch.cat(pooled)
        return torch.empty_like(sorted_out).index_copy_(0, order, sorted_out)

    def multilevel(feats):
        return ops.multilevel_roi_align(feats, ml_rois, 7, ml_scales, 2)

    def torchvision_ms(feats):
        named = OrderedDict((str(i), f) for i, f in enumerate(feats))
        return tv_pool(named, [ml_boxes], [(800, 1216)])

    add("multilevel_roi_align fwd 1000x256x7x7, 4 levels", lambda: multilevel(pyramid),
        lambda: per_level(pyramid), baseline="per-level Python path")
    add("multilevel_roi_align fwd 1000x256x7x7, 4 levels", lambda: multilevel(pyramid),
        lambda: torchvision_ms(pyramid), baseline="torchvision MultiScaleRoIAlign")
    pyramid_g = [f.clone().requires_grad_(True) for f in pyramid]

    def ml_fwd_bwd(fn: Callable) -> Callable:
        def step():
            out = fn(pyramid_g)
            return torch.autograd.grad(out, pyramid_g, torch.ones_like(out), allow_unused=True)

        return step

    add("multilevel_roi_align fwd+bwd 1000x256x7x7", ml_fwd_bwd(multilevel),
        ml_fwd_bwd(per_level), baseline="per-level Python path")
    add("multilevel_roi_align fwd+bwd 1000x256x7x7", ml_fwd_bwd(multilevel),
        ml_fwd_bwd(torchvision_ms), baseline="torchvision MultiScaleRoIAlign")

    # RPN pre-NMS selection of a batch of 2 800 x 1216 images (5 levels, 3 anchors per cell,
    # pre_nms_top_n 2000 as in training) vs select_proposals' Python loop it replaces.
    from mrcnn.modeling import box_coder
    from mrcnn.modeling.boxes import clip_boxes, nonempty

    rpn_sizes = [3 * (800 // s + (800 % s > 0)) * (1216 // s) for s in (4, 8, 16, 32, 64)]
    rpn_n = sum(rpn_sizes)
    rpn_obj = torch.randn(2, rpn_n, generator=g)
    rpn_deltas = torch.randn(2, rpn_n, 4, generator=g) * 0.3
    rpn_anchors = _proposals(rpn_n, 800, 1216, g)
    rpn_hw = torch.tensor([[800.0, 1216.0], [760.0, 1100.0]])

    def rpn_python():
        tops, lvls, offset = [], [], 0
        for level, n in enumerate(rpn_sizes):
            k = min(2000, n)
            tops.append(rpn_obj[:, offset : offset + n].topk(k, dim=1).indices + offset)
            lvls.append(torch.full((k,), level, dtype=torch.int64))
            offset += n
        idx = torch.cat(tops, dim=1)
        scores = torch.sigmoid(torch.gather(rpn_obj, 1, idx))
        d = torch.gather(rpn_deltas, 1, idx[..., None].expand(-1, -1, 4))
        boxes = clip_boxes(box_coder.decode(d, rpn_anchors[idx], (1.0, 1.0, 1.0, 1.0)),
                           rpn_hw[:, 0:1], rpn_hw[:, 1:2])
        return boxes, scores, torch.cat(lvls), nonempty(boxes, 1e-3) & (scores >= 0.0)

    add(f"rpn_decode_topk 2 x {rpn_n} anchors, 5 levels, top 2000",
        lambda: ops.rpn_decode_topk(rpn_obj, rpn_deltas, rpn_anchors, rpn_sizes, 2000, rpn_hw,
                                    min_size=1e-3),
        rpn_python, baseline="per-level Python path")
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
