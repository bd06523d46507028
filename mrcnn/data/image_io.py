"""Decoding image files into uint8 RGB tensors, whatever the file's mode or orientation."""

from __future__ import annotations

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


def load_image(path: str, apply_exif: bool = True) -> torch.Tensor:
    """Reads an image file as uint8 [3, H, W] RGB.

    The EXIF orientation is applied (a photo taken sideways comes out upright) unless
    `apply_exif` is False; grayscale, RGBA, palette, CMYK and 16-bit files are converted.
    Raises `ImageError` naming the file when it is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as img:
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
