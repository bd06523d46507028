"""Batched NMS in bounded segments: ops.segmented_batched_nms (what ops.batched_nms runs for
large CUDA inputs) equals torchvision's batched_nms on multi-image, multi-class inputs, ties
included; each kernel call holds whole categories and at most max_chunk boxes unless one
category alone is larger."""

from __future__ import annotations

import pytest
import torch
import torchvision

import ops

compiled = pytest.mark.skipif(not ops.info()["compiled"], reason="ops._C is not built")


def _detections(g: torch.Generator, images: int, classes: int, per: int, ties: bool):
    """Boxes of `images` images x `classes` classes, `per` each on average, clustered so that
    NMS suppresses; group = image * classes + class, as postprocess.box_detections forms it."""
    n = images * classes * per
    centres = torch.rand(n // 8 + 1, 2, generator=g) * 300
    c = centres[torch.randint(0, centres.shape[0], (n,), generator=g)]
    c = c + torch.randn(n, 2, generator=g) * 6
    wh = torch.rand(n, 2, generator=g) * 40 + 4
    boxes = torch.cat([c - wh / 2, c + wh / 2], 1)
    if ties:
        scores = torch.randint(0, 10, (n,), generator=g).float() / 10  # many exact ties
    else:
        scores = torch.randperm(n, generator=g).float() / n
    img = torch.randint(0, images, (n,), generator=g)
    cls = torch.randint(1, classes + 1, (n,), generator=g)
    boxes[: n // 50, 2:] = boxes[: n // 50, :2]  # degenerate boxes (NaN IoU among them)
    return boxes, scores, img * (classes + 1) + cls


def _ranked(keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    # Decreasing score, equal scores by ascending index: the order ops promises.
    k = torch.sort(keep).values
    return k[torch.sort(scores[k], descending=True, stable=True).indices]


@compiled
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("max_chunk", [1, 37, 500, 100000])
def test_segmented_equals_torchvision(ties, max_chunk):
    g = torch.Generator().manual_seed(11 + max_chunk + ties)
    boxes, scores, groups = _detections(g, images=3, classes=7, per=60, ties=ties)
    got = ops.segmented_batched_nms(boxes, scores, groups, 0.5, max_chunk)
    want = torchvision.ops.batched_nms(boxes, scores, groups, 0.5)
    # Greedy NMS within a category sees ties in input order in both (stable sorts), so the kept
    # sets agree exactly; torchvision's final merge sort is not stable, so ties may be ordered
    # differently there: ours is decreasing score, then ascending index.
    assert torch.equal(torch.sort(got).values, torch.sort(want).values)
    assert torch.equal(got, _ranked(got, scores))
    if not ties:
        assert torch.equal(got, want)
    assert torch.equal(got, ops.batched_nms(boxes, scores, groups, 0.5))


@compiled
def test_segmented_large_batch_one_dominant_category():
    # ~6000 boxes, one category larger than the chunk: it is one segment on its own.
    g = torch.Generator().manual_seed(12)
    boxes, scores, groups = _detections(g, images=2, classes=3, per=500, ties=False)
    groups[:2500] = 4
    got = ops.segmented_batched_nms(boxes, scores, groups, 0.6, 1000)
    assert torch.equal(got, torchvision.ops.batched_nms(boxes, scores, groups, 0.6))


def test_chunks_hold_whole_categories_within_the_bound():
    counts = [5, 3, 9, 1, 1, 12, 2, 7]
    for bound in (1, 4, 9, 10, 100):
        chunks = ops._chunks_of(counts, bound)
        assert sum(chunks) == sum(counts)
        # Each chunk is a run of whole categories ...
        ends, acc = set(), 0
        for c in counts:
            acc += c
            ends.add(acc)
        acc = 0
        for c in chunks:
            acc += c
            assert acc in ends
        # ... within the bound, unless it is a single category larger than the bound.
        assert all(c <= bound or c in counts for c in chunks)


@compiled
def test_segmented_empty_and_single():
    e = ops.segmented_batched_nms(torch.empty(0, 4), torch.empty(0), torch.empty(0), 0.5, 8)
    assert e.shape == (0,) and e.dtype == torch.int64
    one = ops.segmented_batched_nms(
        torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.3]), torch.tensor([5]), 0.5, 8
    )
    assert one.tolist() == [0]
