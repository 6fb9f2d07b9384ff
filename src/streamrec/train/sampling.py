"""Negative down-sampling: keep every positive and a fraction w of the negatives.

Training on the sampled data biases predictions upward; `RankingModel.predict` re-calibrates
with q = p / (p + (1 − p) / w), so calibration (Σq / Σy) stays ≈ 1 on the full distribution.
The draw is a pure function of (seed, step): resumed runs sample the same rows.
"""

from __future__ import annotations

import numpy as np
import torch

from streamrec.batch import Batch


def downsample_negatives(batch: Batch, rate: float, seed: int, step: int) -> Batch:
    """Rows whose first-task label is 0 are kept with probability `rate`."""
    if rate >= 1.0:
        return batch
    rng = np.random.default_rng([seed, step])
    negative = batch.labels[:, 0].numpy() < 0.5
    keep = ~negative | (rng.random(batch.size) < rate)
    index = np.flatnonzero(keep)
    if index.size == batch.size:
        return batch
    return _take(batch, torch.from_numpy(index))


def _take(batch: Batch, index: torch.Tensor) -> Batch:
    from streamrec.batch import JaggedIds

    sparse = {}
    for name, ids in batch.sparse.items():
        lengths = ids.lengths()[index]
        starts = ids.offsets[:-1][index]
        rows = torch.repeat_interleave(torch.arange(index.numel()), lengths)
        within = torch.arange(int(lengths.sum())) - (torch.cumsum(lengths, 0) - lengths)[rows]
        positions = starts[rows] + within
        w = ids.weights[positions] if ids.weights is not None else None
        sparse[name] = JaggedIds.from_lengths(ids.values[positions], lengths, w)
    return Batch(
        batch.labels[index],
        batch.dense[index],
        sparse,
        None if batch.group_ids is None else batch.group_ids[index],
        None if batch.timestamps is None else batch.timestamps[index],
        None if batch.targets is None else batch.targets[index],
    )
