"""The train and test loaders: dataset + sampler + DataLoader workers + collate."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mrcnn.data import catalog
from mrcnn.data.annotations import AnnotationError
from mrcnn.data.image_io import ImageError
from mrcnn.data.meta import CategoryTableError
from mrcnn.data.coco import CocoTestDataset, CocoTrainDataset
from mrcnn.data.collate import collate_test, collate_train
from mrcnn.data.samplers import TrainBatchSampler, TrainSchedule, shard_range
from mrcnn.structures import Batch

log = logging.getLogger(__name__)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGINT / SIGUSR1 to the main process. Launchers
    (`timeout`, SLURM, `docker stop`, Kubernetes, Ctrl-C) signal the whole process group; a worker
    killed by it would make the main process fail with "DataLoader worker ... killed by signal"
    instead of saving a checkpoint at the current step. So each worker moves to a process group
    of its own: signals to the launcher's group miss it, while the DataLoader's own shutdown
    (and multiprocessing's terminate() at exit, which signal the worker by pid) still end it,
    and it ends by itself when the main process dies (the DataLoader's parent watchdog)."""
    import os

    os.setpgid(0, 0)


# Bad-input errors raised while loading a sample. In a worker process they travel to the main
# process as values and are raised there as themselves: the DataLoader's own re-raise rebuilds
# an error from its traceback text (a multi-line message, or a RuntimeError when the class
# cannot take one string), which would turn the one-line message into a traceback.
_USER_ERRORS = (AnnotationError, ImageError, catalog.DatasetMissingError, CategoryTableError)


@dataclasses.dataclass
class _Failed:
    """A sample (or batch) that raised one of _USER_ERRORS."""

    error: BaseException


class _CarryErrors(Dataset):
    """`dataset` whose bad-input errors are returned as `_Failed` instead of raised."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.dataset[key]
        except _USER_ERRORS as e:
            return _Failed(e)


def _collate_or_fail(samples: list, collate: Callable, size_divisibility: int) -> Any:
    failed = next((s for s in samples if isinstance(s, _Failed)), None)
    return failed if failed is not None else collate(samples, size_divisibility=size_divisibility)


def _raise_failed(item: Any) -> Any:
    if isinstance(item, _Failed):
        raise item.error from None
    return item


def iters_per_epoch(config: ml_collections.ConfigDict, dataset_len: int) -> int:
    """Optimizer steps per pass over `dataset_len` images (at least 1)."""
    return max(1, int(dataset_len) // int(config.solver.ims_per_batch))


def _pin(config: ml_collections.ConfigDict) -> bool:
    return torch.cuda.is_available() and config.device != "cpu"


class TrainLoader:
    """Infinite iterator of this rank's training micro-batches (`Batch`, targets set).

    Attributes: dataset (its `bad_counts` includes "bad_image", updated as images are skipped),
    schedule (TrainSchedule), iters_per_epoch (optimizer steps per epoch), micro_batch_size.
    """

    def __init__(
        self,
        loader: DataLoader,
        dataset: CocoTrainDataset,
        schedule: TrainSchedule,
        iters_per_epoch: int,
        micro_batch_size: int,
    ):
        self.loader, self.dataset, self.schedule = loader, dataset, schedule
        self.iters_per_epoch, self.micro_batch_size = iters_per_epoch, micro_batch_size
        self._it: Iterator | None = None

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            self._it = iter(self.loader)
        batch, skipped = _raise_failed(next(self._it))
        if skipped:
            self.dataset.bad_counts["bad_image"] = self.dataset.bad_counts.get(
                "bad_image", 0
            ) + len(skipped)
        return batch

    @property
    def bad_counts(self) -> dict[str, int]:
        return self.dataset.bad_counts

    def close(self) -> None:
        """Stops the worker processes (they also stop when the loader is garbage-collected)."""
        self._it = None


def build_train_loader(
    config: ml_collections.ConfigDict, start_iter: int = 0, rank: int = 0, world_size: int = 1
) -> TrainLoader:
    """Micro-batches of `solver.ims_per_batch // (world_size * solver.accumulate_steps)` images
    for rank `rank`, from optimizer step `start_iter` on (see samplers.py for what each step
    holds). Images are resized, flipped and normalized per `config.input`; batches are
    aspect-ratio grouped when `data.aspect_ratio_grouping`. Deterministic in `config.seed`.
    """
    s = config.solver
    img_dir, ann_file = catalog.require_dataset(config, config.data.train)
    dataset = CocoTrainDataset(
        img_dir,
        ann_file,
        config.input,
        on_bad_annotation=config.data.on_bad_annotation,
        on_bad_image=config.data.on_bad_image,
        filter_empty=config.data.filter_empty,
        ids_as_labels=config.data.category_ids_as_labels,
        with_masks=config.model.mask_on,
    )
    dataset.meta.check_num_classes(config.model.num_classes)
    groups = (
        dataset.group_ids if config.data.aspect_ratio_grouping else np.zeros(len(dataset), np.int64)
    )
    schedule = TrainSchedule(groups, s.ims_per_batch, config.seed)
    sampler = TrainBatchSampler(schedule, start_iter, s.accumulate_steps, rank, world_size)
    workers = int(config.data.num_workers)
    loader = DataLoader(
        _CarryErrors(dataset),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=functools.partial(
            _collate_or_fail,
            collate=collate_train,
            size_divisibility=config.input.size_divisibility,
        ),
        pin_memory=_pin(config),
        # No persistent_workers: the sampler is infinite, so iter() runs once; without them,
        # dropping the iterator (close()) stops the workers.
        # Its own generator: creating the iterator must not draw from the global RNG, or a
        # resumed run (which restores that RNG) would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(int(config.seed) + rank),
        worker_init_fn=ignore_stop_signals,
    )
    per_rank = s.ims_per_batch // (world_size * s.accumulate_steps)
    log.info(
        "train data: %s, %d images, %d instances, %d per micro-batch on this rank, "
        "dropped at load: %s",
        ann_file,
        len(dataset),
        dataset.num_instances,
        per_rank,
        {k: v for k, v in dataset.bad_counts.items() if v},
    )
    return TrainLoader(loader, dataset, schedule, iters_per_epoch(config, len(dataset)), per_rank)


class TestLoader:
    """Iterable of this rank's test batches (`Batch`, targets None), in image-id order.

    Batches whose images were all unreadable (skipped) are not yielded. len() is the number of
    batches of this rank's shard; `shard` the dataset positions it covers.
    """

    def __init__(self, loader: DataLoader, dataset: CocoTestDataset, shard: range):
        self.loader, self.dataset, self.shard = loader, dataset, shard

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for item in self.loader:
            batch, skipped = _raise_failed(item)
            if skipped:
                self.dataset.bad_counts["bad_image"] = self.dataset.bad_counts.get(
                    "bad_image", 0
                ) + len(skipped)
            if len(batch.infos):
                yield batch


def build_test_loader(
    config: ml_collections.ConfigDict,
    dataset_cfg: Any = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[TestLoader, CocoTestDataset]:
    """(loader, dataset) for evaluating on `dataset_cfg` (default `config.data.val`).

    Batches of `test.ims_per_batch` images over all ranks (the global batch, as in the seed;
    each rank takes `test.ims_per_batch // W`); rank r of W gets a contiguous shard of the images,
    disjoint from the others, so every image is seen exactly once over all ranks. The dataset
    exposes `ann_file` (for pycocotools), `image_ids` (the images evaluated: the first
    `eval.num_images` when > 0) and `meta`.
    """
    dataset_cfg = dataset_cfg if dataset_cfg is not None else config.data.val
    img_dir, ann_file = catalog.require_dataset(config, dataset_cfg)
    dataset = CocoTestDataset(
        img_dir,
        ann_file,
        config.input,
        on_bad_annotation=config.data.on_bad_annotation,
        on_bad_image=config.data.on_bad_image,
        num_images=int(config.eval.num_images),
        ids_as_labels=config.data.category_ids_as_labels,
        with_masks=config.model.mask_on,
    )
    shard = shard_range(len(dataset), rank, world_size)
    loader = DataLoader(
        _CarryErrors(Subset(dataset, list(shard))),
        batch_size=max(1, int(config.test.ims_per_batch) // world_size),  # global, as the seed
        shuffle=False,
        num_workers=int(config.data.num_workers),
        collate_fn=functools.partial(
            _collate_or_fail,
            collate=collate_test,
            size_divisibility=config.input.size_divisibility,
        ),
        pin_memory=_pin(config),
        # Creating an iterator draws a worker seed; from its own generator, an evaluation in
        # the middle of training leaves the global RNG (saved in checkpoints) untouched.
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=ignore_stop_signals,
    )
    return TestLoader(loader, dataset, shard), dataset
