"""`model.rpn.sparse_grad`: the RPN head re-evaluated at the sampled anchors gives the dense
head's outputs there, and the whole model's losses and gradients equal the dense ones."""

from __future__ import annotations

import pytest
import torch

from configs import r50_fpn_1x
from mrcnn.engine.bench import synthetic_inputs
from mrcnn.modeling import build_model
from mrcnn.modeling.rpn import RPNHead, flatten_outputs
from mrcnn.modeling.rpn_sampled import head_at_anchors, select_sampled


def test_select_sampled_returns_each_sampled_index_once():
    g = torch.Generator().manual_seed(0)
    sampled = torch.rand(3, 500, generator=g) < 0.05
    sampled[1] = False  # an image with nothing sampled
    idx, valid = select_sampled(sampled, 64)
    assert idx.shape == valid.shape == (3, 64)
    for b in range(3):
        got = sorted(idx[b][valid[b]].tolist())
        assert got == torch.nonzero(sampled[b]).squeeze(1).tolist()
    # More requested than candidates: k is capped at N.
    idx, valid = select_sampled(sampled[:, :10], 64)
    assert idx.shape == (3, 10)


@pytest.mark.parametrize("channels_last", [False, True])
def test_head_at_anchors_equals_dense_head(channels_last):
    torch.manual_seed(0)
    head = RPNHead(8, 3).double()
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    # Odd sizes and a 1x1 level: border cells read the zero padding on every side.
    feats = [torch.randn(2, 8, h, w, dtype=torch.float64) for h, w in ((9, 13), (5, 7), (1, 1))]
    if channels_last:
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    obj, deltas, sizes = flatten_outputs(*head(feats))
    n = obj.shape[1]
    g = torch.Generator().manual_seed(1)
    idx = torch.stack([torch.randperm(n, generator=g)[:40] for _ in range(2)])
    idx[0, :3] = torch.tensor([0, n - 1, n - 2])  # first and last anchors (the 1x1 level)
    logits, d = head_at_anchors(head, feats, idx, sizes)
    torch.testing.assert_close(logits, torch.gather(obj, 1, idx), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        d, torch.gather(deltas, 1, idx[..., None].expand(-1, -1, 4)), rtol=1e-12, atol=1e-12
    )


def _losses_and_grads(sparse: bool, fpn: bool):
    cfg = r50_fpn_1x.get_config()
    cfg.model.num_classes = 4
    cfg.model.backbone.depth = 18
    cfg.model.backbone.width = 8
    cfg.model.backbone.fpn = fpn
    cfg.model.backbone.fpn_channels = 16
    cfg.model.backbone.freeze_at = 0
    cfg.model.box_head.fc_dim = 32
    cfg.model.mask_head.conv_dim = 16
    cfg.model.rpn.pre_nms_top_n_train = 200
    cfg.model.rpn.post_nms_top_n_train = 100
    cfg.model.rpn.batch_size_per_image = 64
    cfg.model.roi_heads.batch_size_per_image = 32
    cfg.model.rpn.sparse_grad = sparse
    torch.manual_seed(0)
    model = build_model(cfg.model).double().train()
    _, images, targets, _ = synthetic_inputs(cfg, 2, 96, 128, torch.device("cpu"))
    images.tensor = images.tensor.double()
    model.sampling_generator = torch.Generator().manual_seed(3)
    losses = model(images, targets)
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.item() for k, v in losses.items()}, grads


@pytest.mark.parametrize("fpn", [True, False])
def test_sparse_rpn_gradient_equals_dense(fpn):
    dense_losses, dense_grads = _losses_and_grads(False, fpn)
    sparse_losses, sparse_grads = _losses_and_grads(True, fpn)
    assert sparse_losses.keys() == dense_losses.keys()
    for k in dense_losses:
        assert sparse_losses[k] == pytest.approx(dense_losses[k], rel=1e-6, abs=1e-9), k
    assert sparse_grads.keys() == dense_grads.keys()
    for name, g in dense_grads.items():
        assert sparse_grads[name] is not None, f"{name} got no gradient on the sparse path"
        scale = float(g.abs().max()) + 1e-30
        torch.testing.assert_close(sparse_grads[name], g, rtol=1e-9, atol=1e-9 * scale, msg=name)
    # The RPN head really is trained through the sparse path.
    assert float(sparse_grads["rpn.conv.weight"].abs().max()) > 0
