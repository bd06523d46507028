"""The training schedule: deterministic, resumable, split over ranks without changing the global
batch, aspect-ratio grouped; the test shards cover every image once."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mrcnn.data.samplers import (
    TrainBatchSampler,
    TrainSchedule,
    aspect_groups,
    micro_batch_slice,
    shard_range,
)


def _groups(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, n)


def _take(sampler: TrainBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), n))


def test_same_seed_same_sequence_other_seed_other_sequence():
    g = _groups(103, 1)
    a = _take(TrainBatchSampler(TrainSchedule(g, 8, seed=5)), 30)
    b = _take(TrainBatchSampler(TrainSchedule(g, 8, seed=5)), 30)
    c = _take(TrainBatchSampler(TrainSchedule(g, 8, seed=6)), 30)
    assert a == b
    assert a != c


def test_resume_at_a_step_continues_the_uninterrupted_sequence():
    g = _groups(57, 2)
    for accumulate in (1, 2):
        full = _take(TrainBatchSampler(TrainSchedule(g, 8, 0), 0, accumulate), 40 * accumulate)
        for start in (0, 1, 7, 13, 39):  # 13 crosses an epoch boundary (57 // 8 = 6 per epoch)
            resumed = _take(
                TrainBatchSampler(TrainSchedule(g, 8, 0), start, accumulate),
                (40 - start) * accumulate,
            )
            assert resumed == full[start * accumulate :]


@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_union_over_ranks_and_micro_batches_is_the_single_process_batch(accumulate):
    g = _groups(91, 3)
    schedule = TrainSchedule(g, 16, seed=11)
    single = _take(TrainBatchSampler(schedule), 12)  # one micro-batch = one global batch
    for world in (1, 2, 4):
        if 16 % (world * accumulate):
            continue
        per_rank = [
            _take(
                TrainBatchSampler(TrainSchedule(g, 16, 11), 0, accumulate, r, world),
                12 * accumulate,
            )
            for r in range(world)
        ]
        for step in range(12):
            union = []
            for micro in range(accumulate):
                for r in range(world):
                    union.extend(per_rank[r][step * accumulate + micro])
            # Same images *and* the same augmentation seeds, in the same positions.
            assert union == single[step]


def test_batches_are_one_orientation_and_epochs_cover_the_groups():
    g = np.random.default_rng(4).permutation(np.array([0] * 101 + [1] * 99))
    s = TrainSchedule(g, 4, seed=0)
    assert s.batches_per_epoch == (g == 0).sum() // 4 + (g == 1).sum() // 4
    batches = s.epoch_batches(0)
    for b in batches:
        assert len(set(g[b].tolist())) == 1
    used = batches.reshape(-1)
    assert len(set(used.tolist())) == len(used)  # no repeat within an epoch
    # Left-over images (at most batch-1 per group) change from epoch to epoch.
    left0 = set(range(200)) - set(used.tolist())
    left1 = set(range(200)) - set(s.epoch_batches(1).reshape(-1).tolist())
    assert len(left0) == 1 + 3 and len(left1) == 4 and left0 != left1


def test_without_grouping_every_image_is_used_each_epoch():
    s = TrainSchedule(np.zeros(40, np.int64), 8, seed=3)
    for epoch in range(3):
        assert sorted(s.epoch_batches(epoch).reshape(-1).tolist()) == list(range(40))


def test_tiny_dataset_repeats_images_to_fill_a_batch():
    s = TrainSchedule(np.array([0, 1, 1]), 8, seed=0)
    b = s.step_images(0)
    assert b.shape == (8,) and set(b.tolist()) == {0, 1, 2}
    # Groups too small for a whole batch each: mixed batches rather than nothing.
    s = TrainSchedule(np.array([0] * 5 + [1] * 5), 8, seed=0)
    assert s.batches_per_epoch == 1 and len(s.step_images(3)) == 8


def test_seeds_are_per_position_and_fresh_per_step():
    s = TrainSchedule(np.zeros(64, np.int64), 8, seed=0)
    a, b = s.step_seeds(0), s.step_seeds(1)
    assert len(set(a.tolist())) == 8 and not np.array_equal(a, b)
    assert np.array_equal(a, TrainSchedule(np.zeros(10, np.int64), 8, seed=0).step_seeds(0))


def test_invalid_splits_and_inputs_are_errors():
    with pytest.raises(ValueError, match="ims_per_batch=6 must divide"):
        micro_batch_slice(6, 1, 4, 0, 0)
    with pytest.raises(ValueError, match="ims_per_batch=8 must divide"):
        TrainBatchSampler(TrainSchedule(np.zeros(10), 8, 0), 0, 3, 0, 1)
    with pytest.raises(ValueError, match="empty"):
        TrainSchedule(np.zeros(0), 8, 0)
    with pytest.raises(ValueError):
        TrainBatchSampler(TrainSchedule(np.zeros(10), 8, 0), rank=2, world_size=2)


def test_aspect_groups_ties_are_landscape():
    assert aspect_groups(np.array([10, 20, 15]), np.array([20, 10, 15])).tolist() == [0, 1, 0]


@pytest.mark.parametrize("n", [0, 1, 5, 8, 13])
def test_shards_are_disjoint_contiguous_and_cover(n):
    for world in (1, 2, 3, 8):
        shards = [shard_range(n, r, world) for r in range(world)]
        flat = [i for s in shards for i in s]
        assert flat == list(range(n))
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1
