"""A text column's kind is what nearly all of its values are, never what one odd value forces:
the rows that do not parse are dead-lettered by line (property tests and the CSV reader)."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.data.errors import DeadLetter
from streamrec.data.records import read_csv
from streamrec.data.text_columns import majority_kind, parse_as

int64s = st.integers(-(2**63), 2**63 - 1)
odd = st.one_of(st.integers(2**63, 2**80), st.text(alphabet="abcxyz-_", min_size=1, max_size=9))


@given(st.lists(int64s, min_size=100, max_size=300), st.lists(odd, max_size=1), st.data())
@settings(max_examples=80, deadline=None)
def test_odd_values_below_one_percent_leave_a_column_int_and_only_they_are_bad(ids, odds, data):
    values = [str(i) for i in ids]
    spots = [data.draw(st.integers(0, len(values))) for _ in odds]
    for spot, value in zip(spots, odds, strict=True):
        values.insert(spot, str(value))
    column = pa.array(values)
    assert majority_kind(column) == "int"
    typed, bad = parse_as(column, "int")
    assert bad.sum() == len(odds)
    assert [v for v, b in zip(typed.to_pylist(), bad, strict=True) if not b] == ids


@given(st.lists(int64s, min_size=1, max_size=50), st.lists(st.text(min_size=1), min_size=1))
@settings(max_examples=40, deadline=None)
def test_a_column_with_many_text_values_is_text(ids, words):
    words = [w for w in words if not w.strip().lstrip("+-").isdigit()] or ["word"]
    values = [str(i) for i in ids] + words * (1 + len(ids) // 50)
    assert majority_kind(pa.array(values)) == "string"


def test_two_odd_ids_in_a_csv_are_dead_lettered_not_a_reason_to_read_the_column_as_text(
    tmp_path,
):
    rows = [f"{i % 2},{1000 + i},{i % 13}" for i in range(500)]
    rows[120] = f"1,{'9' * 5000},3"  # a 5,000-digit number
    rows[333] = f"0,{'x' * 100_000},3"  # a 100k-character string
    (tmp_path / "train.csv").write_text("label,user_id,item\n" + "\n".join(rows) + "\n")
    dead = DeadLetter()
    table = pa.Table.from_batches(list(read_csv(tmp_path / "train.csv", dead)))
    assert table.schema.field("user_id").type == pa.int64()
    assert table.num_rows == 498 and dead.count == 2
    assert [e["line"] for e in dead.examples] == [122, 335]  # header + 1-based rows
    assert "is not int" in dead.examples[0]["reason"]
    assert "(5,000 chars)" in dead.examples[0]["reason"]


def test_a_pinned_kind_dead_letters_what_does_not_fit_instead_of_failing_the_file(tmp_path):
    lines = ["label,user_id"] + [f"1,{i}" for i in range(50)] + ["0,abc"]
    (tmp_path / "f.csv").write_text("\n".join(lines) + "\n")
    dead = DeadLetter()
    batches = list(read_csv(tmp_path / "f.csv", dead, column_types={"user_id": pa.int64()}))
    assert sum(b.num_rows for b in batches) == 50 and dead.count == 1
    assert dead.examples[0]["line"] == 52
