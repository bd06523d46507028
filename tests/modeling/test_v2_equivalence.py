"""torchvision's `maskrcnn_resnet50_fpn_v2` converted into our model
(configs/coco_torchvision_v2.py) computes what torchvision computes.

torchvision's v2 (weights=None) has BatchNorm everywhere: body, FPN, box head, mask head. Its
random init leaves BN at unit statistics, which makes 50 layers of random convolutions either
explode or vanish; each norm is instead calibrated on its own input during one forward pass (a
pre-hook sets its running statistics near the real batch statistics, with random jitter, and
random affines), so activations stay O(1) and a wrong fold or a swapped statistic would show.
Images of several sizes run one per batch (padding a batch changes border features in
torchvision too).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from configs import coco_torchvision_v2
from mrcnn.modeling import build_model
from mrcnn.modeling.postprocess import detections_to_original
from mrcnn.structures import ImageBatch
from mrcnn.weights import load_weights

MIN_SIZE, MAX_SIZE = 320, 480
SIZES = [(320, 400), (288, 352), (360, 270)]  # landscape, smaller, portrait


def calibrate_batchnorms(model: nn.Module, images: list[torch.Tensor], g: torch.Generator) -> int:
    """Sets every BatchNorm2d's statistics from its own input in one eval pass; -> how many."""

    def calibrate(m, inputs):
        x = inputs[0]
        if x.shape[0] == 0:
            return
        c = m.num_features
        m.running_mean.copy_(x.mean((0, 2, 3)) + torch.randn(c, generator=g) * 0.05)
        m.running_var.copy_(x.var((0, 2, 3)) * (torch.rand(c, generator=g) + 0.5) + 1e-3)
        m.weight.copy_(torch.rand(c, generator=g) + 0.5)
        m.bias.copy_(torch.randn(c, generator=g) * 0.1)
        m.calibrated = True

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = [m.register_forward_pre_hook(calibrate) for m in bns]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return sum(bool(getattr(m, "calibrated", False)) for m in bns)


def v2_config():
    cfg = coco_torchvision_v2.get_config()
    cfg.input.min_size_test, cfg.input.max_size_test = MIN_SIZE, MAX_SIZE
    return cfg


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None, min_size=MIN_SIZE, max_size=MAX_SIZE
    ).eval()
    images = [torch.rand(3, h, w, generator=g) for h, w in SIZES]
    with torch.no_grad():
        # An untrained classifier spreads its probability over 91 classes, under the 0.05
        # threshold; sharpening it gives detections with distinct scores (and mask-head input
        # for the calibration pass).
        tv.roi_heads.box_predictor.cls_score.weight.mul_(6.0)
    n = calibrate_batchnorms(tv, images[:1], g)
    total = sum(isinstance(m, nn.BatchNorm2d) for m in tv.modules())
    assert n == total, f"{total - n} BatchNorms saw no input"
    path = tmp_path_factory.mktemp("v2") / "tv_v2.pth"
    torch.save(tv.state_dict(), path)
    ours = build_model(v2_config().model)
    # The user's path: a torchvision file, every key and shape checked; all norms BatchNorm in
    # eval mode, as torchvision's.
    assert load_weights(ours, str(path), "torchvision", strict_classes=True) == []
    ours.eval()
    return tv, ours, images, path


def _compare(exp: dict, final) -> None:
    assert len(final) == len(exp["boxes"]) > 10
    # The same operations in the same order: equal bits up to the paste (boxes are rescaled to
    # the original image by another formula than torchvision's).
    torch.testing.assert_close(final.boxes, exp["boxes"], rtol=0, atol=1e-3)
    assert torch.equal(final.scores, exp["scores"])
    assert torch.equal(final.labels, exp["labels"])
    m_tv = exp["masks"][:, 0] > 0.5
    m_ours = final.masks.bool()
    inter = (m_tv & m_ours).sum((1, 2)).float()
    union = (m_tv | m_ours).sum((1, 2)).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    assert iou.min() >= 0.99


def test_v2_inference_equals_torchvision(models):
    tv, ours, images, _ = models
    for img in images:
        with torch.no_grad():
            batch, _ = tv.transform([img])
            expected = tv([img])[0]
            det = ours(ImageBatch(batch.tensors, batch.image_sizes))[0]
        final = detections_to_original(det, batch.image_sizes[0], tuple(img.shape[-2:]))
        _compare(expected, final)


def test_ready_config_predicts_with_the_weights_flag_only(models, tmp_path):
    """`main.py --mode=predict` with configs/coco_torchvision_v2.py and the torchvision file:
    the predictions are torchvision's (the default fast paths round differently: compared to
    1e-3, each of torchvision's detections matched by label and box)."""
    import json
    import os
    import subprocess
    import sys

    from PIL import Image

    tv, _, images, weights = models
    img8 = (images[2] * 255).round().to(torch.uint8)
    png = tmp_path / "portrait.png"
    Image.fromarray(img8.permute(1, 2, 0).numpy()).save(png)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    workdir = tmp_path / "run"
    cmd = [sys.executable, os.path.join(root, "main.py"), "--config=configs/coco_torchvision_v2.py",
           "--mode=predict", f"--workdir={workdir}", f"--config.init.weights={weights}",
           f"--config.predict.input={png}",
           "--config.predict.score_thresh=0.05"]  # the random model's scores are ~0.2
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    preds = json.loads((workdir / "predictions.json").read_text())
    assert (workdir / "predictions").is_dir()
    tv.transform.min_size, tv.transform.max_size = (800,), 1333  # the config's test size
    try:
        with torch.no_grad():
            exp = tv([img8.float() / 255])[0]
    finally:
        tv.transform.min_size, tv.transform.max_size = (MIN_SIZE,), MAX_SIZE
    assert len(preds) == len(exp["boxes"]) > 10
    xywh = torch.tensor([p["bbox"] for p in preds])
    ours = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    labels = torch.tensor([p["category_id"] for p in preds])
    scores = torch.tensor([p["score"] for p in preds])
    iou = torchvision.ops.box_iou(exp["boxes"], ours)
    close = (exp["scores"][:, None] - scores[None]).abs() < 1e-3
    same = (exp["labels"][:, None] == labels[None]) & close
    matched = ((iou > 0.99) & same).any(1)
    assert matched.float().mean() >= 0.95, f"{int((~matched).sum())} of {len(matched)} unmatched"
