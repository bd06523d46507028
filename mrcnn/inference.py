"""The batched inference loop shared by evaluation and prediction, and the model it runs.

`run_inference` turns a stream of `Batch`es into one `(ImageInfo, Detections)` per image with
the detections in *original* image pixels (boxes float32 xyxy, masks uint8 [K, H, W] of the
original size, on the CPU), timing the throughput as it goes. `build_inference_model` builds the
model of a config and loads the weights that `--mode=eval` / `--mode=predict` should use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator

import ml_collections
import torch
from torch import nn

from mrcnn.data.collate import split_by_orientation
from mrcnn.data.prefetch import Prefetcher
from mrcnn.perf import install_cuda_graphs, remember_settings, settings_of
from mrcnn.structures import Batch, Detections, ImageInfo

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class InferenceStats:
    """Throughput of one `run_inference` pass, filled in while it runs.

    `seconds` and `timed_images` exclude the warm-up batches (first-call allocations, cudnn
    autotuning and lazy compilation would otherwise dominate short runs); `images` counts all.
    The time is wall time of the whole loop (data loading, model, pasting, copy to the host).
    """

    images: int = 0
    batches: int = 0
    timed_images: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.timed_images / self.seconds if self.seconds > 0 else 0.0


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """`torch.autocast` for "bfloat16" / "float16", a no-op context for "float32"."""
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype not in _AUTOCAST_DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected float32, bfloat16 or float16")
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[dtype])


def _to_original(det: Detections, size, orig_size, mask_threshold: float) -> Detections:
    # Looked up at call time so that tests can substitute it (and so that importing this module
    # does not import the model).
    from mrcnn.modeling.postprocess import detections_to_original

    return detections_to_original(det, size, orig_size, mask_threshold=mask_threshold)


def _as_float32(det: Detections) -> Detections:
    """Outputs of an autocast forward can be bf16/fp16; everything downstream expects float32."""
    masks = det.masks
    if masks is not None and masks.is_floating_point():
        masks = masks.float()
    return Detections(det.boxes.float(), det.scores.float(), det.labels.long(), masks)


def run_inference(
    model: nn.Module,
    batches: Iterable[Batch],
    device: torch.device,
    dtype: str = "float32",
    *,
    mask_threshold: float = 0.5,
    warmup: int = 2,
    log_period: int = 0,
    stats: InferenceStats | None = None,
    channels_last: bool = False,
    postprocess: Callable[..., Detections] | None = None,
    pad_to: tuple[int, ...] | None = None,
    prefetch: bool | None = None,
) -> Iterator[tuple[ImageInfo, Detections]]:
    """Runs `model` over `batches` and yields, per image, its info and its original-size detections.

    model: in eval mode; `model(ImageBatch)` returns one `Detections` per image in resized-image
      pixels with masks = probabilities [K, 1, M, M] (or masks None for a box-only model).
    dtype: "float32", or "bfloat16" / "float16" to run the forward under `torch.autocast`; the
      outputs are cast back to float32 before pasting.
    Yields `(info, det)` with det.boxes float32 [K, 4] xyxy in original pixels, det.scores
      float32 [K], det.labels int64 [K] (model labels, >= 1), det.masks uint8 [K, H, W] (original
      size) or None, all on the CPU. They are inference tensors: read them, do not modify them in
      place.
    warmup: batches left out of the timing in `stats`. log_period: a progress line every that many
      batches (0: none). postprocess: replaces `detections_to_original(det, size, orig_size,
      mask_threshold=...)` (tests use it to feed already-final detections).
    pad_to, prefetch: `perf.pad_to` / `perf.prefetch`; None takes what the model was built with
      (`mrcnn.perf.settings_of`), so evaluation and prediction follow the config without passing
      them. With pad_to, each batch is split by orientation and padded to that orientation's
      fixed shape (`collate.split_by_orientation`; a split batch counts as two in `stats`).
      With prefetch on CUDA, the next batch is copied (and padded) on a side stream while this
      one runs (`mrcnn.data.prefetch.Prefetcher`).

    Grad mode and autocast are entered per batch, never across a `yield`, so a consumer that stops
    early does not leave the thread in inference mode.
    """
    stats = stats if stats is not None else InferenceStats()
    to_original = postprocess or _to_original
    settings = settings_of(model)
    pad_to = tuple(settings.pad_to if pad_to is None else pad_to)
    prefetch = settings.prefetch if prefetch is None else prefetch

    def parts(batch: Batch) -> list[Batch]:
        if not pad_to or len(batch.infos) == 0:
            return [batch]
        return split_by_orientation(batch, pad_to)

    t_loop = t_start = time.perf_counter()
    for batch in itertools.chain.from_iterable(
            Prefetcher(batches, device, transform=parts, overlap=prefetch)):
        if len(batch.infos) == 0:
            continue
        images = batch.images  # on the device already (Prefetcher)
        if channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            with autocast(device, dtype):
                outputs = model(images)
            if len(outputs) != len(batch.infos):
                raise RuntimeError(
                    f"the model returned {len(outputs)} detections for {len(batch.infos)} images"
                )
            results = []
            for info, det in zip(batch.infos, outputs):
                det = to_original(_as_float32(det), info.size, info.orig_size, mask_threshold)
                results.append((info, det.to("cpu")))
        # The copy to the host above synchronizes the device, so the clock is honest.
        stats.batches += 1
        stats.images += len(results)
        if stats.batches == warmup:
            t_start = time.perf_counter()
        elif stats.batches > warmup:
            stats.timed_images += len(results)
            stats.seconds = time.perf_counter() - t_start
        if log_period and stats.batches % log_period == 0:
            speed = f"{stats.images_per_s:.2f} images/s" if stats.seconds else "warming up"
            log.info("inference: %d images done, %s", stats.images, speed)
        yield from results
    if stats.batches and stats.batches <= warmup:
        # Too few batches to leave any out: time them all rather than report nothing.
        stats.timed_images = stats.images
        stats.seconds = time.perf_counter() - t_loop


# ----------------------------------------------------------------------------- the model


def _find_last_checkpoint(workdir: str) -> str | None:
    try:
        from mrcnn.checkpoint import find_last
    except ImportError:  # the lead's module is not there: read the pointer file ourselves
        pointer = os.path.join(workdir, "last_checkpoint")
        if not os.path.isfile(pointer):
            return None
        with open(pointer) as f:
            name = f.read().strip()
        path = os.path.join(workdir, name)
        return path if name and os.path.isfile(path) else None
    return find_last(workdir)


def resolve_weights(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, str]:
    """The (path, format) of the weights to run: `init.weights` if set, else the last checkpoint.

    Raises FileNotFoundError naming both places when neither exists.
    """
    if config.init.weights:
        if not os.path.isfile(config.init.weights):
            raise FileNotFoundError(f"config.init.weights={config.init.weights!r} does not exist")
        return config.init.weights, config.init.format
    last = _find_last_checkpoint(workdir)
    if last is not None:
        return last, "native"
    raise FileNotFoundError(
        f"no weights to run: config.init.weights is not set and the workdir {workdir!r} has no "
        "checkpoint (no 'last_checkpoint' file naming an existing one). Train first, or pass "
        "--config.init.weights=PATH (with --config.init.format=native|torchvision)."
    )


def build_inference_model(
    config: ml_collections.ConfigDict, workdir: str, device: torch.device
) -> nn.Module:
    """`build_model(config.model)` with its weights loaded, on `device`, in eval mode.

    The weights are `config.init.weights` in `config.init.format` when set, otherwise the
    workdir's last checkpoint (native format); neither is an error (see `resolve_weights`).
    """
    from mrcnn.modeling import build_model
    from mrcnn.weights import load_weights

    path, fmt = resolve_weights(config, workdir)  # fail before the (slow) build
    model = build_model(config.model)
    # Strict about the class layers: detections from randomly initialized heads are meaningless.
    load_weights(model, path, fmt, strict_classes=True)
    log.info("inference model: loaded %s weights from %s", fmt, path)
    model.to(device)
    remember_settings(model, config)  # pad_to / prefetch for run_inference
    if config.perf.channels_last:
        model.to(memory_format=torch.channels_last)
    model.eval()
    if device.type == "cuda":
        install_cuda_graphs(model, config)  # inference graphs are captured on first use
    return model
