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
    return batch.take(torch.from_numpy(index))

