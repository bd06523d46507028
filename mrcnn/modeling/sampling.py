"""Balanced sampling of positive and negative training examples, batched over images.

Semantics of torchvision's BalancedPositiveNegativeSampler, per row (image):
num_pos = min(#positives, int(batch_size_per_image * positive_fraction)),
num_neg = min(#negatives, batch_size_per_image - num_pos), each drawn uniformly without
replacement. Instead of one randperm per image (a host round trip each) every candidate gets a
uniform random key and the rows' top keys are taken with one `topk`, which draws the same
distribution of subsets with no host synchronization.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _take_random(candidates: Tensor, keys: Tensor, counts: Tensor, k_max: int) -> Tensor:
    """bool [..., N]: `counts[...]` of the `candidates` with the largest keys (keys in [0, 1))."""
    n = candidates.shape[-1]
    k = min(k_max, n)
    out = torch.zeros_like(candidates)
    if k == 0:
        return out
    ranked = torch.where(candidates, keys, torch.full_like(keys, -1.0))
    top = ranked.topk(k, dim=-1).indices
    take = torch.arange(k, device=keys.device) < counts[..., None]
    return out.scatter(-1, top, take)


def sample_pos_neg(
    labels: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """labels: int [..., N] per candidate: >= 1 positive, 0 negative, < 0 ignored (never drawn).
    Returns (positive, negative) bool masks [..., N] of the sampled candidates; each row holds
    at most `batch_size_per_image` of them. `generator` (on labels' device) makes the draw
    reproducible; None uses the global RNG.
    """
    pos = labels >= 1
    neg = labels == 0
    max_pos = int(batch_size_per_image * positive_fraction)
    num_pos = pos.sum(-1).clamp(max=max_pos)
    num_neg = torch.minimum(neg.sum(-1), batch_size_per_image - num_pos)
    keys = torch.rand(labels.shape, generator=generator, device=labels.device)
    return (
        _take_random(pos, keys, num_pos, max_pos),
        _take_random(neg, keys, num_neg, batch_size_per_image),
    )
