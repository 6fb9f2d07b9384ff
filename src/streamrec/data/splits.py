"""Train / validation record streams from a job's `data:` section.

* File formats (criteo, csv, tsv, parquet): `train` is one file, `valid` a list of files; each
  pass re-reads them in bounded memory.
* MovieLens formats with `split: per_user_time`: the log is loaded once and split per user by
  time (each user's last `test_fraction` of interactions → validation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain

import pyarrow as pa

from streamrec.config import DataConfig
from streamrec.data.errors import DataError, DeadLetter
from streamrec.data.formats import read_records
from streamrec.data.movielens import add_history, per_user_time_split

RecordSource = Callable[[], Iterable[pa.RecordBatch]]


@dataclass
class DatasetSplits:
    train: RecordSource
    valid: RecordSource | None

    def sample(self, rows: int = 100_000) -> pa.Table:
        """The first `rows` training rows (for fitting schema statistics)."""
        taken: list[pa.RecordBatch] = []
        have = 0
        for batch in self.train():
            taken.append(batch)
            have += batch.num_rows
            if have >= rows:
                break
        if not taken:
            raise DataError("the training data is empty")
        return pa.Table.from_batches(taken).slice(0, rows)


def open_splits(cfg: DataConfig, dead: DeadLetter | None = None) -> DatasetSplits:
    dead = dead if dead is not None else DeadLetter(cfg.dead_letter, strict=cfg.strict)
    if cfg.split == "per_user_time":
        table = pa.Table.from_batches(list(read_records(cfg.train, cfg.format, dead)))
        if cfg.history_length:
            table = add_history(table, cfg.history_length)
        train, valid = per_user_time_split(table, cfg.test_fraction)
        return DatasetSplits(lambda: train.to_batches(65536), lambda: valid.to_batches(65536))
    if cfg.train is None and cfg.format not in ("ml-100k",):
        raise DataError("data.train is not set: name the training file in the config")

    def train_source() -> Iterator[pa.RecordBatch]:
        return read_records(cfg.train, cfg.format, dead)

    valid_source = None
    if cfg.valid:

        def valid_source() -> Iterator[pa.RecordBatch]:
            return chain.from_iterable(read_records(p, cfg.format, dead) for p in cfg.valid)

    return DatasetSplits(train_source, valid_source)
