"""Deployment: torch.export (.pt2), AOTInductor and ONNX artifacts of a trained model.

Entry points (the modes call them; importing this package imports no exporter):
- `run(config, workdir, device) -> dict`: --mode=export, writes the artifacts and sidecars;
- `load_artifact(path) -> callable`: --mode=predict with predict.artifact, runs one artifact
  on a list of uint8 [3, H, W] images without building the model;
- `bench_artifacts(config, workdir, device) -> dict`: eager vs each artifact, images/s.
"""

from __future__ import annotations


def run(config, workdir, device):
    from mrcnn.export.runner import run as _run

    return _run(config, workdir, device)


def load_artifact(path):
    from mrcnn.export.artifact import load_artifact as _load

    return _load(path)


def bench_artifacts(config, workdir, device):
    from mrcnn.export.bench import bench_artifacts as _bench

    return _bench(config, workdir, device)
