import json

import numpy as np
import pyarrow as pa
import pytest

from streamrec.data.errors import DataError, DeadLetter
from streamrec.data.records import CRITEO_COLUMNS, read_criteo, read_csv, read_parquet
from streamrec.fid import hash_bytes
from streamrec.schema import DenseFeature, EmbeddingFeature, Label, Schema


def _criteo_schema() -> Schema:
    return Schema(
        labels=[Label(name="label")],
        dense=[DenseFeature(name=f"I{i}", fill=float("nan")) for i in range(1, 14)],
        embeddings=[EmbeddingFeature(name=f"C{i}", missing="empty") for i in range(1, 27)],
    )


def test_criteo_known_rows_parse_exactly(criteo_train):
    table = pa.Table.from_batches(list(read_criteo(criteo_train)))
    assert table.num_rows == 7200
    assert table.column_names == CRITEO_COLUMNS
    first = table.slice(0, 1).to_pylist()[0]
    assert first["label"] == 0
    assert [first[f"I{i}"] for i in range(1, 14)] == [
        1,
        1,
        5,
        0,
        1382,
        4,
        15,
        2,
        181,
        1,
        2,
        None,
        2,
    ]
    assert first["C1"] == "68fd1e64" and first["C22"] is None and first["C26"] == "9727dd16"
    third = table.slice(2, 1).to_pylist()[0]
    assert third["I4"] == 14 and third["C19"] is None and third["C25"] is None
    assert abs(np.mean(table["label"].to_numpy()) - 0.216) < 0.01


def test_criteo_batch_fids_are_the_hash_of_the_raw_string(criteo_train):
    batch = _criteo_schema().encode(next(read_criteo(criteo_train)))
    c1 = batch.sparse["C1"]
    assert int(c1.values[0]) == hash_bytes("68fd1e64")
    assert c1.lengths()[0] == 1 and batch.sparse["C22"].lengths()[0] == 0
    assert batch.dense[0, :3].tolist() == [1.0, 1.0, 5.0] and np.isnan(batch.dense[0, 11].item())
    again = _criteo_schema().encode(next(read_criteo(criteo_train)))
    assert (again.sparse["C1"].values == c1.values).all()


def _write_bad_criteo(path) -> None:
    good = "\t".join(["1"] + ["3"] * 13 + ["abcdef01"] * 26)
    rows = [
        good,
        "\t".join(["0"] + ["1"] * 13 + ["00000000"] * 25),  # 39 fields: wrong count
        good,
        "\t".join(["1", "x7"] + ["1"] * 12 + ["00000000"] * 26),  # I1 not numeric
        "\t".join(["2"] + ["1"] * 13 + ["00000000"] * 26),  # label not 0/1
        good,
    ]
    path.write_text("\n".join(rows) + "\n")


def test_malformed_rows_are_dead_lettered_with_file_and_line(tmp_path):
    src = tmp_path / "bad.tsv"
    _write_bad_criteo(src)
    dead = DeadLetter(tmp_path / "dead.jsonl")
    table = pa.Table.from_batches(list(read_criteo(src, dead)))
    dead.close()
    assert table.num_rows == 3
    assert dead.count == 3
    entries = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [(e["line"], e["reason"]) for e in entries] == [
        (2, "expected 40 fields, found 39"),
        (4, "I1 is not a number"),
        (5, "label must be 0 or 1"),
    ]
    assert all(e["file"] == str(src) for e in entries)


def test_strict_mode_stops_at_the_first_bad_row(tmp_path):
    src = tmp_path / "bad.tsv"
    _write_bad_criteo(src)
    with pytest.raises(DataError, match=r"bad.tsv:2: expected 40 fields"):
        list(read_criteo(src, DeadLetter(strict=True)))


def test_missing_or_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(read_criteo(tmp_path / "nope.tsv"))
    with pytest.raises(DataError, match="is a directory"):
        list(read_csv(tmp_path))
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet"):
        list(read_parquet(tmp_path / "x.parquet"))


def test_csv_reader_streams_in_chunks_and_counts_bad_rows(tmp_path):
    src = tmp_path / "x.csv"
    lines = ["a,b"] + [f"{i},{i * 2}" for i in range(5000)]
    lines.insert(100, "1,2,3")
    src.write_text("\n".join(lines) + "\n")
    dead = DeadLetter()
    batches = list(read_csv(src, dead, chunk_bytes=4096))
    assert len(batches) > 5
    assert sum(b.num_rows for b in batches) == 5000 and dead.count == 1
    assert dead.examples[0]["line"] == 101
