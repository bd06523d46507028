"""Loading an exported artifact: `load_artifact(path)` -> a Predictor, without the model.

The artifact's sidecar (`<path>.json`) says its format ("pt2", "aoti", "onnx"), the input
sizes it was traced with and the category table. The torch formats call the custom operators
(torch.ops.mrcnn.*): they come from `import ops` inside this repository, or else from the
operator library shipped next to the artifact (`sidecar["ops_library"]`), which is all a
deployment outside the repository needs besides torch.
"""

from __future__ import annotations

import json
import os
import types
import zipfile

import torch

from mrcnn.export.predictor import Predictor
from mrcnn.weights import WeightsError


class ArtifactError(WeightsError):
    """An artifact file or sidecar that exists but cannot be loaded (not an export, damaged,
    of another format). A WeightsError, so main.py reports it in one line (exit 2) as it does
    an unreadable checkpoint, instead of a traceback from deep inside torch or onnxruntime."""


def read_sidecar(path: str) -> dict:
    side = path + ".json"
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.predict.artifact={path!r} does not exist")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.predict.artifact={path!r} is not a file")
    if not os.path.isfile(side):
        raise FileNotFoundError(f"{side}: the artifact's sidecar is missing (written by "
                                "--mode=export next to the artifact)")
    try:
        with open(side) as f:
            return json.load(f)
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
        raise ArtifactError(f"{side}: not a sidecar json: {e}") from e


def load_operators(sidecar: dict, folder: str) -> None:
    """Registers torch.ops.mrcnn.* : the repository's ops, else the shipped library."""
    if hasattr(torch.ops, "mrcnn") and hasattr(torch.ops.mrcnn, "batched_nms"):
        return
    try:
        import ops  # noqa: F401  (registers the operators)
        return
    except ImportError:
        pass
    lib = os.path.join(folder, sidecar.get("ops_library") or "")
    if not os.path.isfile(lib):
        raise FileNotFoundError(f"{lib}: the operator library the artifact calls is missing")
    torch.ops.load_library(lib)


def run_batch_of(path: str, fmt: str):
    """The same-size batch function of an artifact file."""
    if fmt in ("pt2", "aoti") and not zipfile.is_zipfile(path):
        # Both are zip archives; torch.export.load would log its own traceback of the failed
        # read before raising, burying the one line that names the file.
        raise ArtifactError(f"{path}: not a zip archive, so not a {fmt!r} artifact (damaged, "
                            "or another file under its name)")
    if fmt == "pt2":
        module = torch.export.load(path).module()
        return lambda x: module(x)
    if fmt == "aoti":
        runner = torch._inductor.aoti_load_package(path)
        return lambda x: runner(x)
    if fmt == "onnx":
        from mrcnn.export.onnx_export import ort_session

        session = ort_session(path)
        return lambda x: [torch.from_numpy(o) for o in session.run(None, {"images": x.numpy()})]
    raise ValueError(f"{path}.json: unknown artifact format {fmt!r}")


def load_artifact(path: str, max_batch: int = 8) -> Predictor:
    """A Predictor (list of uint8 [3, H, W] -> per-image dicts of boxes, labels, scores, masks
    at the original size) running the artifact at `path`."""
    from mrcnn.export.program import check_size

    sidecar = read_sidecar(path)
    fmt = sidecar.get("format")
    if fmt in ("pt2", "aoti"):
        load_operators(sidecar, os.path.dirname(os.path.abspath(path)))
    try:
        run_batch = run_batch_of(path, fmt)
        input_cfg = types.SimpleNamespace(**sidecar["input"]["sizes"])
        limit = int(sidecar["input"]["max_batch"])
    except ArtifactError:
        raise  # already names the file and why
    except Exception as e:
        # Whatever torch.export, AOTInductor or onnxruntime raise on a file they cannot read
        # (BadZipFile, RuntimeError, onnxruntime's InvalidProtobuf, which is a bare Exception),
        # or a sidecar without its input keys: the user's file, named, not a traceback.
        raise ArtifactError(f"{path}: cannot load it as the {fmt!r} artifact its sidecar "
                            f"names: {type(e).__name__}: {e}") from e
    return Predictor(run_batch, max_batch=min(max_batch, limit),
                     check=lambda h, w: check_size(h, w, input_cfg),
                     categories=sidecar.get("categories"))
