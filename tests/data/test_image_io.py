"""Image decoding: every common file mode becomes uint8 RGB [3, H, W], EXIF orientation applied,
bad files give an ImageError naming them."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mrcnn.data import ImageError, load_image
from mrcnn.data.coco import read_checked_image


def _rgb(h=5, w=7, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _check(t: torch.Tensor, h: int, w: int) -> None:
    assert t.dtype == torch.uint8 and t.shape == (3, h, w) and t.is_contiguous()


def test_rgb_png_round_trips_exactly(tmp_path):
    a = _rgb()
    Image.fromarray(a).save(tmp_path / "x.png")
    t = load_image(str(tmp_path / "x.png"))
    _check(t, 5, 7)
    assert np.array_equal(t.permute(1, 2, 0).numpy(), a)
    t[0, 0, 0] = 1  # writable memory, no warning about read-only buffers


def test_grayscale_rgba_palette_cmyk_and_bilevel(tmp_path):
    a = _rgb()
    gray = a[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    t = load_image(str(tmp_path / "l.png"))
    _check(t, 5, 7)
    assert all(np.array_equal(t[c].numpy(), gray) for c in range(3))

    rgba = np.concatenate([a, np.full((5, 7, 1), 17, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    t = load_image(str(tmp_path / "rgba.png"))
    assert np.array_equal(t.permute(1, 2, 0).numpy(), a)  # alpha dropped, colours kept

    Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(
        tmp_path / "p.png", transparency=0
    )
    _check(load_image(str(tmp_path / "p.png")), 5, 7)
    Image.fromarray(a).convert("CMYK").save(tmp_path / "c.jpg")
    _check(load_image(str(tmp_path / "c.jpg")), 5, 7)
    Image.fromarray(gray > 128).save(tmp_path / "b.png")
    t = load_image(str(tmp_path / "b.png"))
    assert set(t.unique().tolist()) <= {0, 255}


def test_16_bit_grayscale_is_scaled_to_8_bits(tmp_path):
    v = np.array([[0, 257, 65535], [32896, 128, 65280]], dtype=np.uint16)
    Image.fromarray(v).save(tmp_path / "g16.png")
    t = load_image(str(tmp_path / "g16.png"))
    _check(t, 2, 3)
    assert t[0].tolist() == [[0, 1, 255], [128, 0, 254]]  # round(v / 257)
    assert torch.equal(t[0], t[1]) and torch.equal(t[0], t[2])


def test_exif_orientation_is_applied(tmp_path):
    a = _rgb(4, 6)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    upright = load_image(str(tmp_path / "r.jpg"))
    stored = load_image(str(tmp_path / "r.jpg"), apply_exif=False)
    _check(upright, 6, 4)
    _check(stored, 4, 6)
    assert torch.equal(upright, torch.rot90(stored, k=-1, dims=(1, 2)))
    # Annotations made on the stored pixels (their size says so) get the stored pixels.
    assert torch.equal(read_checked_image(str(tmp_path / "r.jpg"), 4, 6), stored)
    assert torch.equal(read_checked_image(str(tmp_path / "r.jpg"), 6, 4), upright)
    with pytest.raises(ImageError, match="does not match the annotation"):
        read_checked_image(str(tmp_path / "r.jpg"), 5, 5)


@pytest.mark.parametrize("content", [b"", b"hello", None])
def test_bad_files_raise_image_error_naming_the_file(tmp_path, content):
    p = tmp_path / "bad.jpg"
    if content is None:  # a JPEG cut in half
        Image.fromarray(_rgb(64, 64)).save(p, quality=90)
        p.write_bytes(p.read_bytes()[:200])
    else:
        p.write_bytes(content)
    with pytest.raises(ImageError) as e:
        load_image(str(p))
    assert str(p) in str(e.value) and e.value.path == str(p)


def test_missing_file_raises_image_error(tmp_path):
    with pytest.raises(ImageError, match="missing.png"):
        load_image(str(tmp_path / "missing.png"))


def test_a_fifo_or_a_folder_is_refused_at_once_naming_the_file(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: never here
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match=r"x\.jpg.*a FIFO"):
        load_image(str(fifo))
    assert time.perf_counter() - t0 < 5
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ImageError, match=r"d\.png.*not a regular file"):
        load_image(str(tmp_path / "d.png"))


def test_a_read_that_hangs_is_given_up_after_the_bound(tmp_path):
    from mrcnn.data import image_io

    fifo = str(tmp_path / "hung.jpg")
    os.mkfifo(fifo)

    def raw_read(p):  # no regular-file check: blocks in open() like a dead mount
        with open(p, "rb") as f:
            return f.read()

    t0 = time.perf_counter()
    with pytest.raises(ImageError, match=r"hung\.jpg: reading did not finish within 0.3 s"):
        image_io.read_bounded(fifo, read=raw_read, timeout=0.3)
    assert time.perf_counter() - t0 < 5
    # Release the stuck reader thread (a writer appears and closes: it reads EOF).
    fd = os.open(fifo, os.O_WRONLY)
    os.close(fd)
    assert image_io.read_bounded(__file__, timeout=10).startswith(b'"""')


def test_a_process_with_a_hung_read_still_exits(tmp_path):
    import subprocess
    import sys

    fifo = str(tmp_path / "hung.jpg")
    os.mkfifo(fifo)
    script = (
        "from mrcnn.data import image_io\n"
        "raw = lambda p: open(p, 'rb').read()\n"
        "try:\n"
        f"    image_io.read_bounded({fifo!r}, read=raw, timeout=0.2)\n"
        "except image_io.ImageError as e:\n"
        "    print('refused', e)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "refused" in r.stdout and "hung.jpg" in r.stdout, r.stderr
