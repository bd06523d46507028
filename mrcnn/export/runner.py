"""--mode=export: every artifact of `config.export.formats`, each checked against eager.

Into <workdir>/<export.dir>/: model.pt2 (torch.export), model_aoti_cpu.pt2 (AOTInductor),
model.onnx, each with its sidecar `<file>.json`, and the operator library the torch artifacts
call (`mrcnn_ops.so`). Each artifact is first written under a temporary name, run on the
parity set (synthetic batches of 1 and 3 mixed-size images, plus the first
`export.parity_val_images` of data.val when it is on disk) and compared with the eager
DeployModel; only one within the tolerances is renamed to its final name. A failure is
reported in the returned dict and raised after the other formats are done.
"""

from __future__ import annotations

import copy
import glob
import logging
import os
import shutil
import time

import torch

from mrcnn.config_check import ConfigError
from mrcnn.export import parity, program, sidecar
from mrcnn.export.predictor import Predictor
from mrcnn.export.wrapper import DeployModel

log = logging.getLogger(__name__)

FORMATS = ("pt2", "aoti", "onnx")
FILES = {"pt2": "model.pt2", "aoti": "model_aoti_{device}.pt2", "onnx": "model.onnx"}
OPS_LIBRARY = "mrcnn_ops.so"
DTYPES = ("float32", "bfloat16")


def build_deploy_model(config, workdir: str, device,
                       purpose: str = "export") -> tuple[DeployModel, object]:
    """(DeployModel, the build) of the weights that --mode=eval would run; `purpose` "export"
    (no fast paths: what is traced) or "predict" (the fast paths --mode=predict runs)."""
    try:
        from mrcnn.build import build
    except ImportError:  # the run layer before mrcnn.build
        from mrcnn.engine.inference import build_inference_model

        built = None
        model = build_inference_model(config, workdir, device)
    else:
        built = build(config, torch.device(device), purpose, workdir)
        model = built.model
    deploy = DeployModel(model, config.input, mask_threshold=config.export.mask_threshold,
                         dtype=str(config.export.dtype),
                         channels_last=bool(built is not None and built.fast.channels_last))
    return deploy.eval(), built


def tolerances(config, fmt: str) -> dict:
    """export.*_tol (.pt2 and AOTInductor: measured within them, AOTInductor's boxes 2.4e-4
    px off on a random R-50 at 800 px); for ONNX Runtime (other RoIAlign / NMS kernels, other
    summation orders) boxes are held to export.onnx_box_tol (the config says why), the
    smallest mask IoU to export.onnx_min_mask_iou (masks within export.onnx_mask_shift_px of
    eager's excepted) and the mean to mask_iou_tol (parity.ONNX_TOLERANCES says why)."""
    e = config.export
    tol = {"box_px": float(e.box_tol), "score": float(e.score_tol),
           "mask_iou": float(e.mask_iou_tol)}
    masks = dict(mask_iou=float(e.onnx_min_mask_iou), mean_mask_iou=float(e.mask_iou_tol),
                 mask_shift_px=int(e.onnx_mask_shift_px))
    if fmt == "onnx":
        tol.update(box_px=float(e.onnx_box_tol), **masks)
    elif fmt == "aoti" and str(e.dtype) == "bfloat16":
        # Inductor's bf16 mask-head convolutions round ~1e-3 away from eager's (measured on a
        # conv branch, tests/export/test_aoti_ops.py): pixels that close to the threshold flip.
        # The shapes model's package: boxes and scores equal, one mask at IoU 0.971, mean 0.998.
        tol.update(**masks)
    return tol


def val_images(config, count: int) -> list[torch.Tensor]:
    """The first `count` images of data.val (file-name order) that the program accepts."""
    if count <= 0:
        return []
    from mrcnn.data import catalog
    from mrcnn.data.image_io import load_image

    try:
        img_dir, _ = catalog.dataset_paths(config, config.data.val)
    except catalog.DatasetMissingError:
        return []
    out = []
    for path in sorted(glob.glob(os.path.join(img_dir, "*"))):
        try:
            img = load_image(path)
            program.check_size(int(img.shape[1]), int(img.shape[2]), config.input)
        except (OSError, ValueError):
            continue
        out.append(img)
        if len(out) == count:
            break
    return out


def parity_set(config) -> list[list[torch.Tensor]]:
    batches = parity.parity_batches(config.input)
    extra = val_images(config, int(config.export.parity_val_images))
    return batches + ([extra] if extra else [])


def check_formats(formats, dtype: str = "float32") -> list[str]:
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"config.export.formats={tuple(formats)!r}: expected some of {FORMATS}")
    if dtype not in DTYPES:
        raise ConfigError(f"config.export.dtype={dtype!r}: expected one of {DTYPES}")
    if dtype == "bfloat16" and "onnx" in formats:
        raise ConfigError("config.export.dtype='bfloat16' with config.export.formats containing "
                          "'onnx': onnxruntime's CPU provider has no bfloat16 convolution; set "
                          "--config.export.formats=pt2,aoti")
    return list(formats)


def ship_operators(out_dir: str) -> str | None:
    """Copies the compiled operator library next to the artifacts (None when there is none)."""
    import ops

    lib = getattr(getattr(ops, "_C", None), "__file__", None)
    if not lib:
        return None
    shutil.copyfile(lib, os.path.join(out_dir, OPS_LIBRARY))
    return OPS_LIBRARY


def aoti_program(deploy, config):
    """(program, Inductor settings) the AOTInductor package is compiled from, or None to use
    the .pt2 program: with export.aoti_fast in float32, a trace of a channels_last copy of the
    model (eager's layout on a CPU) compiled with freezing, which folds the weights in as
    constants and puts the convolutions on oneDNN with their BN / ReLU / residual fused.
    bfloat16 packages are compiled as before (freezing is not measured there)."""
    if not bool(config.export.get("aoti_fast", False)) or str(config.export.dtype) != "float32":
        return None
    fast = copy.deepcopy(deploy)  # `deploy` stays the parity reference, contiguous
    fast.model.to(memory_format=torch.channels_last)
    fast.channels_last = True
    return program.export_program(fast, config.input), {"freezing": True}


def write_artifact(fmt: str, ep, out_dir: str, device, dtype: str = "float32",
                   inductor: dict | None = None) -> str:
    """Writes one artifact under a temporary name -> that path; `inductor`: further
    torch._inductor.config settings for the AOTInductor package."""
    final = FILES[fmt].format(device=torch.device(device).type)
    tmp = os.path.join(out_dir, "tmp-" + final)
    if fmt == "pt2":
        torch.export.save(ep, tmp)
    elif fmt == "aoti":
        from mrcnn.export.aoti import compile_package

        compile_package(ep, tmp, dtype, **(inductor or {}))
    else:
        from mrcnn.export.onnx_export import export_onnx

        export_onnx(ep, tmp)
    return tmp


def compiled_record(fmt: str, fast, dtype: str) -> dict | None:
    """The sidecar's "compiled" entry of an AOTInductor package: the memory format of the
    trace it was compiled from and every Inductor setting it was compiled with."""
    if fmt != "aoti":
        return None
    from mrcnn.export.aoti import inductor_configs

    return {"memory_format": "channels_last" if fast else "contiguous",
            "inductor_configs": inductor_configs(dtype, **(fast[1] if fast else {}))}


def check_and_publish(fmt, tmp, eager, batches, config, categories, ops_lib,
                      compiled: dict | None = None) -> dict:
    """Parity of the artifact at `tmp`; renamed to its final name (with its sidecar) if it
    passes, otherwise kept as `<name>.rejected` next to a sidecar saying why."""
    from mrcnn.export.artifact import run_batch_of
    from mrcnn.fileio import write_json_atomic

    cand = Predictor(run_batch_of(tmp, fmt), max_batch=int(config.export.max_batch))
    tol = tolerances(config, fmt)
    figures = parity.measure(eager, cand, batches, tol, **parity.cut_of(config))
    ok = parity.passes(figures, tol)
    final = os.path.join(os.path.dirname(tmp), os.path.basename(tmp)[len("tmp-"):])
    path = final if ok else final + ".rejected"
    os.replace(tmp, path)
    side = sidecar.make_sidecar(fmt, config, categories, figures, tol, ops_lib,
                                int(config.export.max_batch), compiled)
    side["parity"]["passed"] = ok
    write_json_atomic(path + ".json", side, indent=1)
    log.info("export %s: %s, parity %s (%s)", fmt, path, "passed" if ok else "FAILED", figures)
    return {"path": path, "passed": ok, "parity": figures}


def run(config, workdir: str, device) -> dict:
    """--mode=export: writes the artifacts of config.export.formats -> per format its path,
    parity figures, whether it passed and the seconds it took. Raises RuntimeError after
    writing when an artifact failed parity."""
    formats = check_formats(config.export.formats, str(config.export.dtype))
    deploy, built = build_deploy_model(config, workdir, device)
    out_dir = os.path.join(workdir, config.export.dir)
    os.makedirs(out_dir, exist_ok=True)
    categories = sidecar.categories_of(built, config)
    ops_lib = ship_operators(out_dir)
    eager = Predictor(deploy, max_batch=int(config.export.max_batch))
    batches = parity_set(config)
    t0 = time.perf_counter()
    ep = program.export_program(deploy, config.input)
    results = {"export_seconds": round(time.perf_counter() - t0, 1), "artifacts": {}}
    for fmt in formats:
        t = time.perf_counter()
        fast = aoti_program(deploy, config) if fmt == "aoti" else None
        tmp = write_artifact(fmt, fast[0] if fast else ep, out_dir, device,
                             str(config.export.dtype), fast[1] if fast else None)
        res = check_and_publish(fmt, tmp, eager, batches, config, categories, ops_lib,
                                compiled_record(fmt, fast, str(config.export.dtype)))
        res["seconds"] = round(time.perf_counter() - t, 1)
        results["artifacts"][fmt] = res
    failed = [f for f, r in results["artifacts"].items() if not r["passed"]]
    if failed:
        raise RuntimeError(f"export: {', '.join(failed)} failed parity against eager (figures "
                           f"and tolerances in the .rejected sidecars under {out_dir})")
    return results
