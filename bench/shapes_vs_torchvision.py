"""Trains our Mask R-CNN and torchvision's side by side on the same data, recipe and backbone.

    .venv/bin/python -m bench.shapes_vs_torchvision [--config=configs/shapes.py] [--iters=600]

Both models use our ResNet+FPN backbone module (same architecture, same initial weights), the
same anchors, head sizes, RPN/RoI settings, optimizer, lr schedule, gradient clipping, data loader
(same images in the same order) and the same COCO evaluation. What differs is everything
torchvision does itself: RPN, proposal selection, target building, sampling, losses, RoIAlign
(torchvision.ops) and post-processing. Prints and writes (markdown + JSON) box/mask AP and
s/iter for both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

import numpy as np
import torch
from pycocotools import mask as mask_util
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mrcnn import data as data_lib  # noqa: E402
from mrcnn.engine import evaluate as evaluation  # noqa: E402
from mrcnn.engine import runner, solver, train  # noqa: E402
from mrcnn.modeling import build_model  # noqa: E402
from mrcnn.structures import Detections, ImageBatch  # noqa: E402

log = logging.getLogger("bench.side_by_side")


class _Features(nn.Module):
    """Our backbone, returning torchvision's OrderedDict of levels."""

    def __init__(self, backbone):
        super().__init__()
        self.inner = backbone
        self.out_channels = backbone.out_channels

    def forward(self, x):
        return {str(i): f for i, f in enumerate(self.inner(x))}


class TorchvisionMaskRCNN(nn.Module):
    """torchvision's RPN and RoI heads on our backbone, speaking our model's interface."""

    def __init__(self, config):
        super().__init__()
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
        from torchvision.models.detection.roi_heads import RoIHeads
        from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
        from torchvision.ops import MultiScaleRoIAlign

        m = config.model
        ours = build_model(m)  # same init (the caller seeds) and the same backbone module
        self.backbone = _Features(ours.backbone)
        ch = ours.backbone.out_channels
        anchors = AnchorGenerator(tuple((s,) for s in m.anchor.sizes),
                                  (tuple(m.anchor.aspect_ratios),) * len(m.anchor.sizes))
        r = m.rpn
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(ch, anchors.num_anchors_per_location()[0]),
            r.fg_iou_thresh, r.bg_iou_thresh, r.batch_size_per_image, r.positive_fraction,
            dict(training=r.pre_nms_top_n_train, testing=r.pre_nms_top_n_test),
            dict(training=r.post_nms_top_n_train, testing=r.post_nms_top_n_test),
            r.nms_thresh, score_thresh=r.score_thresh)
        h, bh, mh = m.roi_heads, m.box_head, m.mask_head
        names = ["0", "1", "2", "3"]
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(names, bh.pooler_resolution, bh.sampling_ratio),
            TwoMLPHead(ch * bh.pooler_resolution**2, bh.fc_dim),
            FastRCNNPredictor(bh.fc_dim, m.num_classes),
            h.fg_iou_thresh, h.bg_iou_thresh, h.batch_size_per_image, h.positive_fraction,
            tuple(h.bbox_reg_weights), h.score_thresh, h.nms_thresh, h.detections_per_img,
            mask_roi_pool=MultiScaleRoIAlign(names, mh.pooler_resolution, mh.sampling_ratio),
            mask_head=MaskRCNNHeads(ch, [mh.conv_dim] * mh.num_conv, 1),
            mask_predictor=MaskRCNNPredictor(mh.conv_dim, mh.conv_dim, m.num_classes))

    def forward(self, images: ImageBatch, targets=None):
        from torchvision.models.detection.image_list import ImageList

        il = ImageList(images.tensor, list(images.image_sizes))
        feats = self.backbone(images.tensor)
        tv_targets = None if targets is None else [_tv_target(t, s) for t, s in
                                                  zip(targets, images.image_sizes)]
        proposals, rpn_losses = self.rpn(il, feats, tv_targets)
        dets, roi_losses = self.roi_heads(feats, proposals, il.image_sizes, tv_targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return [Detections(d["boxes"], d["scores"], d["labels"], d.get("masks")) for d in dets]


def _tv_target(t, size):
    """Our Targets -> torchvision's dict with full-image uint8 masks (polygons rasterized)."""
    h, w = size
    masks = np.zeros((len(t.boxes), h, w), np.uint8)
    if t.masks is not None:
        for i, polys in enumerate(t.masks.polygons):
            if polys:
                rles = mask_util.frPyObjects([p.cpu().double().numpy().tolist() for p in polys], h, w)
                masks[i] = mask_util.decode(mask_util.merge(rles))
            elif t.masks.bitmasks is not None:
                masks[i] = t.masks.bitmasks[i, :h, :w].cpu().numpy()
    return {"boxes": t.boxes, "labels": t.labels,
            "masks": torch.from_numpy(masks).to(t.boxes.device)}


def train_and_eval(model, config, device, workdir) -> dict:
    s = config.solver
    opt = solver.build_optimizer(model, s)
    loader = data_lib.build_train_loader(config)
    times = []
    model.train()
    for it in range(s.max_iter):
        batch = next(loader).to(device)
        solver.set_lr(opt, s.base_lr, solver.lr_factor(it, s))
        t0 = time.perf_counter()
        losses = model(batch.images, batch.targets)
        sum(losses.values()).backward()
        if s.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        if (it + 1) % config.log_period == 0:
            log.info("%s iter %d loss %.4f  %.3f s/iter", workdir, it + 1,
                     sum(v.item() for v in losses.values()), statistics.median(times))
    model.eval()
    metrics = evaluation.evaluate(model, config, device, output_dir=workdir)
    metrics.pop("_vis", None)
    return {"s_per_iter": statistics.median(times), "train_s": sum(times),
            "bbox_AP": metrics["bbox"]["AP"], "segm_AP": metrics["segm"]["AP"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/shapes.py")
    p.add_argument("--iters", type=int, default=0, help="0: the config's solver.max_iter")
    p.add_argument("--out", default="runs/side_by_side")
    p.add_argument("--only", choices=["ours", "torchvision", "both"], default="both")
    args = p.parse_args()
    import importlib.util

    path, _, arg = args.config.partition(":")
    spec = importlib.util.spec_from_file_location("cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config(arg or None)
    if args.iters:
        config.solver.max_iter = args.iters
        config.solver.steps = tuple(int(args.iters * f) for f in (0.75, 0.92))
        config.solver.warmup_iters = min(config.solver.warmup_iters, args.iters // 4)
    config.eval.period = 0
    os.makedirs(args.out, exist_ok=True)
    runner.setup_logging(args.out)
    device = torch.device("cpu")
    results = {"config": args.config, "iters": config.solver.max_iter,
               "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    if args.only in ("ours", "both"):
        train.seed_everything(config.seed)
        ours = build_model(config.model).to(device)
        results["ours"] = train_and_eval(ours, config, device, os.path.join(args.out, "ours"))
    if args.only in ("torchvision", "both"):
        train.seed_everything(config.seed)
        tv = TorchvisionMaskRCNN(config).to(device)
        results["torchvision"] = train_and_eval(tv, config, device,
                                                os.path.join(args.out, "torchvision"))
    lines = ["| model | iters | s/iter | train time (s) | box AP | mask AP |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k in ("ours", "torchvision"):
        if k in results:
            r = results[k]
            lines.append(f"| {k} | {results['iters']} | {r['s_per_iter']:.3f} | {r['train_s']:.0f} "
                         f"| {r['bbox_AP']:.3f} | {r['segm_AP']:.3f} |")
    if "ours" in results and "torchvision" in results:
        results["time_ratio"] = results["ours"]["s_per_iter"] / results["torchvision"]["s_per_iter"]
        lines.append(f"\ns/iter ratio ours / torchvision: {results['time_ratio']:.3f}")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "side_by_side.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "side_by_side.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
