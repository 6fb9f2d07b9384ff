"""Seeded synthetic Criteo-shaped data: Zipf-distributed ids with drifting popularity.

For scale and speed tests only — quality is always measured on real data. Each of the 26 sparse
columns draws ranks from a Zipf(`zipf_a`) law over `vocab_sizes[c]` ids; popularity drifts
because rank r maps to id (r + drift·t) mod V, so the hot set slowly moves as rows go by. Ids are
scrambled by an odd multiplier so that they look like real hashed fids. Labels follow a logistic
model of a few id effects and dense values, so models have something to learn.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from streamrec.data.records import CRITEO_DENSE, CRITEO_SPARSE

_SCRAMBLE = np.uint64(0x9E3779B97F4A7C15)


def _default_vocab() -> list[int]:
    # Criteo Kaggle's cardinalities, capped at 1M rows (the DLRM benchmark setting).
    sizes = [
        1460,
        583,
        10131227,
        2202608,
        305,
        24,
        12517,
        633,
        3,
        93145,
        5683,
        8351593,
        3194,
        27,
        14992,
        5461306,
        10,
        5652,
        2173,
        4,
        7046547,
        18,
        15,
        286181,
        105,
        142572,
    ]
    return [min(s, 1_000_000) for s in sizes]


@dataclass
class SyntheticCriteo:
    seed: int = 0
    zipf_a: float = 1.05
    vocab_sizes: list[int] = field(default_factory=_default_vocab)
    drift_per_row: float = 1e-3
    _cdfs: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.vocab_sizes) != len(CRITEO_SPARSE):
            raise ValueError(f"need {len(CRITEO_SPARSE)} vocab sizes")
        self._cdfs = []
        for v in self.vocab_sizes:
            w = 1.0 / np.arange(1, v + 1, dtype=np.float64) ** self.zipf_a
            self._cdfs.append(np.cumsum(w / w.sum()))

    def ids(self, rng: np.random.Generator, column: int, n: int, first_row: int) -> np.ndarray:
        """int64 fids [n] for sparse column `column`, rows first_row .. first_row+n-1."""
        v = self.vocab_sizes[column]
        rank = np.searchsorted(self._cdfs[column], rng.random(n), side="right")
        rank = np.minimum(rank, v - 1)
        shift = ((first_row + np.arange(n)) * self.drift_per_row).astype(np.int64)
        raw = ((rank + shift) % v).astype(np.uint64) + np.uint64(column << 40)
        return (raw * _SCRAMBLE).view(np.int64)

    def record_batches(self, num_rows: int, batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
        rng = np.random.default_rng(self.seed)
        for start in range(0, num_rows, batch_rows):
            n = min(batch_rows, num_rows - start)
            dense = rng.exponential(3.0, size=(n, len(CRITEO_DENSE))).round()
            sparse = [self.ids(rng, c, n, start) for c in range(len(CRITEO_SPARSE))]
            logit = -1.3 + 0.15 * np.log1p(dense[:, 0]) - 0.1 * np.log1p(dense[:, 3])
            for c in (0, 5, 13):
                effect = (sparse[c].view(np.uint64) >> np.uint64(40)) % np.uint64(1000)
                logit += (effect.astype(np.float64) / 1000.0 - 0.5) * 2.0
            label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
            columns = [pa.array(label)]
            columns += [pa.array(dense[:, i]) for i in range(len(CRITEO_DENSE))]
            columns += [pa.array(s) for s in sparse]
            yield pa.RecordBatch.from_arrays(
                columns, names=["label", *CRITEO_DENSE, *CRITEO_SPARSE]
            )
