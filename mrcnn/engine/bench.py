"""`--mode=bench`: training and inference images/s, ours and torchvision's, side by side.

Both models get the same weights (torchvision's random `maskrcnn_resnet50_fpn`, converted) and the
same synthetic images, so the ratio is measured in one run on one machine. The reference is only
possible for configs whose architecture torchvision has (R-50-FPN); other configs are timed alone.
Box score threshold is 0 for both so the mask head runs on a full set of detections, as it does
with trained weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time

import ml_collections
import torch

from mrcnn import dist
from mrcnn.build import Built, build
from mrcnn.config_check import ConfigError
from mrcnn.data.collate import fixed_shape, pad_images_to
from mrcnn.fileio import write_json_atomic
from mrcnn.precision import autocast
from mrcnn.structures import ImageBatch, InstanceMasks, Targets

log = logging.getLogger("mrcnn.bench")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, iters: int, warmup: int, device) -> list[float]:
    """Seconds per call of `fn` after `warmup` calls. On CUDA each call is bracketed by CUDA
    events (device time from the first queued kernel to the last) and synchronised after, so
    no call overlaps the next; on the CPU, wall time."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def _time_interleaved(steps: dict, iters: int, warmup: int) -> dict[str, list[float]]:
    """CPU wall time of several steps measured in alternation: round i runs them in order, or
    reversed when i is odd, so neither side always runs on a cache the other one left."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(iters):
        for n in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def count_syncs(step) -> int:
    """Host synchronisations one call of `step` makes (CUDA sync debug mode, warnings counted)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _is_torchvision_compatible(config) -> bool:
    b = config.model.backbone
    return (b.depth == 50 and b.width == 64 and b.fpn and b.fpn_channels == 256
            and not b.stride_in_1x1 and config.model.box_head.fc_dim == 1024
            and config.model.mask_head.conv_dim == 256 and not config.model.roi_heads.aligned)


def synthetic_inputs(config, batch_size, height, width, device, seed=0):
    """Random images with a few square instances: (raw 0-1 images, ImageBatch, Targets)."""
    g = torch.Generator().manual_seed(seed)
    raw = [torch.rand(3, height, width, generator=g) for _ in range(batch_size)]
    mean = torch.tensor(config.input.pixel_mean).view(3, 1, 1)
    std = torch.tensor(config.input.pixel_std).view(3, 1, 1)
    div = config.input.size_divisibility
    ph, pw = -(-height // div) * div, -(-width // div) * div
    tensor = torch.zeros(batch_size, 3, ph, pw)
    for i, im in enumerate(raw):
        tensor[i, :, :height, :width] = (im - mean) / std
    images = ImageBatch(tensor.to(device), [(height, width)] * batch_size)
    targets, tv_targets = [], []
    n = 5
    for _ in range(batch_size):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([width * 0.6, height * 0.6])
        wh = 32 + torch.rand(n, 2, generator=g) * min(height, width) * 0.3
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(1, config.model.num_classes, (n,), generator=g)
        polys = [[torch.tensor([b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]])]
                 for b in boxes.tolist()]
        targets.append(Targets(boxes.to(device), labels.to(device), InstanceMasks(polys).to(device)))
        masks = torch.zeros(n, height, width, dtype=torch.uint8)
        for j, b in enumerate(boxes.round().long().tolist()):
            masks[j, b[1]:b[3], b[0]:b[2]] = 1
        tv_targets.append({"boxes": boxes.to(device), "labels": labels.to(device),
                           "masks": masks.to(device)})
    return [r.to(device) for r in raw], images, targets, tv_targets


@dataclasses.dataclass
class _Setup:
    """What every timed step shares: the models, one batch in both conventions, the device."""

    config: ml_collections.ConfigDict
    device: torch.device
    built: Built
    tv: torch.nn.Module | None
    raw: list
    images: ImageBatch
    targets: list
    tv_targets: list


def _torchvision_reference(h: int, w: int, device: torch.device) -> torch.nn.Module:
    import torchvision
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.mask_rcnn import MaskRCNN as TVMaskRCNN
    from torchvision.ops.misc import FrozenBatchNorm2d

    # Built as for pretrained weights (FrozenBN, 3 trainable stages): the same work as ours.
    body = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    return TVMaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=91, box_score_thresh=0.0,
                      min_size=min(h, w), max_size=max(h, w)).to(device)


def _setup(config: ml_collections.ConfigDict, device: torch.device, dtype: str) -> _Setup:
    """Ours through `mrcnn.build.build` as a run with `config.dtype=dtype` builds it (the fast
    paths every mode uses; which apply depends on the dtype), torchvision's on the same weights
    when the architecture allows, and synthetic inputs for both."""
    from mrcnn import weights

    b = config.bench
    h, w = b.image_size
    reference = b.reference and _is_torchvision_compatible(config)
    if b.reference and not reference:
        log.info("config %s has no torchvision counterpart: timing ours only", config.name)
    if config.perf.cuda_graphs and device.type != "cuda":
        raise RuntimeError(f"config.perf.cuda_graphs=True: bench runs on {device}, "
                           "CUDA graphs need a CUDA device")
    cfg = config.copy_and_resolve_references()
    cfg.unlock()
    cfg.model.roi_heads.score_thresh = 0.0
    cfg.dtype = dtype
    if reference:
        cfg.model.num_classes = 91
    torch.manual_seed(config.seed)
    built = build(cfg, device, "bench", load=False)
    tv = None
    if reference:
        tv = _torchvision_reference(h, w, device)
        built.model.load_state_dict(weights.convert_torchvision_state_dict(tv.state_dict()))
    raw, images, targets, tv_targets = synthetic_inputs(cfg, b.batch_size, h, w, device)
    pad_to = tuple(config.perf.pad_to)
    if pad_to:  # the fixed shape of the images' orientation (a clear error if they exceed it)
        images = pad_images_to(images, fixed_shape(images.image_sizes, pad_to))
    if built.fast.channels_last:
        images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
    return _Setup(config, device, built, tv, raw, images, targets, tv_targets)


def _make_step(su: _Setup, name: str, mode: str, dtype: str):
    """One timed call: an inference forward (with pasting, for ours) or a training step."""
    from mrcnn.modeling.postprocess import detections_to_original

    device, ours = su.device, name == "ours"
    model = su.built.model if ours else su.tv
    if mode == "infer":
        model.eval()

        def infer(m=model):
            with torch.inference_mode(), autocast(device, dtype):
                if not ours:
                    return m(su.raw)
                dets = m(su.images)
            for d, size in zip(dets, su.images.image_sizes):
                detections_to_original(d, size, size)
        return infer
    model.train()
    graphs = su.built.graphs if ours else None
    if graphs is not None:
        graphs.capture_training(su.config.bench.batch_size, dtype, su.built.fast.channels_last,
                                shapes=[tuple(su.images.tensor.shape[-2:])])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                          momentum=0.9)
    inputs = (su.images, su.targets) if ours else (su.raw, su.tv_targets)

    def train_step(m=model):
        with autocast(device, dtype, graphs is None):  # graphs: no autocast cache
            losses = m(*inputs)
        sum(v.float() for v in losses.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return train_step


def _summary(t: list[float], batch_size: int) -> dict:
    med = statistics.median(t)
    return {"s_per_iter": med, "images_per_s": batch_size / med, "times": t}


def _time_row(su: _Setup, mode: str, dtype: str) -> dict:
    b, device = su.config.bench, su.device
    names = ["ours"] + (["torchvision"] if su.tv is not None else [])
    row: dict = {"mode": mode, "dtype": dtype}
    if device.type == "cpu" and len(names) == 2:
        # Interleaved, alternating which goes first: drift of a shared CPU (other tenants,
        # clocks) hits both sides alike, so the ratio stays meaningful.
        times = _time_interleaved({n: _make_step(su, n, mode, dtype) for n in names},
                                  b.iters, b.warmup)
        for name, t in times.items():
            row[name] = _summary(t, b.batch_size)
        row["pair_ratio_median"] = statistics.median(
            o / r for o, r in zip(times["ours"], times["torchvision"]))
    else:
        for name in names:
            step = _make_step(su, name, mode, dtype)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            row[name] = _summary(_time(step, b.iters, b.warmup, device), b.batch_size)
            if device.type == "cuda":
                row[name]["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                row[name]["host_syncs_per_iter"] = count_syncs(step)
    if "torchvision" in row:
        row["time_ratio"] = row["ours"]["s_per_iter"] / row["torchvision"]["s_per_iter"]
    log.info("%s %s: ours %.3f s/iter (%.2f img/s)%s", mode, dtype, row["ours"]["s_per_iter"],
             row["ours"]["images_per_s"],
             f"; torchvision {row['torchvision']['s_per_iter']:.3f} s/iter; ratio "
             f"{row['time_ratio']:.3f}" if "torchvision" in row else "")
    return row


MODES = {"both": ("train", "infer"), "train": ("train",), "infer": ("infer",), "artifacts": ()}


def bench(config: ml_collections.ConfigDict, workdir: str, device: torch.device) -> dict:
    """Times training and inference of ours (and torchvision's) for each `bench.dtypes`, and
    eager against each artifact when the workdir holds an export (`bench.mode="artifacts"`:
    only that); writes `bench.json` into the workdir and prints the tables."""
    b = config.bench
    if b.mode not in MODES:
        raise ConfigError(f"config.bench.mode={b.mode!r}: expected one of {tuple(MODES)}")
    results: dict = {
        "config": config.name, "device": str(device), "batch_size": b.batch_size,
        "image_size": list(b.image_size), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
        "hardware": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"CPU x{os.cpu_count()}", "runs": []}
    for dtype in b.dtypes if MODES[b.mode] else ():
        su = _setup(config, device, dtype)
        results.setdefault("variant", su.built.fast.describe())
        results.setdefault("padded_size", list(su.images.tensor.shape[-2:]))
        for mode in MODES[b.mode]:
            row = _time_row(su, mode, su.built.fast.dtype)  # "auto" resolved
            results["runs"].append(dict(row, variant=su.built.fast.describe()))
        del su  # one model pair in memory at a time
    artifacts = os.path.join(workdir, config.export.dir)
    if b.mode == "artifacts" and not os.path.isdir(artifacts):
        raise ConfigError(f"config.bench.mode='artifacts': {artifacts} holds no export (run "
                          "--mode=export first)")
    if os.path.isdir(artifacts) and dist.is_main():
        # The workdir holds exported artifacts (--mode=export): eager vs each, side by side.
        from mrcnn.export.bench import bench_artifacts, table

        results["artifacts"] = bench_artifacts(config, workdir, device)
        print(table(results["artifacts"]))
    if dist.is_main():
        write_json_atomic(os.path.join(workdir, "bench.json"), results, indent=2)
        if results["runs"]:
            print(format_table(results))
    return results


def format_table(results: dict) -> str:
    lines = [f"bench {results['config']} on {results['hardware']} ({results['device']}, "
             f"{results['threads']} threads), batch {results['batch_size']}, "
             f"{results['image_size'][0]}x{results['image_size'][1]}, "
             f"{results.get('variant', 'eager')}, {results['date']}",
             "| mode | dtype | ours s/iter | ours img/s | torchvision s/iter | ratio |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results["runs"]:
        tv = r.get("torchvision")
        lines.append(f"| {r['mode']} | {r['dtype']} | {r['ours']['s_per_iter']:.3f} | "
                     f"{r['ours']['images_per_s']:.2f} | "
                     f"{tv['s_per_iter']:.3f} | {r['time_ratio']:.3f} |" if tv else
                     f"| {r['mode']} | {r['dtype']} | {r['ours']['s_per_iter']:.3f} | "
                     f"{r['ours']['images_per_s']:.2f} | - | - |")
    return "\n".join(lines)
