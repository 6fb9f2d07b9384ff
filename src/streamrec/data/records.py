"""Streaming readers: a file → Arrow record batches, in bounded memory, bad rows dead-lettered.

Every reader yields `pyarrow.RecordBatch`es of at most `chunk_bytes` of input at a time and
reports each record it cannot parse to a `DeadLetter` with the file and 1-based line number.
Formats: Criteo TSV (no header: label, I1–I13, C1–C26), CSV with a header, and Parquet.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from streamrec.data.errors import DataError, DeadLetter
from streamrec.data.text_columns import kind_of, majority_kind, parse_as

CRITEO_DENSE = [f"I{i}" for i in range(1, 14)]
CRITEO_SPARSE = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]

_NUMBER = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"


def check_readable(path: str | Path) -> Path:
    """A clear one-line error for a missing or unreadable input file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a file")
    try:
        with p.open("rb") as fh:
            fh.read(1)
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror})") from None
    return p


class _LineTracker:
    """Maps the index of a parsed row back to its line in the file.

    pyarrow's invalid-row handler tells us the lines it skipped; the parsed rows fill the other
    lines in order. With skipped lines s_0 < s_1 < …, parsed row g (0-based) sits on line
    (g + 1) + #{j : s_j − j ≤ g + 1}.
    """

    def __init__(self, first_line: int = 1) -> None:
        self.first_line = first_line
        self.skipped_adjusted: list[int] = []
        self.rows_seen = 0
        self.strict_error: DataError | None = None

    def skipped(self, line: int) -> None:
        rank = line - self.first_line + 1  # position among data lines
        self.skipped_adjusted.append(rank - len(self.skipped_adjusted))

    def lines_of(self, row_indices: np.ndarray) -> np.ndarray:
        ranks = row_indices + 1
        adj = np.asarray(self.skipped_adjusted, dtype=np.int64)
        return ranks + np.searchsorted(adj, ranks, side="right") + self.first_line - 1


def _invalid_row_handler(path: Path, dead: DeadLetter, lines: _LineTracker):
    """pyarrow calls this for a row with the wrong field count (numbers need use_threads=False).

    An exception raised in here would be swallowed by pyarrow, so strict mode returns "error"
    and leaves the message in `lines.strict_error` for `_batches` to raise."""

    def handle(row) -> str:
        reason = f"expected {row.expected_columns} fields, found {row.actual_columns}"
        if dead.strict:
            try:
                dead.reject(str(path), row.number, reason, row.text)
            except DataError as e:
                lines.strict_error = e
            return "error"
        if row.number is not None:
            lines.skipped(row.number)
        dead.reject(str(path), row.number, reason, row.text)
        return "skip"

    return handle


def _reject_rows(
    batch: pa.RecordBatch,
    bad: np.ndarray,
    reasons: list[str],
    path: Path,
    dead: DeadLetter,
    lines: _LineTracker,
    first_index: int,
) -> pa.RecordBatch:
    idx = np.flatnonzero(bad)
    line_numbers = lines.lines_of(idx + first_index)
    for i, line, reason in zip(idx, line_numbers, reasons, strict=True):
        raw = "\t".join(
            "" if v is None else str(v) for v in batch.slice(i, 1).to_pylist()[0].values()
        )
        dead.reject(str(path), int(line), reason, raw)
    return batch.filter(pa.array(~bad))


def read_criteo(
    path: str | Path, dead: DeadLetter | None = None, chunk_bytes: int = 4 << 20
) -> Iterator[pa.RecordBatch]:
    """Criteo TSV → batches with label (int8), I1–I13 (float64, null = missing), C1–C26 (string,
    null = missing). Wrong field counts, non-numeric I values and labels other than 0/1 are
    dead-lettered with their line."""
    path = check_readable(path)
    dead = dead if dead is not None else DeadLetter()
    lines = _LineTracker()
    reader = _open_csv(
        path,
        lines,
        read_options=pacsv.ReadOptions(
            column_names=CRITEO_COLUMNS, block_size=chunk_bytes, use_threads=False
        ),
        parse_options=pacsv.ParseOptions(
            delimiter="\t",
            quote_char=False,
            invalid_row_handler=_invalid_row_handler(path, dead, lines),
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in CRITEO_COLUMNS},
            strings_can_be_null=True,
            null_values=[""],
        ),
    )
    for raw in _batches(reader, path, lines):
        first = lines.rows_seen
        lines.rows_seen += raw.num_rows
        batch, bad, reasons = _convert_criteo(raw)
        if bad is not None:
            batch = _reject_rows(raw, bad, reasons, path, dead, lines, first)
            batch, _, _ = _convert_criteo(batch)
        if batch.num_rows:
            yield batch


def _convert_criteo(raw: pa.RecordBatch):
    """Cast a string batch; returns (batch, bad_mask or None, reasons for the bad rows)."""
    try:
        label = pc.cast(raw.column("label"), pa.int8())
        if pc.any(pc.invert(pc.is_in(label, pa.array([0, 1], pa.int8())))).as_py():
            raise pa.ArrowInvalid("label")
        dense = [pc.cast(raw.column(c), pa.float64()) for c in CRITEO_DENSE]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return raw, *_find_bad_criteo_rows(raw)
    columns = [label, *dense, *(raw.column(c) for c in CRITEO_SPARSE)]
    schema = pa.schema(
        [("label", pa.int8())]
        + [(c, pa.float64()) for c in CRITEO_DENSE]
        + [(c, pa.string()) for c in CRITEO_SPARSE]
    )
    return pa.RecordBatch.from_arrays(columns, schema=schema), None, []


def _find_bad_criteo_rows(raw: pa.RecordBatch) -> tuple[np.ndarray, list[str]]:
    n = raw.num_rows
    bad = np.zeros(n, bool)
    reason = np.full(n, "", dtype=object)
    label = raw.column("label")
    ok_label = pc.fill_null(pc.is_in(label, pa.array(["0", "1"])), False)
    label_bad = ~np.asarray(ok_label.to_numpy(zero_copy_only=False))
    reason[label_bad] = "label must be 0 or 1"
    bad |= label_bad
    for c in CRITEO_DENSE:
        col = raw.column(c)
        ok = pc.or_(pc.is_null(col), pc.fill_null(pc.match_substring_regex(col, _NUMBER), False))
        col_bad = ~np.asarray(ok.to_numpy(zero_copy_only=False)) & ~bad
        reason[col_bad] = f"{c} is not a number"
        bad |= col_bad
    return bad, [str(r) for r in reason[bad]]


def _open_csv(path: Path, lines: _LineTracker, **options) -> pacsv.CSVStreamingReader:
    try:  # opening parses the first block, so errors can surface here already
        return pacsv.open_csv(path, **options)
    except pa.ArrowInvalid as e:
        raise (lines.strict_error or DataError(f"{path}: {e}")) from None


def _batches(
    reader: pacsv.CSVStreamingReader, path: Path, lines: _LineTracker
) -> Iterator[pa.RecordBatch]:
    """The reader's batches; the reader is closed when they end, fail or are abandoned (its
    read-ahead thread must not outlive Arrow at interpreter exit: that aborts the process)."""
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as e:
                raise (lines.strict_error or DataError(f"{path}: {e}")) from None
            yield batch
    finally:
        reader.close()


def read_csv(
    path: str | Path,
    dead: DeadLetter | None = None,
    chunk_bytes: int = 4 << 20,
    delimiter: str = ",",
    column_types: dict[str, pa.DataType] | None = None,
) -> Iterator[pa.RecordBatch]:
    """CSV with a header row; rows with the wrong field count are dead-lettered by line.

    Columns that `column_types` does not pin are read as text and take the kind most of their
    values in the first block have (`text_columns`: int, float, bool, else string); a row whose
    value does not parse as its column's kind is dead-lettered by line — one odd value never
    decides a column's kind. Columns of other kinds Arrow recognises (dates, timestamps) keep
    the type Arrow infers.
    """
    path = check_readable(path)
    dead = dead if dead is not None else DeadLetter()
    read_options = pacsv.ReadOptions(block_size=chunk_bytes, use_threads=False)
    inferred = _inferred_schema(path, read_options, delimiter)
    repeated = sorted({n for n in inferred.names if inferred.names.count(n) > 1})
    if repeated:
        raise DataError(
            f"{path}:1: the header names {repeated[:5]} more than once — is line 1 data, not "
            "column names? A Criteo file: use --format criteo (or data.format: criteo); "
            "otherwise give the file a header row naming each column once"
        )
    declared = {c: t for c, t in (column_types or {}).items() if c in inferred.names}
    # Read as text and parsed here: the pinned kinds we parse, and the columns whose kind the
    # majority decides; Arrow parses only what neither covers (dates, timestamps).
    known = {c: kind_of(t) for c, t in declared.items() if kind_of(t) is not None}
    text = [f.name for f in inferred
            if f.name in known or (f.name not in declared and _by_majority(f.type))]
    pinned = {c: t for c, t in declared.items() if c not in known}
    pinned.update({f.name: f.type for f in inferred
                   if f.name not in declared and f.name not in text})
    lines = _LineTracker(first_line=2)
    reader = _open_csv(
        path,
        lines,
        read_options=read_options,
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, invalid_row_handler=_invalid_row_handler(path, dead, lines)
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={**{c: pa.string() for c in text}, **pinned},
            strings_can_be_null=False,
        ),
    )
    kinds: dict[str, str] | None = None
    rows_before = 0
    for batch in _batches(reader, path, lines):
        if kinds is None:
            kinds = {c: known.get(c) or majority_kind(batch.column(c)) for c in text}
        parsed = _parse_text_columns(batch, kinds, path, dead, lines, rows_before)
        rows_before += batch.num_rows
        yield parsed


def _by_majority(t: pa.DataType) -> bool:
    """Arrow's guess is replaced by the majority for numbers, booleans and text (the kinds one
    odd value flips); other types it recognises are kept."""
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t))


def _inferred_schema(path: Path, read_options: pacsv.ReadOptions, delimiter: str) -> pa.Schema:
    """Arrow's reading of the first block: the column names, and types it knows beyond ours.
    Bad rows are skipped silently here; the real read reports them."""
    try:
        probe = pacsv.open_csv(path, read_options=read_options, parse_options=pacsv.ParseOptions(
            delimiter=delimiter, invalid_row_handler=lambda row: "skip"))
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: {e}") from None
    schema = probe.schema
    probe.close()
    return schema


def _parse_text_columns(
    batch: pa.RecordBatch,
    kinds: dict[str, str],
    path: Path,
    dead: DeadLetter,
    lines: _LineTracker,
    rows_before: int,
) -> pa.RecordBatch:
    """The batch with its text columns in their majority kinds; the rows holding a value that
    is not one are dead-lettered (file, line, column, value) and left out."""
    bad = np.zeros(batch.num_rows, bool)
    reasons: dict[int, str] = {}
    columns = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        kind = kinds.get(name, "string")
        if kind != "string":
            typed, wrong = parse_as(column, kind)
            for i in np.flatnonzero(wrong & ~bad):
                value = column[int(i)].as_py()
                shown = value if len(value) <= 60 else f"{value[:60]}… ({len(value):,} chars)"
                reasons[int(i)] = (f"column {name!r}: {shown!r} is not {kind}, the kind of most "
                                   "of the column (declare `kind:` to read it otherwise)")
            bad |= wrong
            column = typed
        columns.append(column)
    out = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
    if not bad.any():
        return out
    rows = np.flatnonzero(bad)
    for row, line in zip(rows, lines.lines_of(rows_before + rows), strict=True):
        dead.reject(str(path), int(line), reasons[int(row)])
    return out.filter(pa.array(~bad))


def read_parquet(path: str | Path, batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
    path = check_readable(path)
    try:
        pf = pq.ParquetFile(path)
        yield from pf.iter_batches(batch_size=batch_rows)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
