"""The training loop: build, resume, loop, log, checkpoint, evaluate. Reads top to bottom.

One optimizer step = `solver.accumulate_steps` micro-batches; the schedule, `max_iter`,
`checkpoint_period` and `eval.period` count optimizer steps. A checkpoint holds everything needed to
continue exactly: model, optimizer, scaler, iteration, RNG states and the config.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import signal
import time

import ml_collections
import numpy as np
import torch
from torch import nn

from mrcnn import checkpoint, dist, solver
from mrcnn.data.collate import pad_batch_to
from mrcnn.data.prefetch import Prefetcher
from mrcnn.perf import apply_perf_switches, install_cuda_graphs
from mrcnn.writer import MetricWriter, SmoothedValue, format_eta

log = logging.getLogger("mrcnn.train")

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    pass


def autocast(device: torch.device, dtype: str, cache_enabled: bool = True):
    """torch.autocast for bfloat16 / float16, a no-op for float32. CUDA graphs need
    cache_enabled=False (a cached weight cast would be freed under a graph that reads it)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype],
                          cache_enabled=cache_enabled)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's state as plain tensors/ints so weights_only loading accepts it
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def configure_torch(config: ml_collections.ConfigDict, device: torch.device) -> None:
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = config.perf.cudnn_benchmark
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config.perf.tf32
        torch.backends.cudnn.allow_tf32 = config.perf.tf32


class _StopFlag:
    """Set by SIGTERM / SIGINT / SIGUSR1 (preemption): the loop checkpoints and exits cleanly."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal = signum
        log.warning("received signal %d: will save a checkpoint and stop", signum)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def build_training_model(config: ml_collections.ConfigDict, device: torch.device) -> nn.Module:
    from mrcnn.modeling import build_model

    model = build_model(config.model)
    if config.model.backbone.norm == "SyncBN" and dist.world_size() > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if dist.world_size() > 1 and device.type != "cuda" and any(
            isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        # torch's SyncBatchNorm only synchronizes CUDA tensors; it would fail at the first step.
        from mrcnn.config_check import ConfigError

        raise ConfigError(f"config.model.backbone.norm={config.model.backbone.norm!r}: SyncBN "
                          f"needs CUDA devices; on {device.type} ranks use BN (per-rank "
                          "statistics) or GN")
    model.to(device)
    return apply_perf_switches(model, config)


def _checkpoint_state(model, optimizer, scaler, iteration, config) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "iteration": iteration,
        "config": config.to_json_best_effort(),
        "rng": rng_state(),
    }


def train(config: ml_collections.ConfigDict, workdir: str, device: torch.device) -> dict:
    """Trains `config` in `workdir` (resuming from its last checkpoint); returns final metrics."""
    from mrcnn import data as data_lib
    from mrcnn import weights

    s = config.solver
    rank, world = dist.rank(), dist.world_size()
    configure_torch(config, device)
    seed_everything(config.seed)  # same initial weights on every rank
    model = build_training_model(config, device)
    optimizer = solver.build_optimizer(model, s)
    scaler = torch.amp.GradScaler(device.type, enabled=config.dtype == "float16")

    start_iter = 0
    latest = checkpoint.load_latest(workdir) if dist.is_main() and os.path.isdir(workdir) else None
    found = dist.broadcast_object(None if latest is None else latest[1])  # every rank: same file
    if found is not None:
        state = latest[0] if latest is not None else checkpoint.load(found)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise weights.WeightsError(
                f"{found} does not fit the configured model (the workdir holds a run of another "
                f"architecture; use a new --workdir): {e}") from e
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_iter = int(state["iteration"])
        # Each rank continues its own RNG stream (the samplers draw from it). A checkpoint from
        # another world size has no stream for this rank: rank 0 takes its saved one, the
        # others start distinct fresh ones.
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == world:
            set_rng_state(per_rank[rank])
        else:
            set_rng_state(state["rng"])
            if rank > 0:
                seed_everything(config.seed + rank + 10007 * start_iter)
        log.info("resumed from %s at iteration %d", found, start_iter)
    else:
        if config.init.weights:
            weights.load_weights(model, config.init.weights, config.init.format)
        seed_everything(config.seed + rank)  # per-rank randomness (sampling) from here on

    graphs = install_cuda_graphs(model, config)
    if graphs is not None:
        # Captured on the bare model before DDP wraps it (DDP's hooks then run eagerly on the
        # gradients the graphed backward returns), after the resume so nothing is captured
        # twice; load_state_dict copies in place, so the graphs would survive it anyway.
        model.train()
        graphs.capture_training(s.ims_per_batch // (world * s.accumulate_steps), config.dtype,
                                bool(config.perf.channels_last))

    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # Buffers (BN statistics) stay per rank, as in detectron2; they are equal at the
            # start, so the sync at construction that forward_sync_buffers=False keeps is harmless.
            forward_sync_buffers=False,
            find_unused_parameters=False,
        )

    loader = data_lib.build_train_loader(config, start_iter=start_iter, rank=rank, world_size=world)
    # The prefetcher reads one batch ahead; which batch each step trains on is a function of
    # the step (samplers.py), so resuming stays exact.
    pad_to = tuple(config.perf.pad_to)
    batches = Prefetcher(loader, device,
                         transform=functools.partial(pad_batch_to, pad_to=pad_to) if pad_to
                         else None,
                         overlap=bool(config.perf.prefetch))
    iters_per_epoch = loader.iters_per_epoch
    writer = MetricWriter(workdir)
    meters = {k: SmoothedValue() for k in ("loss", *LOSS_NAMES, "time", "data")}
    metrics: dict = {}
    bad_steps = 0
    last_ckpt = found
    accum = s.accumulate_steps
    log.info("training from iteration %d to %d (%d images/step on %d ranks, accumulate %d)",
             start_iter, s.max_iter, s.ims_per_batch, world, accum)

    def save(it: int) -> None:
        nonlocal last_ckpt
        rngs = dist.all_gather_object(rng_state()) if world > 1 else None
        if dist.is_main():
            state = _checkpoint_state(model, optimizer, scaler, it, config)
            if rngs is not None:
                state["rng_per_rank"] = rngs
            try:
                last_ckpt = checkpoint.save(workdir, state, it, keep=s.keep_checkpoints)
            except OSError as e:  # disk full, quota, permissions: stop; the last one is intact
                log.error("could not save the checkpoint of iteration %d in %s (%s); the last "
                          "good checkpoint is %s", it, workdir, e, last_ckpt or "none")
                raise
            log.info("saved %s", last_ckpt)
        dist.barrier()

    model.train()
    it = start_iter
    stopped_early = False
    t_start = time.perf_counter()
    with _StopFlag() as stop:
        while it < s.max_iter:
            t0 = time.perf_counter()
            lr = solver.set_lr(optimizer, s.base_lr, solver.lr_factor(it, s))
            data_time = 0.0
            loss_sum = torch.zeros((), device=device)
            parts = {k: torch.zeros((), device=device) for k in LOSS_NAMES}
            for micro in range(accum):
                td = time.perf_counter()
                batch = next(batches)  # on the device, padded to perf.pad_to if set
                data_time += time.perf_counter() - td
                if config.perf.channels_last:
                    batch.images.tensor = batch.images.tensor.contiguous(
                        memory_format=torch.channels_last)
                sync = (
                    train_model.no_sync()
                    if world > 1 and micro < accum - 1
                    else contextlib.nullcontext()
                )
                with sync:
                    with autocast(device, config.dtype, cache_enabled=graphs is None):
                        losses = train_model(batch.images, batch.targets)
                    loss = sum(v.float() for v in losses.values()) / accum
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
                for k, v in losses.items():
                    parts[k] = parts.get(k, torch.zeros((), device=device)) + v.detach().float() / accum

            # One host sync per step, one all-reduce: the losses averaged over ranks (for the
            # meters, and a finite check every rank agrees on: DDP has already spread a
            # non-finite gradient to all of them) and the stop request. A signal can reach the
            # ranks at different steps, or only some of them; stopping on the reduced flag makes
            # every rank save and leave at the same step instead of hanging in a collective.
            stop_req = torch.tensor(float(stop.signal is not None), device=device)
            *values, stop_votes = dist.all_reduce_mean(
                torch.stack([loss_sum, *parts.values(), stop_req])).tolist()
            stop_now = stop_votes > 0
            finite = all(math.isfinite(v) for v in values)
            if not finite and not scaler.is_enabled():
                bad = [k for k, v in zip(("loss", *parts), values) if not math.isfinite(v)]
                bad_steps += 1
                if bad_steps > s.max_bad_steps:
                    raise NonFiniteLossError(
                        f"non-finite loss at iteration {it}: {', '.join(bad)} = "
                        f"{[values[('loss', *parts).index(b)] for b in bad]}; "
                        f"last good checkpoint: {last_ckpt or 'none'} "
                        f"(solver.max_bad_steps={s.max_bad_steps} allows skipping bad steps)")
                log.warning("iteration %d: non-finite %s, step skipped (%d/%d)",
                            it, bad, bad_steps, s.max_bad_steps)
                optimizer.zero_grad(set_to_none=True)
                it += 1
                continue
            if s.clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            it += 1

            step_time = time.perf_counter() - t0
            meters["loss"].update(values[0])
            for k, v in zip(parts, values[1:]):
                meters[k].update(v)
            meters["time"].update(step_time)
            meters["data"].update(data_time)

            if it % config.log_period == 0 or it == s.max_iter or it == start_iter + 1:
                eta = meters["time"].global_avg * (s.max_iter - it)
                mem = (torch.cuda.max_memory_allocated(device) / 2**20
                       if device.type == "cuda" else 0.0)
                line = "  ".join(
                    [f"eta: {format_eta(eta)}", f"iter: {it}"]
                    + [f"{k}: {meters[k].median:.4f} ({meters[k].global_avg:.4f})"
                       for k in ("loss", *parts)]
                    + [f"time: {meters['time'].median:.4f} ({meters['time'].global_avg:.4f})",
                       f"data: {meters['data'].median:.4f} ({meters['data'].global_avg:.4f})",
                       f"lr: {lr:.6f}", f"max mem: {mem:.0f}"])
                log.info(line)
                writer.scalars(it, {
                    **{k: meters[k].median for k in ("loss", *parts)},
                    "lr": lr, "time": meters["time"].median, "data_time": meters["data"].median,
                    "max_mem_mb": mem,
                    "images_per_sec": s.ims_per_batch / max(meters["time"].median, 1e-9),
                }, prefix="train/")
                bad_counts = getattr(getattr(loader, "dataset", None), "bad_counts", None)
                if bad_counts:
                    writer.scalars(it, dict(bad_counts),
                                   prefix="data/")

            if stop_now:
                save(it)
                log.warning("stopped by %s at iteration %d; rerun to resume",
                            f"signal {stop.signal}" if stop.signal else "a signal on another rank",
                            it)
                writer.close()
                return metrics
            if s.checkpoint_period and it % s.checkpoint_period == 0 and it < s.max_iter:
                save(it)
            epoch_end = config.eval.per_epoch and iters_per_epoch and it % iters_per_epoch == 0
            if it < s.max_iter and ((config.eval.period and it % config.eval.period == 0)
                                    or epoch_end):
                metrics = _evaluate(model, config, device, workdir, it, writer)
                model.train()
                if _reached_target(metrics, config):
                    log.info("target reached at iteration %d (bbox AP %.4f >= %.4f, segm AP "
                             "%.4f >= %.4f): stopping", it, metrics["bbox"]["AP"],
                             config.eval.min_bbox_map, metrics.get("segm", {}).get("AP", 0.0),
                             config.eval.min_mask_map)
                    stopped_early = True
                    break

    save(it)
    log.info("training done: %d iterations in %s", it - start_iter,
             format_eta(time.perf_counter() - t_start))
    if config.eval.final and not stopped_early:
        metrics = _evaluate(model, config, device, workdir, it, writer)
    writer.close()
    return metrics


def _evaluate(model, config, device, workdir, it, writer) -> dict:
    from mrcnn import evaluation

    model.eval()
    out = os.path.join(workdir, "eval", f"iter_{it:07d}")
    metrics = evaluation.evaluate(model, config, device, output_dir=out)
    vis = metrics.pop("_vis", None)
    for task in ("bbox", "segm"):
        if task in metrics:
            writer.scalars(it, metrics[task], prefix=f"eval/{task}/")
    if vis:
        writer.images(it, {f"val/{i}": img for i, img in enumerate(vis)})
    writer.flush()
    return metrics


def _reached_target(metrics: dict, config) -> bool:
    e = config.eval
    if e.min_bbox_map <= 0 and e.min_mask_map <= 0:
        return False
    box_ok = metrics.get("bbox", {}).get("AP", 0.0) >= e.min_bbox_map
    mask_ok = (not config.model.mask_on) or metrics.get("segm", {}).get("AP", 0.0) >= e.min_mask_map
    return box_ok and mask_ok
