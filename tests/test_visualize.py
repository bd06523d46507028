"""draw_detections: what is drawn where, in which colour, and what is left alone."""

from __future__ import annotations

import pytest
import torch
from torchvision.utils import draw_segmentation_masks

from mrcnn.structures import Detections
from mrcnn.visualize import blend_masks, class_color, draw_detections


def _image(h=40, w=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 60, (3, h, w), generator=g, dtype=torch.uint8)


def _det(boxes, scores, labels, masks=None):
    return Detections(
        torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores), torch.tensor(labels), masks
    )


def test_class_colors_are_fixed_and_distinct():
    colors = [class_color(i) for i in range(1, 91)]
    assert colors == [class_color(i) for i in range(1, 91)]
    assert len(set(colors[:20])) == 20
    assert all(0 <= c <= 255 for rgb in colors for c in rgb)


def test_masks_boxes_and_threshold():
    img = _image(80, 100)
    before = img.clone()
    masks = torch.zeros(2, 80, 100, dtype=torch.uint8)
    masks[0, 5:45, 5:45] = 1
    masks[1, 50:75, 60:95] = 1
    det = _det([[4, 4, 46, 46], [59, 49, 96, 76]], [0.9, 0.3], [1, 2], masks)
    out = draw_detections(img, det, ["__bg__", "cat", "dog"], score_thresh=0.5)
    assert torch.equal(img, before)  # input untouched
    assert out.dtype == torch.uint8 and out.shape == img.shape
    # Inside the kept mask (below its label text): blended halfway towards the class colour.
    c = torch.tensor(class_color(1), dtype=torch.float32)[:, None, None]
    expected = 0.5 * img[:, 25:42, 8:42].float() + 0.5 * c
    assert (out[:, 25:42, 8:42].float() - expected).abs().max() <= 1.0
    # The box outline has the class colour; the detection below the threshold is not drawn.
    assert out[:, 45, 20].tolist() == list(class_color(1))
    assert torch.equal(out[:, 48:, 55:], img[:, 48:, 55:])
    # Outside the box: untouched.
    assert torch.equal(out[:, 50:, :40], img[:, 50:, :40])


def test_nothing_to_draw_and_no_masks():
    img = _image(seed=1)
    empty = _det(torch.zeros(0, 4).tolist(), [], [])
    empty.labels = empty.labels.long()
    assert torch.equal(draw_detections(img, empty, {}), img)
    low = _det([[1, 1, 5, 5]], [0.1], [3])
    assert torch.equal(draw_detections(img, low, {}, score_thresh=0.5), img)
    boxes_only = _det([[2, 2, 35, 35]], [0.8], [3])
    out = draw_detections(img, boxes_only, {3: "x"})
    assert out[:, 2, 10].tolist() == list(class_color(3))
    assert torch.equal(out[:, 20:32, 5:32], img[:, 20:32, 5:32])  # inside the box, no mask


def test_boxes_outside_the_image_and_unknown_names():
    img = _image(seed=2)
    det = _det([[-10, -5, 80, 70], [30, 30, 30, 30]], [0.9, 0.8], [7, 1])
    out = draw_detections(img, det, ["bg", "a"])  # label 7 has no name: drawn as "7"
    assert out.shape == img.shape
    assert out[:, 20, 0].tolist() == list(class_color(7))  # clamped onto the left edge


def test_higher_score_on_top_where_masks_overlap():
    img = torch.zeros(3, 20, 20, dtype=torch.uint8)
    masks = torch.zeros(2, 20, 20, dtype=torch.uint8)
    masks[0, 2:18, 2:18] = 1
    masks[1, 2:18, 2:18] = 1
    det = _det([[2, 2, 18, 18], [2, 2, 18, 18]], [0.95, 0.6], [1, 2], masks)
    out = draw_detections(img, det, {}, alpha=1.0)
    assert out[:, 10, 10].tolist() == list(class_color(1))  # not black, not the 0.6 one


def test_rejects_bad_inputs():
    det = _det([[1, 1, 5, 5]], [0.9], [1], torch.ones(1, 10, 10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="masks are"):
        draw_detections(_image(), det, {})
    with pytest.raises(ValueError, match="uint8"):
        draw_detections(_image().float(), det, {})


def test_blend_masks_equals_torchvision_on_disjoint_masks():
    g = torch.Generator().manual_seed(4)
    img = torch.randint(0, 256, (3, 30, 40), generator=g, dtype=torch.uint8)
    masks = torch.zeros(3, 30, 40, dtype=torch.bool)
    masks[0, :10] = True
    masks[1, 12:20, 5:30] = True
    masks[2] = torch.rand(30, 40, generator=g) > 0.7
    masks[2, :20] = False
    colors = [class_color(i) for i in (1, 2, 3)]
    ours = blend_masks(img, masks, colors, 0.6)
    ref = draw_segmentation_masks(img, masks, alpha=0.6, colors=colors)
    # torchvision truncates where we round: at most 1 apart.
    assert (ours.int() - ref.int()).abs().max() <= 1
    assert torch.equal(blend_masks(img, masks[:0], [], 0.6), img)
