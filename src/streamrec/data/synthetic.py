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
_EXACT_CDF = 2_000_000


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
    rows_per_day: int | None = None  # set: a `timestamp` column, with a day/night rate
    _cdfs: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.vocab_sizes) != len(CRITEO_SPARSE):
            raise ValueError(f"need {len(CRITEO_SPARSE)} vocab sizes")
        # Exact Zipf CDFs up to _EXACT_CDF ids (8 bytes an id); beyond, the continuous
        # approximation (a 60M-id feature would otherwise hold a 480 MB table).
        self._cdfs = []
        for v in self.vocab_sizes:
            if v > _EXACT_CDF:
                self._cdfs.append(None)
                continue
            w = 1.0 / np.arange(1, v + 1, dtype=np.float64) ** self.zipf_a
            self._cdfs.append(np.cumsum(w / w.sum()))

    def _ranks(self, rng: np.random.Generator, column: int, n: int) -> np.ndarray:
        v = self.vocab_sizes[column]
        cdf = self._cdfs[column]
        if cdf is not None:
            return np.searchsorted(cdf, rng.random(n), side="right")
        # Inverse of F(x) = (x^(1−a) − 1) / (V^(1−a) − 1), x in [1, V]: ranks 0 .. V − 1.
        b = 1.0 - self.zipf_a
        x = (rng.random(n) * (float(v) ** b - 1.0) + 1.0) ** (1.0 / b)
        return x.astype(np.int64) - 1

    def ids(self, rng: np.random.Generator, column: int, n: int, first_row: int) -> np.ndarray:
        """int64 fids [n] for sparse column `column`, rows first_row .. first_row+n-1."""
        v = self.vocab_sizes[column]
        rank = np.minimum(self._ranks(rng, column, n), v - 1)
        shift = ((first_row + np.arange(n)) * self.drift_per_row).astype(np.int64)
        raw = ((rank + shift) % v).astype(np.uint64) + np.uint64(column << 40)
        return (raw * _SCRAMBLE).view(np.int64)

    def vocabulary_fids(self, column: int, ids: np.ndarray) -> np.ndarray:
        """The fids of column `column`'s ids `ids` (each in [0, vocab_sizes[column])): every
        fid `ids()` can draw for that column, when `ids` is all of that range."""
        raw = ids.astype(np.uint64) + np.uint64(column << 40)
        return (raw * _SCRAMBLE).view(np.int64)

    def record_batches(
        self, num_rows: int, batch_rows: int = 65536, first_row: int = 0
    ) -> Iterator[pa.RecordBatch]:
        """Rows first_row .. first_row + num_rows − 1 (a different `first_row` draws another
        stretch of the stream: the hot set has drifted there)."""
        rng = np.random.default_rng(self.seed if first_row == 0 else (self.seed, first_row))
        for offset in range(0, num_rows, batch_rows):
            start = first_row + offset
            n = min(batch_rows, num_rows - offset)
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
            names = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]
            if self.rows_per_day:
                columns.append(pa.array(self.event_times(start, n)))
                names.append("timestamp")
            yield pa.RecordBatch.from_arrays(columns, names=names)

    def event_times(self, first_row: int, n: int) -> np.ndarray:
        """Event time (int64 seconds from 0) of rows first_row .. first_row + n − 1 when
        `rows_per_day` rows arrive per simulated day, more by day than by night: the hourly
        rate follows 1 + 0.6·sin(2π(hour − 9)/24) (a trough at 3:00, a peak at 15:00)."""
        hours = np.arange(24)
        rate = 1.0 + 0.6 * np.sin(2 * np.pi * (hours - 9) / 24)
        per_hour = rate / rate.sum() * self.rows_per_day
        ends = np.cumsum(per_hour)  # rows of the day by the end of each hour
        row = first_row + np.arange(n, dtype=np.int64)
        day, within = np.divmod(row, self.rows_per_day)
        hour = np.minimum(np.searchsorted(ends, within, side="right"), 23)
        start = ends[hour] - per_hour[hour]
        seconds = hour * 3600 + (within - start) / per_hour[hour] * 3600
        return day * 86400 + seconds.astype(np.int64)
