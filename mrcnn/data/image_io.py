"""Decoding image files into uint8 RGB tensors, whatever the file's mode or orientation."""

from __future__ import annotations

import io
import os
import queue
import stat
import threading

import numpy as np
import torch
from PIL import Image, ImageOps

# 16-bit and 32-bit integer modes; 8-bit modes go through PIL's own RGB conversion.
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageError(OSError):
    """An image file that cannot be read or decoded; `path` names it."""

    def __init__(self, path: str, why: str):
        super().__init__(f"cannot read image {path}: {why}")
        self.path = path
        self.why = why

    def with_image_id(self, image_id: int) -> "ImageError":
        """The same error, naming the dataset's image id too."""
        return ImageError(self.path, f"{self.why} (image id {image_id})")

    def __reduce__(self):
        # The default rebuilds from the message alone, which __init__ cannot take: without
        # this the error could not cross from a loader worker to the main process.
        return (type(self), (self.path, self.why))


def _wide_to_uint8(img: Image.Image) -> np.ndarray:
    """16-bit (or 32-bit integer) grayscale -> uint8 [H, W, 3], mapping 0..65535 to 0..255."""
    a = np.asarray(img)
    if a.dtype.kind == "f":
        a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
        return np.repeat(
            np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)[..., None], 3, axis=2
        )
    a = a.astype(np.int64)
    # Mode "I" also holds 8-bit data that PIL widened; only rescale what exceeds 8 bits.
    if a.size and (img.mode != "I" or a.max() > 255):
        a = (np.clip(a, 0, 65535) + 128) // 257
    return np.repeat(np.clip(a, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in _WIDE_INT_MODES or img.mode == "F":
        return _wide_to_uint8(img)
    if img.mode == "P":
        # Palette images with a transparent index warn on a direct RGB conversion.
        img = img.convert("RGBA")
    if img.mode != "RGB":
        # Alpha is dropped (not composited), as torchvision's decode_image(mode=RGB) does.
        img = img.convert("RGB")
    return np.asarray(img)


# How long reading one image file may take before it counts as unreadable. Far above any real
# read (a 20 MB photo from a slow network disk); a hung mount never returns at all.
READ_TIMEOUT_S = 60.0


def _read_regular_file(path: str) -> bytes:
    """The bytes of `path`, refusing what is not a regular file: opening a FIFO blocks until a
    writer appears, a device file may never end."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
        raise ImageError(path, f"{kind} (mode {stat.filemode(st.st_mode)}), not an image file")
    with open(path, "rb") as f:
        return f.read()


class _Reader:
    """A reused daemon thread that runs reads (starting a thread per image costs ~0.25 ms on a
    busy machine). A read that hangs keeps its thread: that reader is abandoned and a fresh one
    serves the next read. A daemon, unlike a ThreadPoolExecutor's threads, never holds up the
    interpreter's exit. Rebuilt after a fork (a DataLoader worker inherits no threads)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="image-read", daemon=True).start()

    def _loop(self) -> None:
        while True:
            read, path, box, done = self.jobs.get()
            try:
                box["data"] = read(path)
            except BaseException as e:  # handed to the caller, who raises it
                box["error"] = e
            done.set()


_READER: _Reader | None = None
_READER_LOCK = threading.Lock()


def read_bounded(path: str, read=_read_regular_file, timeout: float | None = None) -> bytes:
    """`read(path)` in a helper thread, given up after `timeout` s (default READ_TIMEOUT_S)
    with an ImageError: a stat or read on a dead network mount blocks in the kernel, where
    nothing can interrupt it. The stuck thread ends if the read ever does."""
    global _READER
    timeout = READ_TIMEOUT_S if timeout is None else timeout
    with _READER_LOCK:
        if _READER is None or _READER.pid != os.getpid():
            _READER = _Reader()
        reader = _READER
    box: dict = {}
    done = threading.Event()
    reader.jobs.put((read, path, box, done))
    if not done.wait(timeout):
        with _READER_LOCK:
            if _READER is reader:
                _READER = None
        raise ImageError(path, f"reading did not finish within {timeout:g} s (a hung mount?)")
    if "error" in box:
        raise box["error"]
    return box["data"]


def load_image(path: str, apply_exif: bool = True) -> torch.Tensor:
    """Reads an image file as uint8 [3, H, W] RGB.

    The EXIF orientation is applied (a photo taken sideways comes out upright) unless
    `apply_exif` is False; grayscale, RGBA, palette, CMYK and 16-bit files are converted.
    Raises `ImageError` naming the file when it is missing, truncated, not an image, not a
    regular file (a FIFO, a device) or not read within READ_TIMEOUT_S.
    """
    try:
        data = read_bounded(path)
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if apply_exif:
                img = ImageOps.exif_transpose(img)
            arr = _to_rgb_array(img)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL signals bad files with OSError (missing, truncated), UnidentifiedImageError (an
        # OSError), SyntaxError (some broken headers) or ValueError.
        raise ImageError(path, f"{type(e).__name__}: {e}") from e
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(path, f"decoded to an unusable array of shape {arr.shape}")
    # One copy, HWC -> CHW, into memory torch may write to (PIL's buffer is read-only).
    return torch.from_numpy(np.array(arr.transpose(2, 0, 1), order="C"))
