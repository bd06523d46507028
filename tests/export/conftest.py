"""Fixtures of the export tests: a tiny seeded Mask R-CNN, its config, and test images."""

import pytest
import torch

from configs import shapes


@pytest.fixture(scope="session")
def tiny_config():
    return shapes.get_config("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    from mrcnn.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config.model).eval()
    # Freshly initialized heads score every class near 1/num_classes (ties everywhere); larger
    # classifier and mask weights spread the scores and masks like a trained model's.
    with torch.no_grad():
        model.box_predictor.cls_score.weight.normal_(0, 0.2)
        model.box_predictor.cls_score.bias[0] += 1.0
        model.mask_predictor.logits.weight.mul_(5.0)
    return model


def make_images(sizes, seed=0):
    """uint8 [3, h, w] images: smooth blobs on noise, so the detector has edges to find."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        base = torch.rand((3, h // 8 + 1, w // 8 + 1), generator=g)
        img = torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear")[0]
        img = img + 0.1 * torch.rand((3, h, w), generator=g)
        out.append((img.clamp(0, 1) * 255).to(torch.uint8))
    return out
