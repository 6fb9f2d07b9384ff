"""libSVM / libFM / libFFM text files → record batches of weighted sparse features.

    libsvm, libfm:  LABEL INDEX:VALUE INDEX:VALUE …
    libffm:         LABEL FIELD:INDEX:VALUE …

Each field becomes two columns: `<field>` (list<int64>: the feature indices, used as ids) and
`<field>_w` (list<float32>: their values, the per-id weights an `embeddings` entry pools with
`weights: <field>_w`). Fields come from `data.fields` ({name: [first, end)} over feature indices
for libsvm/libfm, over field numbers for libffm); without it, libsvm/libfm files give one field
`features` and libffm files one field `f<number>` per field number of the first block. The
label column `label` is kept raw, for the label's rule to map (−1/+1 files: `values`).

Parsing is vectorised in Arrow compute, one block of lines at a time (bounded memory). A line
whose label or any token is malformed — or names a field outside `data.fields` — is
dead-lettered with its line number and the reason; the rest of the block goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from streamrec.data.errors import DataError, DeadLetter
from streamrec.data.records import check_readable

_NUMBER = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"
_INDEX = r"^[0-9]+$"


def read_libsvm(
    path: str | Path,
    dead: DeadLetter | None = None,
    ffm: bool = False,
    fields: dict[str, list[int]] | None = None,
    chunk_bytes: int = 4 << 20,
) -> Iterator[pa.RecordBatch]:
    path = check_readable(path)
    dead = dead if dead is not None else DeadLetter()
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(
            column_names=["line"], block_size=chunk_bytes, use_threads=False
        ),
        parse_options=pacsv.ParseOptions(
            delimiter="\x1f", quote_char=False, ignore_empty_lines=False
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={"line": pa.string()}, strings_can_be_null=False, null_values=[]
        ),
    )
    ranges = None if fields is None else {n: (int(r[0]), int(r[1])) for n, r in fields.items()}
    first_line = 1
    try:
        while True:
            try:
                block = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as e:
                raise DataError(f"{path}: {e}") from None
            lines = block.column(0)
            if ranges is None:
                ranges = _default_fields(lines, ffm)
            batch = _parse(lines, ffm, ranges, path, first_line, dead)
            first_line += len(lines)
            if batch.num_rows:
                yield batch
    finally:
        reader.close()


def _default_fields(lines: pa.Array, ffm: bool) -> dict[str, tuple[int, int]]:
    if not ffm:
        return {"features": (0, 2**63 - 1)}
    tokens = pc.list_flatten(pc.list_slice(_tokens(lines), 1))
    heads = pc.list_element(pc.split_pattern(tokens, ":", max_splits=1), 0)
    numbers = pc.filter(heads, pc.match_substring_regex(heads, _INDEX))
    seen = sorted({int(v) for v in pc.unique(numbers).to_pylist()})
    return {f"f{k}": (k, k + 1) for k in seen}


def _tokens(lines: pa.Array) -> pa.Array:
    return pc.split_pattern_regex(pc.utf8_trim_whitespace(lines), r"\s+")


def _parse(
    lines: pa.Array,
    ffm: bool,
    ranges: dict[str, tuple[int, int]],
    path: Path,
    first_line: int,
    dead: DeadLetter,
) -> pa.RecordBatch:
    empty = np.asarray(pc.equal(pc.utf8_trim_whitespace(lines), "").to_numpy(False))
    tokens = _tokens(lines)
    label_text = pc.list_element(tokens, 0)
    bad_label = ~np.asarray(pc.match_substring_regex(label_text, _NUMBER).to_numpy(False))
    rest = pc.list_slice(tokens, 1)
    row = np.asarray(pc.list_parent_indices(rest).to_numpy(zero_copy_only=False))
    parts = pc.split_pattern(pc.list_flatten(rest), ":")
    width = 3 if ffm else 2
    shaped = np.asarray(pc.equal(pc.list_value_length(parts), width).to_numpy(False))
    ok = shaped.copy()
    values = np.zeros(row.size, np.float32)
    index = np.zeros(row.size, np.int64)
    group = np.zeros(row.size, np.int64)
    if shaped.any():
        good = pc.filter(parts, pa.array(shaped))
        texts = [pc.list_element(good, i) for i in range(width)]
        valid = pc.and_(
            pc.match_substring_regex(texts[-2], _INDEX),
            pc.match_substring_regex(texts[-1], _NUMBER),
        )
        if ffm:
            valid = pc.and_(valid, pc.match_substring_regex(texts[0], _INDEX))
        valid_np = np.asarray(valid.to_numpy(zero_copy_only=False))
        where = np.flatnonzero(shaped)
        ok[where] = valid_np
        keep = where[valid_np]
        mask = pa.array(valid_np)
        index[keep] = pc.cast(pc.filter(texts[-2], mask), pa.int64()).to_numpy()
        values[keep] = pc.cast(pc.filter(texts[-1], mask), pa.float32()).to_numpy()
        key = pc.cast(pc.filter(texts[0], mask), pa.int64()).to_numpy() if ffm else index[keep]
        group[keep] = key
    field = np.full(row.size, -1, np.int64)
    for k, (lo, hi) in enumerate(ranges.values()):
        field[(group >= lo) & (group < hi)] = k
    outside = ok & (field < 0)
    bad_row = bad_label.copy()
    bad_row[row[~ok | outside]] = True
    bad_row &= ~empty
    _reject(lines, tokens, bad_label, row, ok, outside, np.flatnonzero(bad_row), path,
            first_line, dead)
    keep_row = ~bad_row & ~empty
    new_index = np.cumsum(keep_row) - 1
    kept_tokens = keep_row[row] & ok & ~outside
    rows_out = int(keep_row.sum())
    labels = pc.cast(pc.filter(label_text, pa.array(keep_row)), pa.float64())
    columns, names = [labels], ["label"]
    for k, name in enumerate(ranges):
        sel = kept_tokens & (field == k)
        counts = np.bincount(new_index[row[sel]], minlength=rows_out)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        columns.append(pa.ListArray.from_arrays(offsets, pa.array(index[sel])))
        columns.append(pa.ListArray.from_arrays(offsets, pa.array(values[sel])))
        names += [name, f"{name}_w"]
    return pa.RecordBatch.from_arrays(columns, names=names)


def _reject(lines, tokens, bad_label, row, ok, outside, bad_rows, path, first_line, dead):
    """Dead-letter each bad line with its first problem (bad lines are few: a loop is fine)."""
    if bad_rows.size == 0:
        return
    flat = pc.list_flatten(pc.list_slice(tokens, 1)).to_pylist()
    for r in bad_rows:
        if bad_label[r]:
            reason = f"label {pc.list_element(tokens, 0)[int(r)].as_py()!r} is not a number"
        else:
            t = int(np.flatnonzero((row == r) & (~ok | outside))[0])
            reason = (
                f"token {flat[t]!r} names a field outside data.fields"
                if ok[t]
                else f"token {flat[t]!r} is not INDEX:VALUE (libffm: FIELD:INDEX:VALUE)"
            )
        dead.reject(str(path), first_line + int(r), reason, lines[int(r)].as_py()[:500])
