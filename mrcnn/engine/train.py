"""`--mode=train`: build, resume, loop, log, checkpoint, evaluate. Reads top to bottom.

One optimizer step = `solver.accumulate_steps` micro-batches; the schedule, `max_iter`,
`checkpoint_period` and `eval.period` count optimizer steps. A checkpoint holds everything needed to
continue exactly: model, optimizer, scaler, iteration, RNG states and the config.

Nothing in a step reads a device value on the host: the losses stay on the device
(step_losses.py) until a log line, checkpoint, evaluation or stop needs them, a non-finite step
is left out by the fused optimizer on the device, and with several ranks the stop vote is read
one step late. One host sync per log period instead of one per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import time

import ml_collections
import torch
from torch import nn

from mrcnn import dist
from mrcnn.build import Built, build
from mrcnn.build.categories import CHECKPOINT_KEY
from mrcnn.data.collate import pad_batch_to
from mrcnn.data.prefetch import Prefetcher
from mrcnn.engine import checkpoint, solver
from mrcnn.engine.rng import rng_state, seed_everything, set_rng_state
from mrcnn.engine.signals import StopFlag
from mrcnn.engine.step_losses import PendingLosses, StepRecord
from mrcnn.engine.workdir_lock import WorkdirLock, WorkdirLockedError
from mrcnn.engine.writer import MetricWriter, SmoothedValue, format_eta
from mrcnn.fileio import write_json_atomic
from mrcnn.precision import autocast

log = logging.getLogger("mrcnn.train")

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


class NonFiniteLossError(FloatingPointError):
    pass


def configure_torch(config: ml_collections.ConfigDict, device: torch.device) -> None:
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = config.perf.cudnn_benchmark
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config.perf.tf32
        torch.backends.cudnn.allow_tf32 = config.perf.tf32


def train(config: ml_collections.ConfigDict, workdir: str, device: torch.device) -> dict:
    """Trains `config` in `workdir` (resuming from its last checkpoint); returns final metrics."""
    configure_torch(config, device)
    with _workdir_lock(workdir):
        return Trainer(config, workdir, device).run()


@contextlib.contextmanager
def _workdir_lock(workdir: str):
    """Rank 0 holds the workdir's lock; every rank learns whether it got it (so no rank waits in
    a collective for a rank 0 that stopped), and all fail with the same message."""
    with contextlib.ExitStack() as stack:
        error = None
        if dist.is_main():
            try:
                stack.enter_context(WorkdirLock(workdir))
            except WorkdirLockedError as e:
                error = str(e)
        error = dist.broadcast_object(error)
        if error is not None:
            raise WorkdirLockedError(error)
        yield


@dataclasses.dataclass
class StepResult:
    """One optimizer step, as device tensors (nothing read on the host yet)."""

    losses: torch.Tensor  # float [1 + len(LOSS_NAMES)]: the total, then each loss; this rank's
    skip: torch.Tensor  # 0-dim bool: not finite, so the optimizer leaves the step out
    lr: float
    seconds: float
    data_seconds: float


class Trainer:
    """The state of one training run and its steps, in the order they happen."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, device: torch.device):
        self.config, self.workdir, self.device = config, workdir, device
        self.s = config.solver
        self.rank, self.world = dist.rank(), dist.world_size()
        seed_everything(config.seed)  # same initial weights on every rank
        self.built: Built = build(config, device, "train", workdir)
        self.model = self.built.model
        self.categories = self.built.categories  # from the training data: saved with the model
        _write_categories(workdir, self.categories)
        self.optimizer = solver.build_optimizer(self.model, self.s)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.built.fast.dtype == "float16")
        self._check_val_set()
        self.start_iter, self.last_ckpt = self._resume()
        self._capture_graphs()
        self.train_model = self._wrap_ddp()
        self.bad_steps = 0
        self._vote: torch.Tensor | None = None  # the last step's stop vote (several ranks)

    # ------------------------------------------------------------------ set-up
    def _resume(self) -> tuple[int, str | None]:
        """Loads the workdir's last checkpoint when there is one: (start iteration, its path)."""
        from mrcnn import weights

        workdir, rank = self.workdir, self.rank
        latest = (checkpoint.load_latest(workdir)
                  if dist.is_main() and os.path.isdir(workdir) else None)
        found = dist.broadcast_object(None if latest is None else latest[1])  # same file
        if found is None:
            seed_everything(self.config.seed + rank)  # per-rank randomness (sampling) from here
            return 0, None
        state = latest[0] if latest is not None else checkpoint.load(found)
        checkpoint.check_training_state(state, found)
        _check_same_categories(state, self.categories, found)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise weights.WeightsError(
                f"{found} does not fit the configured model (the workdir holds a run of another "
                f"architecture; use a new --workdir): {e}") from e
        checkpoint.load_optimizer(self.optimizer, state, found)
        self.scaler.load_state_dict(state["scaler"])
        start_iter = int(state["iteration"])
        # Each rank continues its own RNG stream (the samplers draw from it). A checkpoint from
        # another world size has no stream for this rank: rank 0 takes its saved one, the
        # others start distinct fresh ones.
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == self.world:
            set_rng_state(per_rank[rank])
        else:
            set_rng_state(state["rng"])
            if rank > 0:
                seed_everything(self.config.seed + rank + 10007 * start_iter)
        log.info("resumed from %s at iteration %d", found, start_iter)
        return start_iter, found

    def _check_val_set(self) -> None:
        """A validation set that is missing fails now, not after hours of training."""
        e = self.config.eval
        if e.final or e.period or e.per_epoch or e.min_bbox_map > 0 or e.min_mask_map > 0:
            from mrcnn.data import catalog

            catalog.require_dataset(self.config, self.config.data.val)

    def _capture_graphs(self) -> None:
        graphs = self.built.graphs
        if graphs is None:
            return
        # Captured on the bare model before DDP wraps it (DDP's hooks then run eagerly on the
        # gradients the graphed backward returns), after the resume so nothing is captured
        # twice; load_state_dict copies in place, so the graphs would survive it anyway.
        self.model.train()
        graphs.capture_training(self.s.ims_per_batch // (self.world * self.s.accumulate_steps),
                                self.built.fast.dtype, self.built.fast.channels_last)

    def _wrap_ddp(self) -> nn.Module:
        if self.world == 1:
            return self.model
        return nn.parallel.DistributedDataParallel(
            self.model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            # Buffers (BN statistics) stay per rank, as in detectron2; they are equal at the
            # start (DDP broadcasts rank 0's module state at construction).
            broadcast_buffers=False,
            find_unused_parameters=False,
        )

    def _batches(self):
        """The loader and the device-side batch stream. The prefetcher reads one batch ahead;
        which batch each step trains on is a function of the step (samplers.py), so resuming
        stays exact."""
        from mrcnn import data as data_lib

        loader = data_lib.build_train_loader(self.config, start_iter=self.start_iter,
                                             rank=self.rank, world_size=self.world)
        pad_to = self.built.fast.pad_to
        batches = Prefetcher(
            loader, self.device,
            transform=functools.partial(pad_batch_to, pad_to=pad_to) if pad_to else None,
            overlap=self.built.fast.prefetch)
        return loader, batches

    # ------------------------------------------------------------------ one step
    def step(self, it: int, batches) -> StepResult:
        """Forward / backward over the micro-batches of step `it`; reads nothing on the host."""
        t0 = time.perf_counter()
        lr = solver.set_lr(self.optimizer, self.s.base_lr, solver.lr_factor(it, self.s))
        accum = self.s.accumulate_steps
        data_time = 0.0
        total = torch.zeros(1 + len(LOSS_NAMES), device=self.device)
        for micro in range(accum):
            td = time.perf_counter()
            batch = next(batches)  # on the device, padded to perf.pad_to if set
            data_time += time.perf_counter() - td
            if self.built.fast.channels_last:
                batch.images.tensor = batch.images.tensor.contiguous(
                    memory_format=torch.channels_last)
            sync = (self.train_model.no_sync() if self.world > 1 and micro < accum - 1
                    else contextlib.nullcontext())
            with sync:
                with autocast(self.device, self.built.fast.dtype,
                              cache_enabled=self.built.graphs is None):
                    losses = self.train_model(batch.images, batch.targets)
                parts = torch.stack([losses[k].float() for k in LOSS_NAMES]) / accum
                loss = parts.sum()
                self.scaler.scale(loss).backward()
            total += torch.cat([loss.detach().reshape(1), parts.detach()])
        return StepResult(total, self._skip_flag(total), lr, time.perf_counter() - t0,
                          data_time)

    def _skip_flag(self, losses: torch.Tensor) -> torch.Tensor:
        """Whether to leave the step out, decided on the device. Every rank must decide alike
        (DDP has already spread a non-finite gradient to all of them; ranks that disagreed
        would drift apart), so the flag is all-reduced: a collective on the device's stream,
        not a host read. float16's GradScaler finds non-finite gradients itself."""
        if self.scaler.is_enabled():
            return torch.zeros((), dtype=torch.bool, device=self.device)
        bad = (~torch.isfinite(losses).all()).float()
        if self.world > 1:
            bad = dist.all_reduce_mean(bad)
        return bad > 0

    def apply_gradients(self, result: StepResult) -> None:
        """The optimizer step, skipped on the device when `result.skip` is set: the fused
        optimizers take the flag as `found_inf` (the GradScaler's mechanism) and leave
        weights, momenta and step counts unchanged, so no host read is needed to decide."""
        if self.s.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.clip_grad_norm)
        solver.align_layouts(self.optimizer)  # the fused kernels need matching strides
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.found_inf = result.skip.float()
            self.optimizer.step()
        solver.mark_updated(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)

    def _stop_vote(self, stop: StopFlag) -> bool:
        """Whether every rank stops after this step. One rank: its own flag. Several: a
        signal can reach the ranks at different steps, or only some of them; the votes are
        all-reduced and each rank reads the vote of the step before (done on the device by
        now, so the read does not stall the queue), so all stop at the same step instead of
        hanging in a collective."""
        if self.world == 1:
            return stop.signal is not None
        vote = dist.all_reduce_mean(
            torch.full((), float(stop.signal is not None), device=self.device))
        previous, self._vote = self._vote, vote
        return previous is not None and previous.item() > 0

    def _read_losses(self, pending: PendingLosses, meters: dict) -> bool:
        """Reads the pending steps (one host sync): counts and reports skipped ones, raises
        NonFiniteLossError past solver.max_bad_steps, feeds the meters the applied ones.
        Returns whether the latest step was skipped."""
        records = pending.read()
        for r in records:
            if not r.skipped:
                _update_meters(meters, r)
                continue
            bad = [k for k, v in r.values.items() if not math.isfinite(v)]
            self.bad_steps += 1
            if self.bad_steps > self.s.max_bad_steps:
                raise NonFiniteLossError(
                    f"non-finite loss at iteration {r.iteration}: "
                    f"{', '.join(f'{k} = {r.values[k]}' for k in bad)}; last good "
                    f"checkpoint: {self.last_ckpt or 'none'} (solver.max_bad_steps="
                    f"{self.s.max_bad_steps} allows skipping bad steps)")
            log.warning("iteration %d: non-finite %s, step skipped (%d/%d)",
                        r.iteration, bad, self.bad_steps, self.s.max_bad_steps)
        return bool(records) and records[-1].skipped

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        config, s = self.config, self.s
        loader, batches = self._batches()
        iters_per_epoch = loader.iters_per_epoch
        writer = MetricWriter(self.workdir)
        meters = {k: SmoothedValue() for k in ("loss", *LOSS_NAMES, "time", "data")}
        metrics: dict = {}
        log.info("training from iteration %d to %d (%d images/step on %d ranks, accumulate %d)",
                 self.start_iter, s.max_iter, s.ims_per_batch, self.world, s.accumulate_steps)
        self.model.train()
        it, stopped_early, t_start = self.start_iter, False, time.perf_counter()
        pending = PendingLosses(("loss", *LOSS_NAMES))
        with StopFlag() as stop:
            while it < s.max_iter:
                result = self.step(it, batches)
                self.apply_gradients(result)
                pending.add(it, result.losses, result.skip, result.seconds, result.data_seconds)
                it += 1
                stopping = self._stop_vote(stop)
                save_due = bool(s.checkpoint_period) and it % s.checkpoint_period == 0
                eval_due = it < s.max_iter and _eval_due(config, it, iters_per_epoch)
                log_due = (it % config.log_period == 0 or it == s.max_iter
                           or it == self.start_iter + 1)
                if not (log_due or stopping or save_due or eval_due):
                    continue  # nothing needs the losses on the host yet
                if self._read_losses(pending, meters):
                    continue  # a skipped step is not logged, checkpointed or evaluated
                if log_due:
                    self._log(it, result.lr, meters, writer, loader)
                if stopping:
                    self.save(it)
                    log.warning("stopped by %s at iteration %d; rerun to resume",
                                f"signal {stop.signal}" if stop.signal
                                else "a signal on another rank", it)
                    writer.close()
                    return metrics
                if save_due and it < s.max_iter:
                    self.save(it)
                if eval_due:
                    metrics = self._evaluate(it, writer)
                    if _reached_target(metrics, config):
                        _log_target(it, metrics, config)
                        stopped_early = True
                        break
        self.save(it)
        log.info("training done: %d iterations in %s", it - self.start_iter,
                 format_eta(time.perf_counter() - t_start))
        if config.eval.final and not stopped_early:
            metrics = self._evaluate(it, writer)
        writer.close()
        from mrcnn.engine.evaluate import write_run_report

        write_run_report(self.workdir, config)
        return metrics

    # ------------------------------------------------------------------ around the steps
    def _log(self, it: int, lr: float, meters: dict, writer: MetricWriter, loader) -> None:
        s, device = self.s, self.device
        names = ("loss", *LOSS_NAMES)
        eta = meters["time"].global_avg * (s.max_iter - it)
        mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
        log.info("  ".join(
            [f"eta: {format_eta(eta)}", f"iter: {it}"]
            + [f"{k}: {meters[k].median:.4f} ({meters[k].global_avg:.4f})" for k in names]
            + [f"time: {meters['time'].median:.4f} ({meters['time'].global_avg:.4f})",
               f"data: {meters['data'].median:.4f} ({meters['data'].global_avg:.4f})",
               f"lr: {lr:.6f}", f"max mem: {mem:.0f}"]))
        writer.scalars(it, {
            **{k: meters[k].median for k in names},
            "lr": lr, "time": meters["time"].median, "data_time": meters["data"].median,
            "max_mem_mb": mem,
            "images_per_sec": s.ims_per_batch / max(meters["time"].median, 1e-9),
        }, prefix="train/")
        bad_counts = getattr(getattr(loader, "dataset", None), "bad_counts", None)
        if bad_counts:
            writer.scalars(it, dict(bad_counts), prefix="data/")

    def save(self, it: int) -> None:
        """A checkpoint of step `it` (rank 0 writes it, with every rank's RNG state)."""
        rngs = dist.all_gather_object(rng_state()) if self.world > 1 else None
        if dist.is_main():
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "iteration": it,
                "config": self.config.to_json_best_effort(),
                "rng": rng_state(),
                CHECKPOINT_KEY: self.categories.to_dict(),
            }
            if rngs is not None:
                state["rng_per_rank"] = rngs
            try:
                self.last_ckpt = checkpoint.save(self.workdir, state, it,
                                                 keep=self.s.keep_checkpoints)
            except (OSError, RuntimeError) as e:  # disk full, quota, permissions: the last
                # one is intact (torch.save reports a full disk as a RuntimeError)
                raise checkpoint.CheckpointError(
                    f"could not save the checkpoint of iteration {it} in {self.workdir}"
                    f"{checkpoint.disk_note(self.workdir)} ({type(e).__name__}: {e}); the last "
                    f"good checkpoint is {self.last_ckpt or 'none'}") from e
            log.info("saved %s", self.last_ckpt)
        dist.barrier()

    def _evaluate(self, it: int, writer: MetricWriter) -> dict:
        from mrcnn.engine.evaluate import evaluate

        self.model.eval()
        out = os.path.join(self.workdir, "eval", f"iter_{it:07d}")
        metrics = evaluate(self.model, self.config, self.device, output_dir=out,
                           categories=self.categories)
        vis = metrics.pop("_vis", None)
        for task in ("bbox", "segm"):
            if task in metrics:
                writer.scalars(it, metrics[task], prefix=f"eval/{task}/")
        if vis:
            writer.images(it, {f"val/{i}": img for i, img in enumerate(vis)})
        writer.flush()
        self.model.train()
        return metrics


def _write_categories(workdir: str, table) -> None:
    """config.json gets the model's category table beside the config (rank 0)."""
    if not dist.is_main():
        return
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            resolved = json.load(f)
    except (OSError, ValueError):
        return  # written by the runner; a run started without it (tests) has nothing to add to
    resolved["categories"] = table.to_dict()
    write_json_atomic(path, resolved, indent=2, sort_keys=True)


def _check_same_categories(state: dict, table, path: str) -> None:
    """A run resumes only onto the categories it was trained with: the labels of its weights
    would otherwise silently mean other categories."""
    from mrcnn.data import CategoryTable

    raw = state.get(CHECKPOINT_KEY)
    if raw is None:
        return  # a checkpoint from before tables travelled with the weights
    saved = CategoryTable.from_dict(raw, where=f"{path}: categories")
    if saved != table:
        raise checkpoint.CheckpointError(
            f"{path} was trained on categories {list(saved.category_ids)[:12]} "
            f"({saved.num_classes - 1} classes) but config.data.train now has "
            f"{list(table.category_ids)[:12]} ({table.num_classes - 1}): resuming would give its "
            "labels other meanings; use the training set it was trained on, or a new --workdir "
            "with --config.init.weights")


def _update_meters(meters: dict, result: StepRecord) -> None:
    for k, v in result.values.items():
        meters[k].update(v)
    meters["time"].update(result.seconds)
    meters["data"].update(result.data_seconds)


def _eval_due(config: ml_collections.ConfigDict, it: int, iters_per_epoch: int) -> bool:
    epoch_end = config.eval.per_epoch and iters_per_epoch and it % iters_per_epoch == 0
    return bool((config.eval.period and it % config.eval.period == 0) or epoch_end)


def _reached_target(metrics: dict, config) -> bool:
    e = config.eval
    if e.min_bbox_map <= 0 and e.min_mask_map <= 0:
        return False
    box_ok = metrics.get("bbox", {}).get("AP", 0.0) >= e.min_bbox_map
    mask_ok = (not config.model.mask_on) or metrics.get("segm", {}).get("AP", 0.0) >= e.min_mask_map
    return box_ok and mask_ok


def _log_target(it: int, metrics: dict, config) -> None:
    log.info("target reached at iteration %d (bbox AP %.4f >= %.4f, segm AP %.4f >= %.4f): "
             "stopping", it, metrics["bbox"]["AP"], config.eval.min_bbox_map,
             metrics.get("segm", {}).get("AP", 0.0), config.eval.min_mask_map)
