"""sampling.sample_pos_neg: torchvision's balanced sampler's counts and distribution, batched."""

from __future__ import annotations

import torch

from mrcnn.modeling.sampling import sample_pos_neg


def test_sampler_counts_and_membership():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(-1, 4, (3, 1000), generator=g)
    labels[1, :] = torch.where(labels[1] > 0, torch.zeros_like(labels[1]), labels[1])  # no pos
    labels[2, :10] = 1  # few negatives below
    labels[2, 10:] = -1
    pos, neg = sample_pos_neg(labels, 256, 0.25, g)
    assert not (pos & neg).any()
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()
    n_pos, n_neg = pos.sum(1).tolist(), neg.sum(1).tolist()
    n_pos_avail = (labels >= 1).sum(1).tolist()
    n_neg_avail = (labels == 0).sum(1).tolist()
    for i in range(3):
        exp_pos = min(n_pos_avail[i], 64)
        assert n_pos[i] == exp_pos
        assert n_neg[i] == min(n_neg_avail[i], 256 - exp_pos)
    assert n_pos[1] == 0 and n_neg[1] == 256  # all negatives fill the batch
    assert n_pos[2] == 10 and n_neg[2] == 0


def test_sampler_all_ignored_and_empty():
    pos, neg = sample_pos_neg(torch.full((2, 50), -1), 16, 0.5)
    assert not pos.any() and not neg.any()
    pos, neg = sample_pos_neg(torch.zeros((2, 0), dtype=torch.int64), 16, 0.5)
    assert pos.shape == (2, 0) and neg.shape == (2, 0)


def test_sampler_uniform_and_reproducible():
    labels = torch.ones(1, 20, dtype=torch.int64)
    counts = torch.zeros(20)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        pos, _ = sample_pos_neg(labels, 10, 0.5, g)  # 5 of 20
        counts += pos[0].float()
    # each element drawn with probability 1/4: 100 expected of 400, sd ~8.7
    assert (counts - 100).abs().max() < 40
    a = sample_pos_neg(labels, 10, 0.5, torch.Generator().manual_seed(7))
    b = sample_pos_neg(labels, 10, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
