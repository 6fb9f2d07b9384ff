"""Rank request bodies → candidate rows: one typed decode, context broadcast, 4xx naming the
field for everything wrong."""

import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.serving.request import CandidateRows, RankRequestReader, RequestError, rows_table

KINDS = {"user id": "int", "item_id": "int", "genres": "list<string>", "price": "float"}


def read(body: object, max_candidates: int = 100) -> tuple[CandidateRows, str | None]:
    return RankRequestReader(KINDS).read(json.dumps(body).encode(), 10_000, max_candidates)


def test_context_is_broadcast_and_left_out_features_are_missing():
    rows, request_id = read(
        {
            "context": {"user id": 7},
            "candidates": [{"item_id": 1, "genres": ["a", "b"]}, {"item_id": 2, "price": 3}],
            "request_id": "r1",
        }
    )
    assert request_id == "r1" and rows.num_rows == 2
    assert rows.columns == {
        "user id": [7, 7],
        "item_id": [1, 2],
        "genres": [["a", "b"], None],
        "price": [None, 3.0],
    }
    table = rows.table(KINDS)
    assert table.schema.field("price").type == pa.float64()
    assert table.column("genres").to_pylist() == [["a", "b"], None]
    assert rows.shared == {"user id"} and rows.request_sizes == [2]


def test_requests_batched_together_share_only_what_each_gave_once():
    """The batcher's concatenation keeps each request's size and the features every request
    gave in its context — a model may compute those once per request (`Batch.context`)."""
    a, _ = read({"context": {"user id": 7, "price": None}, "candidates": [{"item_id": 1}] * 3})
    b, _ = read({"context": {"user id": 8}, "candidates": [{"item_id": 2, "price": 1.0}] * 2})
    assert a.shared == {"user id", "price"}  # null in the context: missing on every row
    both = CandidateRows.concat([a, b])
    assert both.shared == {"user id"} and both.request_sizes == [3, 2]
    assert both.take([0, 1]).shared == set()  # rows of several requests: nothing shared
    assert a.take([2, 0]).shared == a.shared  # rows of one request keep its context
    assert CandidateRows.from_dicts({"user id": 3}, [{}, {}], KINDS).shared == {"user id"}


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"candidates": [{"itemid": 1}]}, 422, ["itemid", "item_id"]),  # unknown + what is known
        ({"candidates": [{"item_id": "1"}]}, 422, ["item_id"]),
        ({"candidates": [{"item_id": 1.5}]}, 422, ["item_id"]),
        ({"candidates": [{"item_id": True}]}, 422, ["item_id"]),
        ({"candidates": [{"item_id": 2**63}]}, 422, ["item_id"]),  # beyond int64
        ({"candidates": [{"genres": ["a", 1]}]}, 422, ["genres"]),
        ({"context": {"user id": "x"}, "candidates": [{}]}, 422, ["user id"]),
        ({"candidates": []}, 422, ["candidates"]),
        ({"context": {}}, 422, ["candidates"]),
        ({"candidates": [{}], "extra": 1}, 422, ["extra"]),
        ([1, 2], 422, ["object"]),
        ({"candidates": [{}] * 101}, 413, ["101", "100"]),
    ],
)
def test_bad_bodies_get_a_status_and_a_message_naming_the_problem(body, status, names):
    with pytest.raises(RequestError) as e:
        read(body)
    assert e.value.status == status
    assert all(n in e.value.message for n in names), e.value.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"1333.0", 1333),
        (b"-53103833.0", -53103833),
        (b"2e3", 2000),
        (b"9007199254740993.0", 9007199254740993),  # exact from the text, not via a float
        (b"9223372036854775807.0", 2**63 - 1),
    ],
)
def test_an_integral_fraction_is_the_integer_json_schema_says_it_is(text, expected):
    body = b'{"context": {"user id": %s}, "candidates": [{"item_id": 1}]}' % text
    rows, _ = RankRequestReader(KINDS).read(body, 10_000, 100)
    assert rows.columns["user id"] == [expected]
    assert isinstance(rows.columns["user id"][0], int)


@pytest.mark.parametrize("text", [b"1.5", b"9223372036854775808.0", b"1e300", b'"12"', b"true"])
def test_what_is_not_an_int64_integer_is_still_refused_with_the_strict_message(text):
    body = b'{"candidates": [{"item_id": %s}]}' % text
    with pytest.raises(RequestError) as e:
        RankRequestReader(KINDS).read(body, 10_000, 100)
    assert e.value.status == 422 and "$.candidates[0].item_id" in e.value.message


def test_malformed_and_oversize_bodies():
    reader = RankRequestReader(KINDS)
    with pytest.raises(RequestError, match="not valid JSON") as e:
        reader.read(b'{"candidates": [', 10_000, 100)
    assert e.value.status == 422
    with pytest.raises(RequestError) as e:
        reader.read(b" " * 10_001, 10_000, 100)
    assert e.value.status == 413


value = {
    "user id": st.integers(-(2**63), 2**63 - 1),
    "item_id": st.integers(-(2**63), 2**63 - 1),
    "genres": st.lists(st.text(max_size=5), max_size=3),
    "price": st.floats(allow_nan=False, allow_infinity=False),
}
candidate = st.fixed_dictionaries({}, optional={k: st.none() | v for k, v in value.items()})


@settings(max_examples=60, deadline=None)
@given(
    context=st.fixed_dictionaries({}, optional={"user id": value["user id"]}),
    candidates=st.lists(candidate, min_size=1, max_size=8),
    split=st.integers(0, 8),
)
def test_typed_reader_and_batch_concat_build_the_same_table_as_the_dict_path(
    context, candidates, split
):
    """Reading a body, and concatenating requests into one batch, give exactly the table the
    plain dict → Arrow path gives for the same rows."""
    rows, _ = read({"context": context, "candidates": candidates})
    expected = rows_table(context, candidates, KINDS)
    assert rows.table(KINDS).equals(expected)
    cut = min(split, rows.num_rows)
    parts = [rows.take(list(range(cut))), rows.take(list(range(cut, rows.num_rows)))]
    assert CandidateRows.concat(parts).table(KINDS).equals(expected)


def test_a_value_arrow_cannot_hold_is_a_422_not_a_crash():
    rows = CandidateRows({"item_id": ["not an int"]}, 1)  # e.g. rows built by other code
    with pytest.raises(RequestError) as e:
        rows.table({"item_id": "int"})
    assert e.value.status == 422 and "does not fit" in e.value.message


def test_an_error_deep_in_the_body_names_its_json_path():
    with pytest.raises(RequestError) as e:
        read({"candidates": [{"item_id": 1}, {"item_id": 2, "genres": "drama"}]})
    assert "$.candidates[1].genres" in e.value.message
