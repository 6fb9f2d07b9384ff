"""Streaming item frequency: log q(item) for the log-Q correction of in-batch softmax.

In-batch softmax uses the batch's other items as negatives, so popular items are negatives far
more often than the uniform softmax assumes; subtracting log q(item), the log probability that
the item is sampled, corrects the bias (Yi et al. 2019, "Sampling-Bias-Corrected Neural Modeling
for Large Corpus Item Recommendations"). As in that paper, q is estimated from the stream itself —
offline epochs and online training alike, with no catalog pass — in a hashed array of decayed
counts: collisions only add frequency, the memory is fixed (`buckets` × 4 bytes), and the decay
(`half_life_steps`) lets the estimate follow a catalog whose popularity moves.

Only ratios matter: a constant added to every item's log q cancels in each row's softmax.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64: a multiplicative hash


class ItemFrequency(nn.Module):
    """counts: FloatTensor [buckets], decayed item counts; saved with the model (its
    `dense.safetensors`), so a resumed or online run goes on from the estimate it had."""

    def __init__(self, buckets: int = 1 << 17, half_life_steps: float = 10_000.0) -> None:
        super().__init__()
        if buckets < 1 or buckets & (buckets - 1):
            raise ValueError(f"item frequency buckets must be a power of two, got {buckets}")
        if half_life_steps <= 0:
            raise ValueError(f"item frequency half_life_steps must be > 0, got {half_life_steps}")
        self.shift = 64 - int(math.log2(buckets))
        self.decay = 0.5 ** (1.0 / half_life_steps)
        self.register_buffer("counts", torch.zeros(buckets))

    def bucket(self, ids: torch.Tensor) -> torch.Tensor:
        """LongTensor [N] of ids → their buckets [N] (the top bits of a multiplicative hash)."""
        if self.shift == 64:
            return torch.zeros_like(ids)
        hashed = ids.to(torch.int64) * _GOLDEN  # wraps modulo 2^64, as intended
        return (hashed >> self.shift) & ((1 << (64 - self.shift)) - 1)

    @torch.no_grad()
    def observe(self, ids: torch.Tensor) -> None:
        """One training batch's items: decay every count by one step, then count these."""
        self.counts.mul_(self.decay)
        self.counts.index_add_(0, self.bucket(ids), torch.ones(ids.numel()))

    @torch.no_grad()
    def seed(self, ids: torch.Tensor) -> None:
        """Start the estimate from a known sample of items (an offline job's training split),
        so the first steps are corrected as well as the last."""
        self.counts.zero_()
        self.counts.index_add_(0, self.bucket(ids), torch.ones(ids.numel()))

    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        """FloatTensor [N]: log of each id's share of the counts (an unseen id: the smallest
        share seen, never −inf)."""
        counts = self.counts[self.bucket(ids)]
        total = self.counts.sum().clamp_min(1e-12)
        floor = self.counts[self.counts > 0].min() if bool((self.counts > 0).any()) else total
        return torch.log(torch.maximum(counts, floor) / total)
