"""Deployment speed, eager against each exported artifact, through main.py as a user runs it.

    .venv/bin/python -m bench.export_speed --config=configs/r50_fpn_1x.py \
        --workdir=runs/deploy/r50 \
        [--dtype=float32|bfloat16] [--formats=pt2,aoti,onnx] [--batches=1,8] [--rounds=3] \
        [--image=800x1333] [--out=bench/results/NAME.json]

1. A randomly initialised model of the config (seeded) with the classifier and mask logits
   spread like a trained model's (tests/export/conftest.py does the same), so that every image
   gives detections up to `roi_heads.detections_per_img` and the mask branch and pasting are
   timed; saved as a native checkpoint with its category table.
2. `main.py --mode=export` of it (parity against eager checked there, as always).
3. `main.py --mode=bench --config.bench.mode=artifacts`: eager and every published artifact,
   interleaved on the same synthetic batches (mrcnn/export/bench.py), per-round ratios.
Writes the bench table, the export's wall time and each sidecar's parity figures to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _config(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_config", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _categories(config):
    """The training data's table when it is on disk; COCO's for an 81-way model; else
    placeholder names (the weights are random: only the count matters)."""
    from mrcnn.data import CategoryTable, category_table

    try:
        return category_table(config)
    except Exception:  # noqa: BLE001 - no training data here: the table is a stand-in
        k = int(config.model.num_classes) - 1
        if k == 80:
            return CategoryTable.coco(False)
        return CategoryTable.from_categories((i + 1, f"class{i + 1}") for i in range(k))


def write_random_weights(config, path: str, seed: int = 0) -> None:
    from mrcnn.modeling import build_model

    torch.manual_seed(seed)
    model = build_model(config.model).eval()
    with torch.no_grad():
        model.box_predictor.cls_score.weight.normal_(0, 0.2)
        model.box_predictor.cls_score.bias[0] += 1.0
        model.mask_predictor.logits.weight.mul_(5.0)
    torch.save({"model": model.state_dict(), "categories": _categories(config).to_dict()}, path)


def _tuple(csv: str) -> str:
    """"pt2,onnx" -> "('pt2','onnx')", "1,8" -> "(1,8)": a tuple override for main.py."""
    items = [v.strip() for v in csv.split(",") if v.strip()]
    return "(" + ",".join(v if v.isdigit() else repr(v) for v in items) + ",)"


def _main_py(args: list[str]) -> float:
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), *args]
    print("+", " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/shapes.py")
    p.add_argument("--workdir", required=True)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--formats", default=None, help="default: pt2,aoti,onnx (pt2,aoti for bf16)")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--image", default=None, help="HxW of the timed images (bench.image_size)")
    p.add_argument("--skip_export", action="store_true", help="time the workdir's export")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    formats = a.formats or ("pt2,aoti" if a.dtype == "bfloat16" else "pt2,aoti,onnx")
    config = _config(a.config)
    os.makedirs(a.workdir, exist_ok=True)
    weights = os.path.join(os.path.abspath(a.workdir), "random_weights.pth")
    export_dir = "export" if a.dtype == "float32" else f"export_{a.dtype}"
    common = [f"--config={a.config}", f"--workdir={a.workdir}",
              f"--config.init.weights={weights}", "--config.init.format=native",
              f"--config.export.dtype={a.dtype}", f"--config.export.formats={_tuple(formats)}",
              f"--config.export.dir={export_dir}"]
    export_s = None
    if not a.skip_export:
        write_random_weights(config, weights)
        export_s = _main_py([*common, "--mode=export", "--config.export.parity_val_images=0"])
    image = a.image or "x".join(str(v) for v in config.bench.image_size)
    _main_py([*common, "--mode=bench", "--config.bench.mode=artifacts",
              f"--config.bench.image_size=({image.replace('x', ',')})",
              f"--config.export.bench_batches={_tuple(a.batches)}",
              f"--config.export.bench_iters={a.rounds}"])
    with open(os.path.join(a.workdir, "bench.json")) as f:
        bench = json.load(f)
    folder = os.path.join(a.workdir, export_dir)
    parity = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                side = json.load(f)
            parity[name[:-len(".json")]] = side["parity"]
    result = {"config": a.config, "dtype": a.dtype, "formats": formats, "image": image,
              "export_wall_s": None if export_s is None else round(export_s, 1),
              "load_average": os.getloadavg(), "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "bench": bench["artifacts"],
              "parity": parity}
    from mrcnn.export.bench import table

    print(table(bench["artifacts"]))
    if a.out:
        from mrcnn.fileio import write_json_atomic

        write_json_atomic(a.out, result, indent=1)
        print("wrote", a.out)


if __name__ == "__main__":
    main()
