"""The batched inference loop shared by evaluation and prediction.

`run_inference` turns a stream of `Batch`es into one `(ImageInfo, Detections)` per image with
the detections in *original* image pixels (boxes float32 xyxy, masks uint8 [K, H, W] of the
original size, on the CPU), timing the throughput as it goes. The model comes from
`mrcnn.build.build`; its `FastPaths` say how batches are padded, prefetched and cast.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from mrcnn.build.fast_paths import FastPaths
from mrcnn.data.collate import split_by_orientation
from mrcnn.data.prefetch import Prefetcher
from mrcnn.precision import autocast
from mrcnn.structures import Batch, Detections, ImageInfo

log = logging.getLogger(__name__)

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
    fast: FastPaths | None = None,
    *,
    mask_threshold: float = 0.5,
    warmup: int = 2,
    log_period: int = 0,
    stats: InferenceStats | None = None,
    postprocess: Callable[..., Detections] | None = None,
) -> Iterator[tuple[ImageInfo, Detections]]:
    """Runs `model` over `batches` and yields, per image, its info and its original-size detections.

    model: in eval mode; `model(ImageBatch)` returns one `Detections` per image in resized-image
      pixels with masks = probabilities [K, 1, M, M] (or masks None for a box-only model).
    fast: the run's switches (`mrcnn.build.fast_paths`; default: none, float32). `fast.dtype`
      "bfloat16" / "float16" runs the forward under `torch.autocast` (outputs are cast back to
      float32 before pasting); `fast.channels_last` feeds NHWC images; with `fast.pad_to` each
      batch is split by orientation and padded to that orientation's fixed shape
      (`collate.split_by_orientation`; a split batch counts as two in `stats`); with
      `fast.prefetch` on CUDA the next batch is copied (and padded) on a side stream while this
      one runs (`mrcnn.data.prefetch.Prefetcher`).
    Yields `(info, det)` with det.boxes float32 [K, 4] xyxy in original pixels, det.scores
      float32 [K], det.labels int64 [K] (model labels, >= 1), det.masks uint8 [K, H, W] (original
      size) or None, all on the CPU. They are inference tensors: read them, do not modify them in
      place.
    warmup: batches left out of the timing in `stats`. log_period: a progress line every that many
      batches (0: none). postprocess: replaces `detections_to_original(det, size, orig_size,
      mask_threshold=...)` (tests use it to feed already-final detections).

    Grad mode and autocast are entered per batch, never across a `yield`, so a consumer that stops
    early does not leave the thread in inference mode.
    """
    stats = stats if stats is not None else InferenceStats()
    to_original = postprocess or _to_original
    fast = fast if fast is not None else FastPaths()
    pad_to = tuple(fast.pad_to)

    def parts(batch: Batch) -> list[Batch]:
        if not pad_to or len(batch.infos) == 0:
            return [batch]
        return split_by_orientation(batch, pad_to)

    t_loop = t_start = time.perf_counter()
    for batch in itertools.chain.from_iterable(
            Prefetcher(batches, device, transform=parts, overlap=fast.prefetch)):
        if len(batch.infos) == 0:
            continue
        images = batch.images  # on the device already (Prefetcher)
        if fast.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            with autocast(device, fast.dtype):
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
