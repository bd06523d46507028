"""The drawing helpers the analysis added to mrcnn/visualize.py, on tiny and empty inputs."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mrcnn import visualize as V


def _img(h=10, w=12, v=100):
    return torch.full((3, h, w), v, dtype=torch.uint8)


def test_draw_instances():
    img = _img()
    assert torch.equal(V.draw_instances(img, torch.zeros((0, 4)), []), img)
    masks = torch.zeros((1, 10, 12), dtype=torch.uint8)
    masks[0, 2:5, 3:6] = 1
    out = V.draw_instances(img, torch.tensor([[3.0, 2.0, 6.0, 5.0]]), [(255, 0, 0)], None, masks,
                           alpha=1.0)
    assert out[:, 3, 4].tolist() == [255, 0, 0]  # inside the mask: the colour
    assert out[:, 9, 11].tolist() == [100, 100, 100]  # elsewhere untouched
    # Boxes outside the image or inverted are clamped, not refused; a text needs no font file.
    V.draw_instances(img, torch.tensor([[-5.0, 8.0, 50.0, 2.0]]), [(0, 255, 0)], ["x"])
    with pytest.raises(ValueError, match="masks are"):
        V.draw_instances(img, torch.zeros((1, 4)), [(0, 0, 0)], None, masks[:, :5])
    with pytest.raises(ValueError, match="uint8"):
        V.draw_instances(img.float(), torch.zeros((0, 4)), [])


def test_panels_sheets_and_enlarge(tmp_path):
    row = V.side_by_side([_img(10, 12), _img(6, 4)], gap=3)
    assert row.shape == (3, 10, 12 + 3 + 4) and row[:, 9, 16].tolist() == [255] * 3  # white pad
    sheet = V.contact_sheet([_img()] * 5, columns=2, tile=8, gap=2)
    assert sheet.shape == (3, 3 * 8 + 2 * 2, 2 * 8 + 2)
    assert V.contact_sheet([_img()], columns=4, tile=8).shape == (3, 8, 8)
    with pytest.raises(ValueError):
        V.contact_sheet([])
    with pytest.raises(ValueError):
        V.side_by_side([])
    big, s = V.enlarge(_img(128, 64), 384)
    assert s == 3 and big.shape == (3, 384, 192)
    assert V.enlarge(_img(500, 20), 384)[1] == 1
    cap = V.with_caption(_img(), ["one", "two"])
    assert cap.shape[1] > 10 and cap.shape[2] == 12
    path = V.save_png(cap, str(tmp_path / "a" / "c.png"))
    assert Image.open(path).size == (12, cap.shape[1])
