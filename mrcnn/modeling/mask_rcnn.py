"""The Mask R-CNN model: backbone (+FPN) -> RPN -> RoI box head -> RoI mask head.

The module holds the weights and wires the pure functions of the sibling files together.
Batching: every stage runs on the whole batch at once (ground truth and proposals padded per
image, RoIs flattened with their image index), never one image at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import torch
from torch import Tensor, nn

from mrcnn.modeling.anchors import AnchorCache
from mrcnn.modeling.backbone import ResNet
from mrcnn.modeling.box_head import BoxPredictor, Res5Head, build_fpn_box_head
from mrcnn.modeling.boxes import image_sizes_tensor
from mrcnn.modeling.fpn import FPN, Backbone
from mrcnn.modeling.losses import fastrcnn_loss, mask_loss, rpn_loss
from mrcnn.modeling.mask_head import MaskHead, MaskPredictor
from mrcnn.modeling.mask_targets import mask_targets
from mrcnn.modeling.poolers import roi_pool
from mrcnn.modeling.postprocess import box_detections
from mrcnn.modeling.rpn import RPNHead, flatten_outputs, select_proposals
from mrcnn.modeling.rpn_sampled import head_at_anchors, select_sampled
from mrcnn.modeling.sampling import sample_pos_neg
from mrcnn.modeling.targets import first_k, pad_gt, roi_targets, rpn_targets
from mrcnn.structures import Detections, ImageBatch, Targets

C4_BODY_STRIDE = 16  # res4


class MaskRCNN(nn.Module):
    """Mask R-CNN (or Faster R-CNN with `mask_on=False`) built from a `config.model` section.

    forward(images, targets=None):
    - training (needs targets): dict of float32 scalar losses `loss_objectness`,
      `loss_rpn_box_reg`, `loss_classifier`, `loss_box_reg` and, with masks, `loss_mask`;
    - eval: one `Detections` per image in resized-image pixels: boxes float32 [K, 4] xyxy,
      scores [K], labels int64 [K] (1..num_classes-1), masks float [K, 1, M, M] probabilities
      of the predicted class in the box (None without the mask head).
    images: normalized, zero-padded `ImageBatch` (the model neither normalizes nor resizes).

    Submodules: backbone (body [+ fpn]), rpn, box_head, box_predictor, mask_head (FPN only),
    mask_predictor. `sampling_generator` (None: the global RNG) drives the training samplers.
    """

    def __init__(self, cfg: ml_collections.ConfigDict):
        super().__init__()
        # Frozen: the model reads its settings at every forward, nothing may change them.
        self.cfg = ml_collections.FrozenConfigDict(cfg)
        cfg = self.cfg
        bb = cfg.backbone
        self.use_fpn = bool(bb.fpn)
        body = ResNet(
            depth=bb.depth,
            width=bb.width,
            norm=bb.norm,
            gn_groups=bb.gn_groups,
            freeze_at=bb.freeze_at,
            stride_in_1x1=bb.stride_in_1x1,
            num_stages=4 if self.use_fpn else 3,
        )
        fpn = None
        if self.use_fpn:
            fpn = FPN(body.out_channels, bb.fpn_channels, bb.fpn_norm, bb.gn_groups)
        self.backbone = Backbone(body, fpn)
        channels = self.backbone.out_channels

        a = cfg.anchor
        if self.use_fpn:
            self.anchors = AnchorCache([(s,) for s in a.sizes], a.aspect_ratios)
        else:
            if a.c4_stride != C4_BODY_STRIDE:
                raise ValueError(
                    f"config.model.anchor.c4_stride={a.c4_stride}: the C4 features (res4) have "
                    f"stride {C4_BODY_STRIDE}"
                )
            self.anchors = AnchorCache([tuple(a.sizes)], a.aspect_ratios, strides=[a.c4_stride])
        num_anchors = self.anchors.num_anchors_per_location
        if len(set(num_anchors)) != 1:
            raise ValueError("the shared RPN head needs the same number of anchors on every level")
        if cfg.rpn.conv_depth > 1 and cfg.rpn.sparse_grad:
            # rpn_sampled re-evaluates one 3x3 conv at the sampled anchors, not a deeper head.
            raise ValueError("model.rpn.sparse_grad needs model.rpn.conv_depth=1")
        self.rpn = RPNHead(channels, num_anchors[0], cfg.rpn.conv_depth)

        bh = cfg.box_head
        if self.use_fpn:
            self.box_head = build_fpn_box_head(channels, bh, bb.gn_groups)
        else:
            self.box_head = Res5Head(bb.depth, bb.width, bb.norm, bb.gn_groups, bb.stride_in_1x1)
        self.box_predictor = BoxPredictor(self.box_head.out_channels, cfg.num_classes)

        self.mask_on = bool(cfg.mask_on)
        self.mask_head: nn.Module | None = None
        self.mask_predictor: nn.Module | None = None
        if self.mask_on:
            mh = cfg.mask_head
            if self.use_fpn:
                self.mask_head = MaskHead(channels, mh.num_conv, mh.conv_dim, mh.norm, bb.gn_groups)
                self.mask_predictor = MaskPredictor(mh.conv_dim, mh.conv_dim, cfg.num_classes)
            else:
                # maskrcnn-benchmark's R-50-C4: the mask predictor runs on res5's output.
                self.mask_predictor = MaskPredictor(
                    self.box_head.out_channels, mh.conv_dim, cfg.num_classes
                )
        self.sampling_generator: torch.Generator | None = None

    # ------------------------------------------------------------------ pieces
    def _roi_features(self, feats: list[Tensor]) -> list[Tensor]:
        # P6 only serves the RPN (torchvision pools from P2..P5).
        return feats[:4] if self.use_fpn else feats

    def _pool(
        self,
        feats: list[Tensor],
        boxes: Tensor,
        batch_idx: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        resolution: int,
        sampling_ratio: int,
    ) -> Tensor:
        return roi_pool(
            feats, boxes, batch_idx, image_sizes, resolution, sampling_ratio,
            aligned=bool(self.cfg.roi_heads.aligned),
        )

    def _box_forward(
        self, feats: list[Tensor], boxes: Tensor, batch_idx: Tensor, image_sizes
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """-> class logits, box deltas, and (C4) the res5 features for the mask branch."""
        bh = self.cfg.box_head
        x = self._pool(
            feats, boxes, batch_idx, image_sizes, bh.pooler_resolution, bh.sampling_ratio
        )
        res5 = None
        if self.use_fpn:
            h = self.box_head(x)
        else:
            res5 = self.box_head.forward_features(x)
            h = res5.mean(dim=(2, 3))
        logits, deltas = self.box_predictor(h)
        return logits, deltas, res5

    def _mask_logits(
        self,
        feats: list[Tensor],
        boxes: Tensor,
        batch_idx: Tensor,
        labels: Tensor,
        image_sizes,
        res5: Tensor | None = None,
    ) -> Tensor:
        """Mask logits [R, M, M] of boxes [R, 4], each of its class `labels` [R]. `res5` (C4
        only): the box branch's res5 features of these very boxes, reused if the poolers agree."""
        mh = self.cfg.mask_head
        if self.use_fpn or res5 is None:
            x = self._pool(
                feats, boxes, batch_idx, image_sizes, mh.pooler_resolution, mh.sampling_ratio
            )
            if self.use_fpn:
                return self.mask_predictor(self.mask_head(x), labels)
            res5 = self.box_head.forward_features(x)
        return self.mask_predictor(res5, labels)

    def _c4_can_share(self) -> bool:
        bh, mh = self.cfg.box_head, self.cfg.mask_head
        return bh.pooler_resolution == mh.pooler_resolution and (
            bh.sampling_ratio == mh.sampling_ratio
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self, images: ImageBatch, targets: list[Targets] | None = None
    ) -> dict[str, Tensor] | list[Detections]:
        if self.training and targets is None:
            raise ValueError("the model is in training mode: pass targets (or call model.eval())")
        if targets is not None and len(targets) != len(images):
            raise ValueError(f"{len(targets)} targets for {len(images)} images")
        x = images.tensor
        device = x.device
        image_sizes = [tuple(int(v) for v in s) for s in images.image_sizes]
        image_hw = image_sizes_tensor(image_sizes, device)

        feats = self.backbone(x)
        # With rpn.sparse_grad the loss recomputes the head where it needs it (rpn_sampled).
        sparse_rpn = self.training and bool(self.cfg.rpn.sparse_grad)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not sparse_rpn):
            logits, deltas = self.rpn(feats)
        objectness, rpn_deltas, level_sizes = flatten_outputs(logits, deltas)
        anchors = torch.cat(
            self.anchors(tuple(x.shape[-2:]), [tuple(f.shape[-2:]) for f in feats], device)
        )
        r = self.cfg.rpn
        proposals, _, valid = select_proposals(
            objectness,
            rpn_deltas,
            anchors,
            level_sizes,
            image_hw,
            pre_nms_top_n=r.pre_nms_top_n_train if self.training else r.pre_nms_top_n_test,
            post_nms_top_n=r.post_nms_top_n_train if self.training else r.post_nms_top_n_test,
            nms_thresh=r.nms_thresh,
            min_size=r.min_size,
            score_thresh=r.score_thresh,
            weights=r.bbox_reg_weights,
        )
        roi_feats = self._roi_features(feats)
        if self.training:
            rpn_out = (feats, level_sizes) if sparse_rpn else (objectness, rpn_deltas)
            return self._losses(
                targets, rpn_out, sparse_rpn, anchors, proposals, valid, roi_feats, image_sizes
            )
        return self._detect(proposals, valid, roi_feats, image_sizes, image_hw)

    def _losses(
        self, targets, rpn_out, sparse_rpn, anchors, proposals, valid, feats, image_sizes
    ) -> dict[str, Tensor]:
        """rpn_out: (objectness [B, N], deltas [B, N, 4]) of the dense head, or, when
        `sparse_rpn` (rpn.sparse_grad), (the head's input features, anchors per level): the
        head is then evaluated with gradient at the sampled anchors only."""
        r, rh = self.cfg.rpn, self.cfg.roi_heads
        gt = pad_gt(targets, anchors.device)
        labels, reg_targets = rpn_targets(
            anchors, gt, r.fg_iou_thresh, r.bg_iou_thresh, r.bbox_reg_weights
        )
        pos, neg = sample_pos_neg(
            labels, r.batch_size_per_image, r.positive_fraction, self.sampling_generator
        )
        if sparse_rpn:
            rpn_feats, level_sizes = rpn_out
            idx, sel = select_sampled(pos | neg, r.batch_size_per_image)
            objectness, rpn_deltas = head_at_anchors(self.rpn, rpn_feats, idx, level_sizes)
            reg_targets = torch.gather(reg_targets, 1, idx[..., None].expand(-1, -1, 4))
            pos, neg = torch.gather(pos, 1, idx) & sel, torch.gather(neg, 1, idx) & sel
        else:
            objectness, rpn_deltas = rpn_out
        loss_obj, loss_rpn_box = rpn_loss(
            objectness, rpn_deltas, reg_targets, pos, neg, r.smooth_l1_beta
        )
        losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_rpn_box}
        s = roi_targets(
            proposals,
            valid,
            gt,
            rh.fg_iou_thresh,
            rh.bg_iou_thresh,
            rh.batch_size_per_image,
            rh.positive_fraction,
            rh.bbox_reg_weights,
            self.sampling_generator,
        )
        losses.update(self._roi_losses(s, feats, image_sizes, targets))
        return losses

    def _compact_rois(self, device: torch.device) -> bool:
        """Whether the RoI heads run on the compacted samples instead of every fixed slot.

        - A RoI head that normalises over the batch of RoIs (BatchNorm while training) must:
          the unused slots would enter its statistics.
        - On the CPU it is cheaper: reading the sample counts costs nothing there (it is a sync
          only on an accelerator), while the fixed slots run the mask head on
          batch_size_per_image * positive_fraction RoIs per image however few are positive.
        Both paths give the same losses and gradients (tests/modeling/test_model.py)."""
        if device.type == "cpu":
            return True
        heads = (self.box_head, self.mask_head, self.box_predictor, self.mask_predictor)
        return any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
            for h in heads if h is not None for m in h.modules()
        )

    def _roi_losses(self, s, feats, image_sizes, targets) -> dict[str, Tensor]:
        """Box and mask losses of the sampled RoIs `s` (fixed-size slots, targets.RoISamples).
        The heads run on every slot and the losses mask the unused ones, so no size depends on
        the device's data; with BatchNorm in a head, or on the CPU, the samples are compacted
        (`_compact_rois`)."""
        coupled = self._compact_rois(s.labels.device)
        if coupled:
            s = s.take(torch.nonzero(s.valid).squeeze(1), 0)
        cls_logits, box_deltas, res5 = self._box_forward(feats, s.boxes, s.batch_idx, image_sizes)
        beta = self.cfg.roi_heads.smooth_l1_beta
        loss_cls, loss_box = fastrcnn_loss(
            cls_logits, box_deltas, s.labels, s.regression_targets, beta
        )
        losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
        if self.mask_on:
            losses["loss_mask"] = self._mask_loss(s, res5, feats, image_sizes, targets, coupled)
        return losses

    def _mask_loss(self, s, res5, feats, image_sizes, targets, compacted: bool) -> Tensor:
        """loss_mask of the positive samples: per image the first
        int(batch_size_per_image * positive_fraction) positive slots (the sampler never draws
        more), with a validity mask; after a compaction, exactly the positives."""
        for i, t in enumerate(targets):
            if t.masks is None and t.boxes.shape[0] > 0:
                raise ValueError(f"image {i} has ground truth but its targets carry no masks")
        if compacted:
            p, keep = torch.nonzero(s.labels > 0).squeeze(1), None
        else:
            rh = self.cfg.roi_heads
            b, k = len(image_sizes), s.per_image
            max_pos = int(rh.batch_size_per_image * rh.positive_fraction)
            idx, keep = first_k((s.labels > 0).reshape(b, k), max_pos)
            base = k * torch.arange(b, device=idx.device)[:, None]
            p, keep = (idx + base).reshape(-1), keep.reshape(-1)
        boxes, bidx, labels = s.boxes[p], s.batch_idx[p], s.labels[p].clamp(min=0)
        shared = res5[p] if res5 is not None and self._c4_can_share() else None
        mask_logits = self._mask_logits(feats, boxes, bidx, labels, image_sizes, shared)
        mt = mask_targets(
            boxes,
            bidx,
            s.matched_gt[p],
            [t.masks for t in targets],
            mask_logits.shape[-1],
            aligned=bool(self.cfg.roi_heads.aligned),
            valid=keep,
        )
        return mask_loss(mask_logits, mt, keep)

    def _detect(self, proposals, valid, feats, image_sizes, image_hw) -> list[Detections]:
        rh = self.cfg.roi_heads
        # Every proposal slot goes through the box head: padding slots get an empty box, which
        # decodes to empty boxes that box_detections drops (side < 0.01 px) whatever the
        # scores, so the detections are those of the valid proposals, without a nonzero.
        b, n = valid.shape
        rois = torch.where(valid[..., None], proposals, torch.zeros_like(proposals)).reshape(-1, 4)
        bi = torch.arange(b, device=rois.device)[:, None].expand(b, n).reshape(-1)
        cls_logits, box_deltas, _ = self._box_forward(feats, rois, bi, image_sizes)
        boxes, scores, labels, img = box_detections(
            cls_logits,
            box_deltas,
            rois,
            bi,
            image_hw,
            score_thresh=rh.score_thresh,
            nms_thresh=rh.nms_thresh,
            detections_per_img=rh.detections_per_img,
            weights=rh.bbox_reg_weights,
        )
        masks = None
        if self.mask_on:
            if boxes.shape[0]:
                # torchvision's maskrcnn_inference: the sigmoid of the predicted class's channel
                masks = self._mask_logits(feats, boxes, img, labels, image_sizes)[:, None].sigmoid()
            else:
                m = self.mask_resolution
                masks = boxes.new_zeros((0, 1, m, m))
        # The one read of the device: how many detections each image has (bincount would
        # read img's maximum first, a second sync).
        per_image = img[None, :] == torch.arange(len(image_sizes), device=img.device)[:, None]
        counts = per_image.sum(1).tolist()
        mask_parts = masks.split(counts) if masks is not None else [None] * len(counts)
        parts = zip(boxes.split(counts), scores.split(counts), labels.split(counts), mask_parts)
        return [Detections(*part) for part in parts]

    @property
    def mask_resolution(self) -> int:
        """Side of the predicted masks: 2x the mask pooler (FPN); C4's res5 halves the pooled
        size and the deconv doubles it back."""
        m = self.cfg.mask_head.pooler_resolution
        return 2 * m if self.use_fpn else 2 * (m // 2)

