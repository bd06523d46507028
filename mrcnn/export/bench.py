"""Speed of eager against each exported artifact, images/s, timed interleaved in one process.

On a shared machine the load drifts by more than the differences measured, so every round
runs eager and every artifact once each on the same batch (the order rotating from round to
round), and the figure reported for each artifact is the median over rounds of its time
relative to eager's in the same round, next to each one's median images/s.

"eager" is the model --mode=predict runs (its fast paths: channels_last and oneDNN on a CPU in
float32), the baseline of every ratio; "eager-export" the model that was traced (no fast paths,
the parity reference), timed beside it.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from mrcnn.export import parity
from mrcnn.export.artifact import load_artifact
from mrcnn.export.runner import FILES, build_deploy_model


def _runners(config, workdir: str, device) -> tuple[dict, str]:
    """(name -> callable(list of images) for eager and each published artifact, the dtype
    they were exported in: eager runs in it too)."""
    from mrcnn.export.artifact import read_sidecar
    from mrcnn.export.predictor import Predictor

    folder = os.path.join(workdir, config.export.dir)
    found = {}
    for fmt in config.export.formats:
        path = os.path.join(folder, FILES[fmt].format(device=torch.device(device).type))
        if os.path.isfile(path):
            found[fmt] = path
    if not found:
        raise FileNotFoundError(f"{folder}: no exported artifacts to time (run --mode=export "
                                "first)")
    dtypes = {f: read_sidecar(p).get("dtype", "float32") for f, p in found.items()}
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"{folder}: artifacts of different dtypes ({dtypes}): export each "
                         "dtype into its own config.export.dir")
    dtype = next(iter(dtypes.values()))
    out = {}
    # "eager": the model --mode=predict runs (its fast paths); "eager-export": the model that
    # was traced, without them (the parity reference).
    for name, purpose in (("eager", "predict"), ("eager-export", "export")):
        deploy, _ = build_deploy_model(config, workdir, device, purpose)
        deploy.dtype = dtype  # eager in the artifacts' dtype, whatever export.dtype says now
        out[name] = Predictor(deploy, max_batch=64)
    out.update({fmt: load_artifact(path, max_batch=64) for fmt, path in found.items()})
    return out, dtype


def time_interleaved(runners: dict, images: list, rounds: int, warmup: int = 1) -> dict:
    """Per runner: median seconds per call and median ratio to eager's time in the round."""
    names = list(runners)
    times = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t = time.perf_counter()
            runners[n](images)
            if r >= warmup:
                times[n].append(time.perf_counter() - t)
    out = {}
    for n in names:
        ratios = [t / e for t, e in zip(times[n], times["eager"])]
        med = statistics.median(times[n])
        out[n] = {"seconds": round(med, 4), "images_per_s": round(len(images) / med, 3),
                  "time_vs_eager": round(statistics.median(ratios), 3)}
    return out


def bench_artifacts(config, workdir: str, device) -> dict:
    """images/s of eager and each artifact in <workdir>/<export.dir>, in the dtype they were
    exported in (their sidecars'), at the batch sizes of export.bench_batches on synthetic
    images of bench.image_size."""
    runners, dtype = _runners(config, workdir, device)
    h, w = (int(v) for v in config.bench.image_size)
    result = {"image_size": [h, w], "dtype": dtype,
              "threads": torch.get_num_threads(),
              "rounds": int(config.export.bench_iters), "batches": {}}
    for b in config.export.bench_batches:
        images = parity.synthetic_images([(h, w)] * int(b), seed=int(b))
        result["batches"][str(b)] = time_interleaved(runners, images,
                                                     int(config.export.bench_iters))
    return result


def table(result: dict) -> str:
    """The markdown table of one bench_artifacts result."""
    rows = ["| batch | runtime | dtype | images/s | time vs eager |",
            "| ---: | --- | --- | ---: | ---: |"]
    for b, per in result["batches"].items():
        for name, r in per.items():
            rows.append(f"| {b} | {name} | {result['dtype']} | {r['images_per_s']:.3f} | "
                        f"{r['time_vs_eager']:.3f} |")
    return "\n".join(rows)
