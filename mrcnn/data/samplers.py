"""Which images each step trains on: a pure function of (seed, step).

Training is iteration-based. Step s (an optimizer step) uses a global batch of
`solver.ims_per_batch` images given by `TrainSchedule.step_images(s)`; its micro-batch a
(of `solver.accumulate_steps`) is the slice [a * G, (a + 1) * G) with G = ims_per_batch /
accumulate_steps, and rank r of W takes the sub-slice [r * G / W, (r + 1) * G / W) of that.
So the images of a global batch, and the augmentation seed of each (drawn from its position in
the batch), do not depend on the world size or the accumulation, and resuming at step s gives
exactly what an uninterrupted run would have seen.

Epochs: every image group (landscape / portrait with aspect-ratio grouping, else one group) is
shuffled with a per-epoch generator and cut into whole global batches, so every batch has one
orientation; the few images left over in a group change from epoch to epoch. A dataset too
small for a single whole batch gets batches mixed across groups, repeating images as needed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

LANDSCAPE, PORTRAIT = 0, 1


def aspect_groups(heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """int64 [N]: 0 for landscape (w >= h), 1 for portrait images."""
    return (np.asarray(widths) < np.asarray(heights)).astype(np.int64)


class TrainSchedule:
    """Global batches of dataset indices for every step, from `seed` alone.

    group_ids: int [N] group of each dataset image (all zeros: no grouping).
    batch_size: images per global batch (`solver.ims_per_batch`).
    """

    def __init__(self, group_ids: np.ndarray, batch_size: int, seed: int):
        group_ids = np.asarray(group_ids, dtype=np.int64)
        if group_ids.ndim != 1 or group_ids.size == 0:
            raise ValueError("the training set is empty: no image to sample")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_images = int(group_ids.size)
        self._groups = [np.flatnonzero(group_ids == g) for g in np.unique(group_ids)]
        whole = sum(len(g) // self.batch_size for g in self._groups)
        # Too few images for one single-group batch: mix groups and repeat images.
        self._mixed = whole == 0
        self.batches_per_epoch = (
            max(1, self.num_images // self.batch_size) if self._mixed else whole
        )
        self._cached_epoch = -1
        self._cached: np.ndarray | None = None

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """int64 [batches_per_epoch, batch_size] dataset indices of every batch of `epoch`."""
        if epoch == self._cached_epoch:
            return self._cached
        rng = np.random.default_rng([self.seed, 0x5A3D, int(epoch)])
        if self._mixed:
            need = self.batches_per_epoch * self.batch_size
            reps = -(-need // self.num_images)
            flat = np.concatenate([rng.permutation(self.num_images) for _ in range(reps)])
            batches = flat[:need].reshape(self.batches_per_epoch, self.batch_size)
        else:
            chunks = []
            for members in self._groups:
                perm = rng.permutation(members)
                n = len(perm) // self.batch_size
                if n:
                    chunks.append(perm[: n * self.batch_size].reshape(n, self.batch_size))
            batches = np.concatenate(chunks)
            batches = batches[rng.permutation(len(batches))]
        self._cached_epoch, self._cached = epoch, batches.astype(np.int64)
        return self._cached

    def step_images(self, step: int) -> np.ndarray:
        """int64 [batch_size] dataset indices of the global batch of optimizer step `step`."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, i = divmod(int(step), self.batches_per_epoch)
        return self.epoch_batches(epoch)[i]

    def step_seeds(self, step: int) -> np.ndarray:
        """int64 [batch_size] augmentation seed of each position of step `step`'s batch."""
        ss = np.random.SeedSequence([self.seed, 0xA11C, int(step)])
        return ss.generate_state(self.batch_size, dtype=np.uint32).astype(np.int64)


def micro_batch_slice(
    batch_size: int, accumulate_steps: int, world_size: int, micro: int, rank: int
) -> slice:
    """Positions in a global batch that rank `rank` trains on in micro-batch `micro`."""
    if batch_size % (accumulate_steps * world_size):
        raise ValueError(
            f"solver.ims_per_batch={batch_size} must divide by accumulate_steps x world size = "
            f"{accumulate_steps} x {world_size}"
        )
    per_rank = batch_size // (accumulate_steps * world_size)
    start = (micro * world_size + rank) * per_rank
    return slice(start, start + per_rank)


class TrainBatchSampler(Sampler):
    """Infinite sampler of this rank's micro-batches from step `start_step` on.

    Yields lists of (dataset index, augmentation seed) pairs: the dataset draws the image's
    random scale and flip from the seed, so worker count and order change nothing.
    """

    def __init__(
        self,
        schedule: TrainSchedule,
        start_step: int = 0,
        accumulate_steps: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        # Fail now, naming the config key, rather than in the first __iter__.
        micro_batch_slice(schedule.batch_size, accumulate_steps, world_size, 0, rank)
        self.schedule = schedule
        self.start_step = int(start_step)
        self.accumulate_steps = int(accumulate_steps)
        self.rank, self.world_size = int(rank), int(world_size)

    def micro_batch(self, step: int, micro: int) -> list[tuple[int, int]]:
        sl = micro_batch_slice(
            self.schedule.batch_size, self.accumulate_steps, self.world_size, micro, self.rank
        )
        idx = self.schedule.step_images(step)[sl].tolist()
        seeds = self.schedule.step_seeds(step)[sl].tolist()
        return list(zip(idx, seeds))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            for micro in range(self.accumulate_steps):
                yield self.micro_batch(step, micro)
            step += 1


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Rank `rank`'s contiguous share of n items: disjoint, covering, sizes differ by <= 1."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    return range(n * rank // world_size, n * (rank + 1) // world_size)
