"""Train / validation record streams from a job's `data:` section.

* File formats (criteo, csv, tsv, parquet): `train` is one file, `valid` a list of files; each
  pass re-reads them in bounded memory.
* MovieLens formats with `split: per_user_time`: the log is loaded once and split per user by
  time (each user's last `test_fraction` of interactions → validation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from streamrec.config import DataConfig
from streamrec.data.errors import DataError, DeadLetter
from streamrec.data.formats import read_records
from streamrec.data.movielens import add_history, per_user_time_split

if TYPE_CHECKING:
    from streamrec.schema import Label

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


def open_splits(
    cfg: DataConfig,
    dead: DeadLetter | None = None,
    kinds: dict[str, str] | None = None,
    labels: list[Label] | None = None,
) -> DatasetSplits:
    """`kinds` pins column types while reading (`read_records`); it is read at every pass, so
    a trainer can add the kinds it fitted on the first sample for every read after it.
    `labels`: every row's labels are checked as the files stream (`_labelled`)."""
    dead = dead if dead is not None else DeadLetter(cfg.dead_letter, strict=cfg.strict)
    kinds = kinds if kinds is not None else {}
    if cfg.split == "per_user_time":
        table = pa.Table.from_batches(list(read_records(cfg.train, cfg.format, dead)))
        if cfg.history_length:
            table = add_history(table, cfg.history_length)
        train, valid = per_user_time_split(table, cfg.test_fraction)
        return DatasetSplits(lambda: train.to_batches(65536), lambda: valid.to_batches(65536))
    if cfg.train is None and cfg.format not in ("ml-100k",):
        raise DataError("data.train is not set: name the training file in the config")

    def rows_of(path: str) -> Iterator[pa.RecordBatch]:
        batches = read_records(path, cfg.format, dead, kinds=kinds, fields=cfg.fields)
        return _labelled(batches, path, labels) if labels else batches

    def train_source() -> Iterator[pa.RecordBatch]:
        return rows_of(cfg.train)

    valid_source = None
    if cfg.valid:

        def valid_source() -> Iterator[pa.RecordBatch]:
            return chain.from_iterable(rows_of(p) for p in cfg.valid)

    return DatasetSplits(train_source, valid_source)


def _labelled(
    batches: Iterator[pa.RecordBatch], path: str, labels: list[Label]
) -> Iterator[pa.RecordBatch]:
    """The batches, each row's labels checked by its rule as the file streams: a label that is
    missing or that the rule cannot map stops the run with the file, row and value."""
    with closing(batches):
        row = 0
        for batch in batches:
            for lab in labels:
                if lab.name not in batch.schema.names:
                    continue  # a missing column is check_columns' (and the schema's) error
                column = batch.column(lab.name)
                _, bad = lab.to_binary(column)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    value = column[i].as_py()
                    shown = "missing" if value is None else repr(value)
                    raise DataError(
                        f"{path}: data row {row + i + 1}: label {lab.name!r} is {shown} "
                        f"({int(bad.sum())} such rows in this block): {lab.rule_hint()}"
                    )
            row += batch.num_rows
            yield batch


def check_columns(cfg: DataConfig, required: list[str], kinds: dict[str, str]) -> None:
    """Open every file the config names and check its columns before any training: a
    validation file without the label column is an error now, naming the file — not after a
    full epoch. (Reads one block of each file.)"""
    if cfg.split == "per_user_time" or cfg.format in ("ml-100k", "ml-latest-small"):
        return  # built by the loader: every column is there by construction
    for path in [cfg.train, *cfg.valid]:
        if path is None:
            continue
        first_rows = read_records(path, cfg.format, DeadLetter(), kinds=kinds, fields=cfg.fields)
        with closing(first_rows) as batches:
            first = next(batches, None)
        if first is None:
            raise DataError(f"{path}: no rows")
        missing = [c for c in required if c not in first.schema.names]
        if missing:
            raise DataError(
                f"{path}: no column(s) {', '.join(missing)} — the schema reads them; the file "
                f"has {', '.join(first.schema.names)}"
            )
