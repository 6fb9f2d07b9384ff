"""Text columns of a file (CSV / TSV) read as the kind most of their values have.

A reader that takes a column's type from whatever parses *every* value lets one odd value
decide for millions: a 5,000-digit number or a 100k-character string among a column of
integer ids made the whole column text, and the model trained on it then refused integer ids
when served. Here a column's kind is the first of int64, float64, bool whose values make up
`NUMERIC_SHARE` (99%) of its non-empty values in the first block read, else string; the rows
whose value does not parse as that kind are returned as bad — the reader dead-letters them by
line, as a stream does its messages. A column with more than 1% values of another kind (ids
such as '04258293' beside 'A1234') is text: that is what it holds, not a few odd rows.
Empty values are missing (null), as before.

    kind = majority_kind(column)             # pa.StringArray → "int" | "float" | "bool" | "string"
    typed, bad = parse_as(column, kind)      # typed array (bad rows null), bool mask [n]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_DIGITS = r"^[+-]?[0-9]{1,19}$"  # int64 candidates; 19-digit ones are range-checked
_FLOAT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$|^[+-]?(inf|nan|Inf|NaN|INF|NAN)$"
_BOOL = ("true", "false", "True", "False", "TRUE", "FALSE")
INT64_MAX, INT64_MIN = "9223372036854775807", "9223372036854775808"  # digits of the bounds


def _ints(column: pa.Array) -> np.ndarray:
    """Which values are integers within int64 (vectorised: a pattern, then a range check of
    the 19-digit ones by comparing digit strings of equal length)."""
    digits = pc.match_substring_regex(column, _DIGITS).to_numpy(zero_copy_only=False)
    unsigned = pc.utf8_ltrim(column, "+-")
    long = pc.equal(pc.utf8_length(unsigned), 19).to_numpy(zero_copy_only=False)
    if not (digits & long).any():
        return digits
    negative = pc.starts_with(column, "-").to_numpy(zero_copy_only=False)
    within = np.where(
        negative,
        pc.less_equal(unsigned, INT64_MIN).to_numpy(zero_copy_only=False),
        pc.less_equal(unsigned, INT64_MAX).to_numpy(zero_copy_only=False),
    )
    return digits & (~long | within)


def _matches(column: pa.Array, kind: str) -> np.ndarray:
    if kind == "int":
        return _ints(column)
    if kind == "float":
        return pc.match_substring_regex(column, _FLOAT).to_numpy(zero_copy_only=False)
    if kind == "bool":
        return pc.is_in(column, pa.array(_BOOL)).to_numpy(zero_copy_only=False)
    return np.ones(len(column), bool)


def _present(column: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.not_equal(column, ""), False).to_numpy(zero_copy_only=False)


NUMERIC_SHARE = 0.99  # of a column's non-empty values that must parse for it to be numeric


def majority_kind(column: pa.Array) -> str:
    """int, float or bool when that many of the column's non-empty values are one; else string."""
    column = pc.cast(column, pa.string())
    present = _present(column)
    if not present.any():
        return "string"
    needed = NUMERIC_SHARE * present.sum()
    for kind in ("int", "float", "bool"):
        if (_matches(column, kind) & present).sum() >= needed:
            return kind
    return "string"


ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "string": pa.string()}


def kind_of(t: pa.DataType) -> str | None:
    """The kind this module parses a pinned Arrow type as; None for types it leaves to Arrow."""
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return None


def parse_as(column: pa.Array, kind: str) -> tuple[pa.Array, np.ndarray]:
    """(the column as `kind`, empty values null; mask of the rows whose value is not one)."""
    column = pc.cast(column, pa.string())
    if kind == "string":
        return column, np.zeros(len(column), bool)
    present = _present(column)
    good = _matches(column, kind) & present
    bad = present & ~good
    keep = pa.array(good)
    clean = pc.if_else(keep, column, pa.scalar(None, pa.string()))
    if kind == "bool":
        truth = pc.is_in(clean, pa.array(_BOOL[::2]))  # true / True / TRUE
        return pc.if_else(keep, truth, pa.scalar(None, pa.bool_())), bad
    return pc.cast(clean, ARROW_TYPES[kind]), bad
