"""Column statistics of a data file: rows, and per column the missing and distinct counts."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc


def inspect_records(batches: Iterable[pa.RecordBatch]) -> dict:
    """{"rows": N, "columns": {name: {"missing": m, "distinct": d, "type": t}}}.

    `missing` counts null values (empty fields); `distinct` counts distinct non-missing values
    (for a multi-valued column: distinct elements, e.g. distinct genres). Distinct values are
    kept per column, so memory grows with the number of distinct values, not with rows.
    """
    rows = 0
    missing: dict[str, int] = {}
    uniques: dict[str, list[pa.Array]] = {}
    types: dict[str, str] = {}
    for batch in batches:
        rows += batch.num_rows
        for name, col in zip(batch.schema.names, batch.columns, strict=True):
            missing[name] = missing.get(name, 0) + col.null_count
            types.setdefault(name, str(col.type))
            values = col.flatten() if pa.types.is_list(col.type) else col
            parts = uniques.setdefault(name, [])
            parts.append(pc.unique(values.drop_null()))
            if len(parts) > 16:  # fold, so the list of parts stays short
                uniques[name] = [pc.unique(pa.concat_arrays(parts))]
    columns = {}
    for name, parts in uniques.items():
        distinct = len(pc.unique(pa.concat_arrays(parts))) if parts else 0
        columns[name] = {"missing": missing[name], "distinct": distinct, "type": types[name]}
    return {"rows": rows, "columns": columns}
