"""mask_targets: polygon and RLE targets of the positive RoIs, mixed batches, empty cases."""

from __future__ import annotations

import pytest
import torch

import ops
from mrcnn.modeling.mask_targets import mask_targets
from mrcnn.structures import InstanceMasks


def _square_poly(x0, y0, x1, y1):
    return torch.tensor([x0, y0, x1, y0, x1, y1, x0, y1], dtype=torch.float32)


def _raster(poly: torch.Tensor, h: int, w: int) -> torch.Tensor:
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects([poly.tolist()], h, w)
    return torch.from_numpy(mask_utils.decode(mask_utils.merge(rle))).to(torch.uint8)


def test_polygon_targets_match_bitmask_targets():
    """The same instances as polygons and as rasterized bitmasks give nearly the same targets
    (polygons are rasterized at the RoI's resolution, bitmasks resampled: IoU tolerance)."""
    g = torch.Generator().manual_seed(6)
    h, w = 120, 160
    polys = [
        [_square_poly(10, 12, 70, 90)],
        [torch.tensor([80.0, 20, 150, 30, 120, 110], dtype=torch.float32)],  # a triangle
        [_square_poly(20, 60, 50, 100), _square_poly(40, 80, 90, 115)],  # two parts, overlapping
    ]
    bitmasks = torch.stack(
        [torch.stack([_raster(p, h, w) for p in inst]).amax(0) for inst in polys]
    )
    gt_boxes = torch.tensor([[10.0, 12, 70, 90], [80, 20, 150, 110], [20, 60, 90, 115]])
    rois = torch.cat([gt_boxes, gt_boxes + torch.randn(3, 4, generator=g) * 3])
    matched = torch.tensor([0, 1, 2, 0, 1, 2])
    bidx = torch.zeros(6, dtype=torch.int64)
    t_poly = mask_targets(rois, bidx, matched, [InstanceMasks(polys)], 28)
    t_bit = mask_targets(rois, bidx, matched, [InstanceMasks([[]] * 3, bitmasks)], 28)
    assert set(t_poly.unique().tolist()) <= {0.0, 1.0}
    a, b = t_poly > 0.5, t_bit > 0.5
    iou = (a & b).sum((1, 2)).float() / (a | b).sum((1, 2)).float()
    assert iou.min() > 0.9, iou
    # mixed: image 0 polygons, image 1 RLE, in one call
    mixed = mask_targets(
        torch.cat([rois[:3], rois[:3]]),
        torch.tensor([0, 0, 0, 1, 1, 1]),
        torch.tensor([0, 1, 2, 0, 1, 2]),
        [InstanceMasks(polys), InstanceMasks([[]] * 3, bitmasks)],
        28,
    )
    torch.testing.assert_close(mixed[:3], t_poly[:3])
    torch.testing.assert_close(mixed[3:], t_bit[:3])


def test_mask_targets_none_and_empty():
    out = mask_targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                       torch.zeros(0, dtype=torch.int64), [None], 14)
    assert out.shape == (0, 14, 14)
    # An image without masks gives zero targets (the model refuses ground truth without
    # masks before: checking rows here would read the device).
    one = torch.tensor([0])
    out = mask_targets(torch.tensor([[0.0, 0, 5, 5]]), one, one, [None], 14)
    assert out.shape == (1, 14, 14) and not out.any()
    with pytest.raises(ValueError, match="neither polygons nor a bitmask"):
        mask_targets(torch.tensor([[0.0, 0, 5, 5]]), one, one, [InstanceMasks([[]])], 14)


def _unpadded_polygon_targets(rois, polys_of_row, m):
    """The kernel on exactly each row's own polygons, one row at a time (no padding)."""
    out = []
    for roi, polys in zip(rois, polys_of_row):
        coords = torch.cat(polys) if polys else torch.zeros(0)
        lens = torch.tensor([0] + [len(p) for p in polys])
        out.append(ops.polygons_to_masks(coords, lens.cumsum(0), torch.tensor([0, len(polys)]),
                                         roi[None], m))
    return torch.cat(out)


def test_fixed_size_polygon_layout_rasterises_like_each_instance_alone():
    """Instances with 1..3 polygons of different lengths (a 2-point one too) padded to one
    block size give bit for bit the raster of their own polygons; invalid rows and rows whose
    matched index is out of range (unused slots) are zero."""
    g = torch.Generator().manual_seed(7)

    def poly(n):
        ang = torch.sort(torch.rand(n, generator=g) * 6.283).values
        r = 10 + torch.rand(n, generator=g) * 20
        c = torch.rand(2, generator=g) * 40 + 20
        return torch.stack([c[0] + r * ang.cos(), c[1] + r * ang.sin()], 1).reshape(-1)

    images = [
        [[poly(3)], [poly(9), poly(4)], [poly(5), torch.tensor([5.0, 5, 60, 60]), poly(12)]],
        [[poly(7)], [poly(30)]],
    ]
    xy = torch.rand(12, 2, generator=g) * 30
    rois = torch.cat([xy, xy + 15 + torch.rand(12, 2, generator=g) * 50], 1)
    bidx = torch.tensor([0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1])
    matched = torch.tensor([0, 1, 2, 0, 1, 2, 1, 1, 0, 0, 5, 0])  # row 10: out of range
    valid = torch.ones(12, dtype=torch.bool)
    valid[11] = False
    out = mask_targets(rois, bidx, matched, [InstanceMasks(p) for p in images], 28, valid=valid)
    keep = [bool(valid[i]) and int(matched[i]) < len(images[int(bidx[i])]) for i in range(12)]
    polys = [images[int(b)][int(j)] if k else [] for b, j, k in zip(bidx, matched, keep)]
    expected = _unpadded_polygon_targets(rois, polys, 28)
    assert expected.any()
    assert torch.equal(out, expected)
    assert not out[10:].any()
