"""The GPU check's benchmark matrix: training and inference images/s at 800x1333.

    python -m bench.gpu_check --out=bench/results/h200.json          # on the GPU machine
    python -m bench.gpu_check --cpu --out=/tmp/cpu_rehearsal.json    # rehearsal, minutes on a CPU

Training at batch 8 and 16, inference at batch 1 and 8, each in bfloat16 autocast and float32
(TF32 matmuls/convs on Ampere and newer), NCHW and channels_last; torchvision's Mask R-CNN on
the same weights and inputs is timed beside ours at the first batch size of each mode. Warm-up,
then the median of timed iterations (CUDA events around each synchronised step),
peak memory and host syncs per step. Then the fixed-shape variant (bf16, channels_last,
perf.pad_to=800x1344, perf.cuda_graphs) at training batch 16 and inference batch 8; its rows
carry "variant". Writes one JSON with date and hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import r50_fpn_1x  # noqa: E402
from mrcnn import bench, runner  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="rehearsal: tiny sizes on the CPU")
    p.add_argument("--out", required=True)
    p.add_argument("--iters", type=int, default=0)
    args = p.parse_args()
    runner.setup_logging(None)
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.cpu:
        size, train_batches, infer_batches, iters, warmup = (256, 320), (1,), (1, 2), 1, 1
        pad_to = (256, 320)
    else:
        size, train_batches, infer_batches, iters, warmup = (800, 1333), (8, 16), (1, 8), 20, 5
        pad_to = (800, 1344)
    iters = args.iters or iters
    scratch = tempfile.mkdtemp(prefix="mrcnn-gpu-check-")
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
           "hardware": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
           "image_size": list(size), "runs": []}
    for mode, batches in (("train", train_batches), ("infer", infer_batches)):
        for i, batch in enumerate(batches):
            for channels_last in (False, True):
                c = r50_fpn_1x.get_config()
                c.bench.mode = mode
                c.bench.batch_size = batch
                c.bench.image_size = size
                c.bench.iters, c.bench.warmup = iters, warmup
                c.bench.dtypes = ("bfloat16", "float32")
                c.bench.reference = i == 0 and not channels_last
                c.perf.channels_last = channels_last
                try:
                    res = bench.bench(c, scratch, device)  # its own bench.json stays out of results/
                except torch.OutOfMemoryError as e:
                    out["runs"].append({"mode": mode, "batch": batch, "oom": str(e)[:200]})
                    torch.cuda.empty_cache()
                    continue
                for r in res["runs"]:
                    for k in ("ours", "torchvision"):
                        if k in r:
                            r[k].pop("times", None)
                    out["runs"].append({**r, "batch": batch, "channels_last": channels_last})
                with open(args.out, "w") as f:  # after every run: a timeout keeps what was done
                    json.dump(out, f, indent=2)
    # The fixed-shape variant: bf16 channels_last, batches padded to one shape per orientation
    # and backbone+FPN+RPN head as CUDA graphs (on the CPU rehearsal: the padding only), at the
    # largest batch of each mode, fewer iterations (graphs vary little; the capture costs time).
    for mode, batch in (("train", train_batches[-1]), ("infer", infer_batches[-1])):
        c = r50_fpn_1x.get_config()
        c.bench.mode, c.bench.batch_size, c.bench.image_size = mode, batch, size
        c.bench.iters, c.bench.warmup = max(1, iters // 2), min(warmup, 3)
        c.bench.dtypes, c.bench.reference = ("bfloat16",), False
        c.perf.channels_last = True
        c.perf.pad_to = pad_to
        c.perf.cuda_graphs = device.type == "cuda"
        try:
            res = bench.bench(c, scratch, device)
        except torch.OutOfMemoryError as e:
            out["runs"].append({"mode": mode, "batch": batch, "variant": "cuda_graphs",
                                "oom": str(e)[:200]})
            torch.cuda.empty_cache()
            continue
        for r in res["runs"]:
            r["ours"].pop("times", None)
            out["runs"].append({**r, "batch": batch, "channels_last": True,
                                "variant": res["variant"]})
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
