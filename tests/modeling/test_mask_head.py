"""The mask predictor's per-class logits: the selected class's channel equals the full head's."""

from __future__ import annotations

import torch

from mrcnn.modeling.mask_head import MaskPredictor, select_class


def test_mask_predictor_selected_class_equals_full_logits():
    torch.manual_seed(0)
    pred = MaskPredictor(16, 8, 5)
    x = torch.randn(6, 16, 7, 7, requires_grad=True)
    labels = torch.tensor([1, 4, 4, 0, 2, 3])
    full = select_class(pred(x), labels)
    sel = pred(x, labels)
    assert sel.shape == (6, 14, 14)
    torch.testing.assert_close(sel, full, rtol=1e-5, atol=1e-6)
    g_full = torch.autograd.grad(full.sum(), (x, pred.logits.weight))
    g_sel = torch.autograd.grad(sel.sum(), (x, pred.logits.weight))
    for a, b in zip(g_sel, g_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert pred(x[:0], labels[:0]).shape == (0, 14, 14)
