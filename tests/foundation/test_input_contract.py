"""One input contract: for random schemas and rows, the bytes a row is scored from — its fids
per feature and its dense values — are the same whether it arrives in a CSV (among other
rows), a Parquet file, a stream message or an HTTP body. Types come from the declared kinds,
never from the data in hand (a string id '0123' in a file of digit-only ids stays a string)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamrec.data.formats import read_records
from streamrec.json_records import StreamRecordDecoder
from streamrec.schema import DenseFeature, EmbeddingFeature, Label, Schema
from streamrec.serving.request import RankRequestReader

INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text("0123456789abcXYZ_-", min_size=1, max_size=12)  # digits-only strings included
FLOAT = st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False, width=64)
VALUES = {"int": INT64, "string": TEXT, "float": FLOAT}


@st.composite
def schema_and_rows(draw):
    kinds = draw(st.lists(st.sampled_from(["int", "string", "float"]), min_size=1, max_size=5))
    columns = {f"c{i}": k for i, k in enumerate(kinds)}
    rows = draw(st.lists(
        st.fixed_dictionaries({c: VALUES[k] for c, k in columns.items()}),
        min_size=1, max_size=6,
    ))
    for r in rows:
        r["label"] = draw(st.integers(0, 1))
    return columns, rows


def _schema(columns: dict[str, str]) -> Schema:
    return Schema(
        labels=[Label(name="label")],
        dense=[DenseFeature(name=c) for c, k in columns.items() if k == "float"],
        embeddings=[EmbeddingFeature(name=c, kind=k) for c, k in columns.items() if k != "float"],
    )


def _row_bytes(batch, row: int) -> dict[str, np.ndarray]:
    out = {"dense": batch.dense[row].numpy()}
    for name, ids in batch.sparse.items():
        lo, hi = int(ids.offsets[row]), int(ids.offsets[row + 1])
        out[name] = ids.values[lo:hi].numpy()
    return out


def _csv(path, columns: dict[str, str], rows: list[dict]) -> None:
    """Written by hand, unquoted, as a user's file would be."""
    names = [*columns, "label"]
    with open(path, "w") as fh:
        fh.write(",".join(names) + "\n")
        for r in rows:
            fh.write(",".join(repr(r[c]) if isinstance(r[c], float) else str(r[c])
                              for c in names) + "\n")


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=schema_and_rows(), which=st.integers(0, 5))
def test_a_row_encodes_alike_from_csv_parquet_stream_and_http(tmp_path, case, which):
    columns, rows = case
    which %= len(rows)
    schema = _schema(columns)
    kinds = schema.declared_kinds()
    table = lambda batches: pa.Table.from_batches(list(batches))  # noqa: E731

    _csv(tmp_path / "rows.csv", columns, rows)
    from_csv = schema.encode(table(read_records(tmp_path / "rows.csv", "csv", kinds=kinds)))

    types = {c: {"int": pa.int64(), "string": pa.string(), "float": pa.float64()}[k]
             for c, k in columns.items()}
    pq.write_table(pa.table({**{c: pa.array([r[c] for r in rows], types[c]) for c in columns},
                             "label": [r["label"] for r in rows]}), tmp_path / "rows.parquet")
    from_parquet = schema.encode(
        table(read_records(tmp_path / "rows.parquet", "parquet", kinds=kinds)))

    decoder = StreamRecordDecoder(kinds, schema.labels, None, 1 << 20)
    streamed, rejects = decoder.decode([json.dumps(rows[which]).encode()])
    assert rejects == []
    from_stream = schema.with_labels_mapped().encode(streamed)

    body = {"context": {}, "candidates": [{c: rows[which][c] for c in columns}]}
    request, _ = RankRequestReader(kinds).read(json.dumps(body).encode(), 1 << 20, 10)
    from_http = schema.encode(request.table(kinds), with_labels=False)

    reference = _row_bytes(from_csv, which)
    for other in (_row_bytes(from_parquet, which), _row_bytes(from_stream, 0),
                  _row_bytes(from_http, 0)):
        assert other.keys() == reference.keys()
        for key, value in reference.items():
            assert np.array_equal(other[key], value), (key, columns, rows[which])
    assert torch.equal(from_stream.labels[0], from_csv.labels[which])
