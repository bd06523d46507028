"""The json written next to each artifact (`<artifact>.json`): what a deployment needs to know.

format, the config name, the category table (label -> category id -> name), the input
convention and the sizes the pre-processing uses, the outputs, the network's dtype, the
versions of the libraries that made it, and the parity figures measured at export against the
eager model.
"""

from __future__ import annotations

import platform

import torch

from mrcnn.export import program
from mrcnn.export.wrapper import OUTPUT_NAMES

INPUT_CONVENTION = (
    "images: uint8 [B, 3, H, W] RGB, the B images of one call of one size H x W (group a list by "
    "size); 1 <= B <= {max_b}, resized canvas side >= {min_c} px, image sides <= {max_s} px")
OUTPUT_CONVENTION = (
    "flat over the batch, by image then decreasing score: boxes float32 [D, 4] xyxy original "
    "pixels, scores float32 [D], labels int64 [D] (model labels, see categories), batch_idx "
    "int64 [D] (image of each detection), masks uint8 [D, H, W] (0/1, original size)")


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def categories_of(built, config) -> list[dict]:
    """[{"label", "id", "name"}] from the build's category table (else the training data's)."""
    table = getattr(built, "categories", None)
    if table is None:
        from mrcnn.data import get_dataset_meta

        table = get_dataset_meta(config)
    return [{"label": i + 1 if not table.ids_as_labels else int(cid), "id": int(cid),
             "name": str(name)} for i, (cid, name) in enumerate(zip(table.category_ids,
                                                                    table.names))]


def make_sidecar(fmt: str, config, categories: list[dict], parity: dict, tolerances: dict,
                 ops_library: str | None, max_batch: int, compiled: dict | None = None) -> dict:
    """`compiled`: how an AOTInductor package was compiled (layout traced, Inductor settings),
    recorded so that a package's speed or numerics can be traced back to its build."""
    inp = config.input
    side = {
        "format": fmt,
        "config": str(config.name),
        "categories": categories,
        "input": {
            "convention": INPUT_CONVENTION.format(max_b=program.MAX_BATCH,
                                                  min_c=program.MIN_CANVAS,
                                                  max_s=program.MAX_SIDE),
            "sizes": {"min_size_test": float(inp.min_size_test),
                      "max_size_test": float(inp.max_size_test),
                      "size_divisibility": int(inp.size_divisibility)},
            "pixel_mean": list(inp.pixel_mean), "pixel_std": list(inp.pixel_std),
            "to_bgr255": bool(inp.to_bgr255),
            "max_batch": int(max_batch),
        },
        "outputs": {"names": list(OUTPUT_NAMES), "convention": OUTPUT_CONVENTION},
        "mask_threshold": float(config.export.mask_threshold),
        "dtype": str(config.export.dtype),
        "ops_library": ops_library,
        "versions": versions(),
        "parity": {"figures": parity, "tolerances": tolerances},
    }
    if compiled is not None:
        side["compiled"] = compiled
    return side
