"""One entry point for every input format: `read_records(path, format)` → record batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from streamrec.data.errors import DataError, DeadLetter
from streamrec.data.movielens import load_ml100k, load_ml_latest_small
from streamrec.data.records import read_criteo, read_csv, read_parquet

FORMATS = ("criteo", "csv", "tsv", "parquet", "ml-100k", "ml-latest-small")


def guess_format(path: str | Path) -> str:
    name = str(path).lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith(".csv"):
        return "csv"
    raise DataError(
        f"{path}: cannot tell the format from the name; pass --format ({', '.join(FORMATS)})"
    )


def read_records(
    path: str | Path | None,
    fmt: str | None = None,
    dead: DeadLetter | None = None,
    batch_rows: int = 65536,
) -> Iterator[pa.RecordBatch]:
    """Stream `path` as Arrow record batches. MovieLens formats load whole (they are small) and
    come out as the CTR table described in `streamrec.data.movielens`."""
    fmt = fmt or guess_format(path)
    if fmt == "criteo":
        yield from read_criteo(path, dead)
    elif fmt == "csv":
        yield from read_csv(path, dead)
    elif fmt == "tsv":
        yield from read_csv(path, dead, delimiter="\t")
    elif fmt == "parquet":
        yield from read_parquet(path, batch_rows)
    elif fmt == "ml-100k":
        yield from load_ml100k(path).to_batches(batch_rows)
    elif fmt == "ml-latest-small":
        if path is None:
            raise DataError("ml-latest-small needs a path (the folder or its ratings.csv)")
        yield from load_ml_latest_small(path).to_batches(batch_rows)
    else:
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
