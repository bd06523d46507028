"""ONNX through torch's dynamo exporter, and onnxruntime sessions to run it.

The same ExportedProgram as the .pt2 (dynamic batch and image size) is exported after its
custom operators are decomposed or translated (onnx_ops.py), at opset 18 (RoiAlign's
coordinate_transformation_mode needs 16).
"""

from __future__ import annotations

import os

import torch

from mrcnn.export import onnx_ops
from mrcnn.export.wrapper import OUTPUT_NAMES

OPSET = 18


def export_onnx(ep: torch.export.ExportedProgram, path: str) -> str:
    """Writes `ep` (DeployModel's program) as ONNX to `path` (weights inside the file)."""
    decomposed = ep.run_decompositions(onnx_ops.decomposition_table())
    onnx_program = torch.onnx.export(
        decomposed,
        dynamo=True,
        opset_version=OPSET,
        input_names=["images"],
        output_names=list(OUTPUT_NAMES),
        custom_translation_table=onnx_ops.translation_table(),
        optimize=True,
        verify=False,
    )
    onnx_program.save(path, external_data=False)
    return path


def ort_session(path: str, threads: int | None = None):
    """An onnxruntime CPU session of the model at `path`."""
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such ONNX file")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
