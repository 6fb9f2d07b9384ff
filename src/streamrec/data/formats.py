"""One entry point for every input format: `read_records(path, format)` → record batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from streamrec.data.errors import DataError, DeadLetter
from streamrec.data.libsvm import read_libsvm
from streamrec.data.movielens import load_ml100k, load_ml_latest_small
from streamrec.data.records import read_criteo, read_csv, read_parquet
from streamrec.kinds import arrow_type

FORMATS = (
    "criteo", "csv", "tsv", "parquet", "libsvm", "libfm", "libffm", "ml-100k", "ml-latest-small"
)


def guess_format(path: str | Path) -> str:
    name = str(path).lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith(".csv"):
        return "csv"
    for fmt in ("libffm", "libfm", "libsvm"):
        if name.endswith(f".{fmt}"):
            return fmt
    raise DataError(
        f"{path}: cannot tell the format from the name; pass --format ({', '.join(FORMATS)})"
    )


def read_records(
    path: str | Path | None,
    fmt: str | None = None,
    dead: DeadLetter | None = None,
    batch_rows: int = 65536,
    kinds: dict[str, str] | None = None,
    fields: dict[str, list[int]] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream `path` as Arrow record batches. MovieLens formats load whole (they are small) and
    come out as the CTR table described in `streamrec.data.movielens`.

    `kinds` (column → int / float / string, as a model recorded them or a schema declares them)
    pins those columns' types instead of guessing them from the file: a column of ids such as
    '04258293' stays text in a file whose values happen to be all digits, so the same row gets
    the same fids from any file. `fields`: the fields of a libsvm / libfm / libffm file
    (`data.fields`)."""
    fmt = fmt or guess_format(path)
    pinned = {c: arrow_type(k) for c, k in (kinds or {}).items() if not k.startswith("list<")}
    if fmt == "criteo":
        yield from read_criteo(path, dead)
    elif fmt == "csv":
        yield from read_csv(path, dead, column_types=pinned)
    elif fmt == "tsv":
        yield from read_csv(path, dead, delimiter="\t", column_types=pinned)
    elif fmt == "parquet":
        for batch in read_parquet(path, batch_rows):
            yield _cast_to(batch, pinned, path)
    elif fmt in ("libsvm", "libfm", "libffm"):
        yield from read_libsvm(path, dead, ffm=fmt == "libffm", fields=fields)
    elif fmt == "ml-100k":
        yield from load_ml100k(path).to_batches(batch_rows)
    elif fmt == "ml-latest-small":
        if path is None:
            raise DataError("ml-latest-small needs a path (the folder or its ratings.csv)")
        yield from load_ml_latest_small(path).to_batches(batch_rows)
    else:
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def known_row_count(path: str | Path | None, fmt: str | None = None) -> int | None:
    """Rows of `path` when the file says so without being read (a Parquet footer), for a
    progress bar's total; None for text formats, where only reading them tells."""
    try:
        if path is None or (fmt or guess_format(path)) != "parquet" or Path(path).is_dir():
            return None
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    except (DataError, OSError, pa.ArrowException):
        return None  # the reader itself reports what is wrong with the file


def _cast_to(batch: pa.RecordBatch, types: dict[str, pa.DataType], path: object) -> pa.RecordBatch:
    """The batch with the pinned columns in their declared types."""
    names = batch.schema.names
    wrong = [c for c, t in types.items() if c in names and batch.schema.field(c).type != t]
    if not wrong:
        return batch
    columns = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if field.name in wrong:
            try:
                column = column.cast(types[field.name])
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise DataError(
                    f"{path}: column {field.name!r} is {field.type}, the model reads "
                    f"{types[field.name]} ({e})"
                ) from None
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
