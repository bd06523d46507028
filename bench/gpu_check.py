"""The GPU check's benchmark matrix, run through `main.py --mode=bench` one run per process.

    python -m bench.gpu_check --out=DIR/gpu_check.json --log=DIR/bench.log --set=headline
    python -m bench.gpu_check --cpu --out=/tmp/r.json --log=/tmp/r.log --set=all   # rehearsal

The headline runs come first, because the check may be cut short: training bf16 at batch 16
and inference bf16 at batch 8, 800x1333, with the GPU fast paths (channels_last, batches padded
to 800x1344, CUDA graphs). Then the rest, while the budget lasts: the same without graphs beside
torchvision's Mask R-CNN (same weights, same inputs), smaller batches, float32 (TF32).

Each run is its own process under its own timeout (a hang or an out-of-memory costs that run
only) and its whole output goes to --log; the JSON is rewritten after every run, so what was
measured before a timeout is kept. `--cpu` rehearses the same runs at toy sizes on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mrcnn.fileio import write_json_atomic  # noqa: E402  (imports nothing heavy)

CONFIG = "configs/r50_fpn_1x.py"
# What the figures are held against (issue targets, images/s on one H200, bf16, 800x1333).
TARGETS = {("train", 16): 200.0, ("infer", 8): 400.0}
CPU_SLOWDOWN = 3  # the rehearsal's timeouts, and the shell's, are this much longer


def _run(name, group, mode, batch, dtype, *, channels_last=True, graphs=False, reference=False,
         cap_s=120):
    return {"name": name, "set": group, "mode": mode, "batch": batch, "dtype": dtype,
            "channels_last": channels_last, "fixed_shape": graphs, "cuda_graphs": graphs,
            "reference": reference, "cap_s": cap_s}


def plan(cpu: bool) -> list[dict]:
    """The runs in the order they are worth: the headline figures first."""
    tb, ib = (2, 2) if cpu else (16, 8)  # the CPU rehearsal: toy batches
    small_t, small_i = (1, 1) if cpu else (8, 1)
    runs = [
        _run("train_bf16_fast", "headline", "train", tb, "bfloat16", graphs=True, cap_s=180),
        _run("infer_bf16_fast", "headline", "infer", ib, "bfloat16", graphs=True, cap_s=150),
        _run("train_bf16_vs_tv", "rest", "train", tb, "bfloat16", reference=True, cap_s=180),
        _run("infer_bf16_vs_tv", "rest", "infer", ib, "bfloat16", reference=True, cap_s=150),
        _run("train_bf16_nchw", "rest", "train", small_t, "bfloat16", channels_last=False),
        _run("infer_bf16_b1", "rest", "infer", small_i, "bfloat16", graphs=True),
        _run("train_fp32_tf32", "rest", "train", small_t, "float32"),
        _run("infer_fp32_tf32", "rest", "infer", ib, "float32"),
    ]
    if cpu:  # a rehearsal step on 2 CPU cores takes seconds to a minute (bf16 is emulated)
        for r in runs:
            r["cap_s"] *= CPU_SLOWDOWN
    return runs


def overrides(run: dict, cpu: bool, workdir: str) -> list[str]:
    """main.py's arguments for one run."""
    size, pad = ((256, 320), (256, 320)) if cpu else ((800, 1333), (800, 1344))
    iters, warmup = (1, 1) if cpu else (20, 5)
    if run["cuda_graphs"]:
        iters, warmup = (iters, warmup) if cpu else (10, 3)  # graphs vary little
    c = {"device": "cpu" if cpu else "cuda",
         "bench.mode": run["mode"], "bench.batch_size": run["batch"],
         "bench.image_size": str(size), "bench.iters": iters, "bench.warmup": warmup,
         "bench.dtypes": f"('{run['dtype']}',)", "bench.reference": run["reference"],
         "perf.channels_last": run["channels_last"],
         "perf.pad_to": str(pad) if run["fixed_shape"] else "()",
         # CUDA graphs need a CUDA device: the rehearsal keeps the padding, drops the graphs.
         "perf.cuda_graphs": run["cuda_graphs"] and not cpu}
    if not cpu:  # oneDNN is a CPU path (ignored on GPUs): off, so the variant names what ran
        c["perf.onednn"] = False
    return [f"--config={CONFIG}", "--mode=bench", f"--workdir={workdir}"] + [
        f"--config.{k}={v}" for k, v in c.items()]


def run_one(run: dict, argv: list[str], timeout_s: float, log) -> dict:
    """One run in a child process; its output appended to `log`. Returns the record."""
    rec = {k: run[k] for k in ("name", "set", "mode", "batch", "dtype", "channels_last",
                               "cuda_graphs", "reference")}
    log.write(f"\n== {run['name']} (timeout {timeout_s:.0f} s): {' '.join(argv)}\n")
    log.flush()
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                           timeout=timeout_s, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        rec["rc"] = p.returncode
    except subprocess.TimeoutExpired:
        rec["rc"], rec["timed_out"] = None, True
    rec["wall_s"] = round(time.monotonic() - t0, 1)
    log.write(f"== {run['name']}: rc={rec['rc']} in {rec['wall_s']} s\n")
    log.flush()
    return rec


def collect(rec: dict, workdir: str) -> dict:
    """The bench rows of a finished run, with the headline numbers lifted to the record."""
    path = os.path.join(workdir, "bench.json")
    if rec.get("rc") != 0 or not os.path.exists(path):
        return rec
    with open(path) as f:
        res = json.load(f)
    rec.update(variant=res.get("variant"), padded_size=res.get("padded_size"),
               hardware=res.get("hardware"), rows=res.get("runs", []))
    for row in rec["rows"]:
        ours = row.get("ours", {})
        rec["images_per_s"] = round(ours.get("images_per_s", 0.0), 2)
        for k in ("peak_mem_mb", "host_syncs_per_iter"):
            if k in ours:
                rec[k] = ours[k]
        if "time_ratio" in row:
            rec["time_ratio_vs_torchvision"] = round(row["time_ratio"], 3)
    target = TARGETS.get((rec["mode"], rec["batch"]))
    if target and rec["dtype"] == "bfloat16" and "images_per_s" in rec:
        rec["target_images_per_s"] = target
    return rec


def summary_lines(out: dict) -> list[str]:
    lines = []
    for r in out["runs"]:
        if "images_per_s" in r:
            extra = "".join(f", {k} {r[k]}" for k in ("target_images_per_s", "peak_mem_mb",
                            "host_syncs_per_iter", "time_ratio_vs_torchvision") if k in r)
            lines.append(f"{r['name']}: {r['images_per_s']} img/s (batch {r['batch']}, "
                         f"{r['dtype']}, {r.get('variant')}{extra})")
        else:
            why = "timed out" if r.get("timed_out") else r.get("skipped") or f"rc={r.get('rc')}"
            lines.append(f"{r['name']}: no figure ({why})")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="rehearsal: toy sizes on the CPU")
    p.add_argument("--out", required=True, help="the JSON (rewritten after every run)")
    p.add_argument("--log", required=True, help="every run's whole output, appended")
    p.add_argument("--set", choices=("headline", "rest", "all"), default="all")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="stop starting runs when less than 20 s of this is left")
    p.add_argument("--main", default=os.path.join(ROOT, "main.py"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_rehearsal": args.cpu, "runs": []}
    if os.path.exists(args.out):  # the headline set ran first: the rest is appended
        with open(args.out) as f:
            out = json.load(f)
    scratch = tempfile.mkdtemp(prefix="mrcnn-gpu-check-")
    failed = False
    with open(args.log, "a") as log:
        for i, run in enumerate(plan(args.cpu)):
            if args.set != "all" and run["set"] != args.set:
                continue
            left = deadline - time.monotonic() - 5
            if left < 15:
                out["runs"].append({"name": run["name"], "set": run["set"],
                                    "skipped": "no time left in the budget"})
                write_json_atomic(args.out, out, indent=2)
                continue
            workdir = os.path.join(scratch, f"{i}-{run['name']}")
            cmd = [sys.executable, args.main] + overrides(run, args.cpu, workdir)
            rec = collect(run_one(run, cmd, min(run["cap_s"], left), log), workdir)
            failed |= "images_per_s" not in rec
            out["runs"].append(rec)
            write_json_atomic(args.out, out, indent=2)
            print(summary_lines({"runs": [rec]})[0], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
