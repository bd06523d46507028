"""The deployable model: uint8 images in, detections at the original size out.

`DeployModel` wraps a built `MaskRCNN` (FPN, in eval mode) with the data pipeline's test-time
pre-processing (normalize, resize with the test sizes, zero-pad to `input.size_divisibility`,
mrcnn/data/transforms.py and collate.py) and the inference post-processing
(`detections_to_original`: boxes rescaled per axis, masks pasted and thresholded), written with
tensor operations only, so that torch.export traces one graph whose batch and image size are
dynamic.

Input convention: `images` uint8 [B, 3, H, W], RGB, B images of one size (a camera stream, or
the images of a list grouped by size, `split_by_size`). Equal sizes are what make B and (H, W)
free: the resize and the padded canvas depend only on (H, W), never on tensor values.
With `dtype="bfloat16"` the network (backbone, FPN, RPN head, box and mask heads) runs under
torch.autocast, entered inside `forward` so the exported program carries it; box decoding, NMS,
RoIAlign's accumulation and the pasting stay float32, and the outputs are those of float32.
Outputs, flat over the batch and ordered by image, then by decreasing score:
  boxes float32 [D, 4] xyxy in original pixels, scores float32 [D], labels int64 [D] (model
  labels, 1..num_classes-1), batch_idx int64 [D], masks uint8 [D, H, W] (0/1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import ops
from mrcnn.export import graph
from mrcnn.modeling.poolers import CANONICAL_LEVEL, CANONICAL_SCALE
from mrcnn.modeling.rpn import flatten_outputs

OUTPUT_NAMES = ("boxes", "scores", "labels", "batch_idx", "masks")


class DeployModel(nn.Module):
    """uint8 [B, 3, H, W] -> (boxes, scores, labels, batch_idx, masks); see the module doc.

    model: a MaskRCNN with an FPN backbone and the mask head, in eval mode. input_cfg:
    `config.input` (test sizes, pixel mean/std, to_bgr255, size_divisibility).
    """

    def __init__(self, model: nn.Module, input_cfg, mask_threshold: float = 0.5,
                 dtype: str = "float32", channels_last: bool = False):
        super().__init__()
        if not getattr(model, "use_fpn", False) or not getattr(model, "mask_on", False):
            raise ValueError("export supports FPN models with the mask head (model.backbone.fpn"
                             "=True, model.mask_on=True)")
        self.model = model
        self.min_size = float(input_cfg.min_size_test)
        self.max_size = float(input_cfg.max_size_test)
        self.divisibility = max(int(input_cfg.size_divisibility), 1)
        self.to_bgr255 = bool(input_cfg.to_bgr255)
        self.mask_threshold = float(mask_threshold)
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"DeployModel dtype {dtype!r}: expected float32 or bfloat16")
        self.dtype = dtype
        # The model's convolutions take NHWC (a build with perf.channels_last); export: False.
        self.channels_last = bool(channels_last)
        # Buffers, not constants: they travel with the program's weights.
        self.register_buffer("mean", torch.tensor(input_cfg.pixel_mean, dtype=torch.float32)
                             .view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(input_cfg.pixel_std, dtype=torch.float32)
                             .view(1, 3, 1, 1), persistent=False)
        for i, cell in enumerate(model.anchors.cells):
            self.register_buffer(f"cell{i}", cell.clone(), persistent=False)
        self.num_levels = len(model.anchors.cells)

    # ------------------------------------------------------------------ pre-processing
    def resize_scale(self, h, w):
        """transforms.resize_scale; sym_min/sym_max keep symbolic sizes free of guards."""
        return torch.sym_min(self.min_size / torch.sym_min(h, w),
                             self.max_size / torch.sym_max(h, w))

    def preprocess(self, images: Tensor) -> tuple[Tensor, tuple]:
        """uint8 [B, 3, H, W] -> (normalized, resized, zero-padded float32 canvas, (h, w))."""
        x = images.float() / 255.0
        if self.to_bgr255:
            x = x.flip(1) * 255.0 - self.mean
        else:
            x = (x - self.mean) / self.std
        scale = self.resize_scale(images.shape[-2], images.shape[-1])
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                          align_corners=False)
        h, w = x.shape[-2], x.shape[-1]
        d = self.divisibility
        hc, wc = (h + d - 1) // d * d, (w + d - 1) // d * d
        x = F.pad(x, (0, wc - w, 0, hc - h))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, (h, w)

    # ------------------------------------------------------------------ the model
    def network(self, x: Tensor):
        """The autocast region of the network parts (a no-op context for float32)."""
        return torch.autocast(x.device.type, dtype=torch.bfloat16,
                              enabled=self.dtype == "bfloat16")

    def anchors(self, canvas: tuple, grids: list) -> Tensor:
        cells = [getattr(self, f"cell{i}") for i in range(self.num_levels)]
        return torch.cat([
            graph.level_anchors(c, g[0], g[1], canvas[0] // g[0], canvas[1] // g[1])
            for c, g in zip(cells, grids)
        ])

    def detect(self, x: Tensor, size: tuple) -> tuple[Tensor, ...]:
        """MaskRCNN.forward in eval mode on the canvas x; every image is `size` (h, w)."""
        m, cfg = self.model, self.model.cfg
        b = x.shape[0]
        # image_sizes_tensor's float32 [B, 2] from (possibly symbolic) ints.
        one = torch.ones((), dtype=torch.float32, device=x.device)
        image_hw = torch.stack([one * size[0], one * size[1]]).expand(b, 2)
        with self.network(x):
            feats = m.backbone(x)
            logits, deltas = m.rpn(feats)
        logits, deltas = [t.float() for t in logits], [t.float() for t in deltas]
        objectness, rpn_deltas, level_sizes = flatten_outputs(logits, deltas)
        anchors = self.anchors(x.shape[-2:], [f.shape[-2:] for f in feats])
        proposals, valid = graph.select_proposals(
            objectness, rpn_deltas, anchors, level_sizes, image_hw, cfg.rpn)
        roi_feats = feats[:4]  # P6 serves the RPN only
        bi, pi = torch.nonzero(valid, as_tuple=True)
        rois = proposals[bi, pi]
        bh, mh = cfg.box_head, cfg.mask_head
        pooled = self.pool(roi_feats, rois, bi, bh.pooler_resolution, bh.sampling_ratio)
        with self.network(x):
            cls_logits, box_deltas = m.box_predictor(m.box_head(pooled))
        boxes, scores, labels, img = graph.box_detections(
            cls_logits.float(), box_deltas.float(), rois, bi, image_hw, b, cfg.roi_heads)
        pooled = self.pool(roi_feats, boxes, img, mh.pooler_resolution, mh.sampling_ratio)
        with self.network(x):
            mask_logits = m.mask_predictor(m.mask_head(pooled), labels)
        masks = mask_logits.float().sigmoid()
        return boxes, scores, labels, img, masks

    def pool(self, feats, boxes, batch_idx, resolution: int, sampling_ratio: int) -> Tensor:
        """poolers.roi_pool with the levels' true scales 1/4 .. 1/32 (what torchvision's
        inferred scales are whenever the padding is under 41% of the image height)."""
        rois = torch.cat([batch_idx.to(boxes.dtype)[:, None], boxes], dim=1)
        scales = [2.0 ** -(k + 2) for k in range(len(feats))]
        return ops.multilevel_roi_align(
            feats, rois, (resolution, resolution), scales, sampling_ratio,
            bool(self.model.cfg.roi_heads.aligned), canonical_level=CANONICAL_LEVEL,
            canonical_scale=CANONICAL_SCALE)

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        h0, w0 = images.shape[-2], images.shape[-1]
        x, size = self.preprocess(images)
        boxes, scores, labels, img, probs = self.detect(x, size)
        boxes = graph.rescale_boxes(boxes, size, (h0, w0))
        # The operator itself: ops.paste_masks' int() of the size would specialise it.
        masks = torch.ops.mrcnn.paste_masks(probs, boxes, h0, w0, self.mask_threshold, 1)
        return boxes, scores, labels, img, masks.to(torch.uint8)
