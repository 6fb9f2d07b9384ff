import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from streamrec.batch import Batch, JaggedIds

rows = st.lists(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6), min_size=1, max_size=12)


def _jagged(data: list[list[int]], weighted: bool = False) -> JaggedIds:
    values = torch.tensor([v for r in data for v in r], dtype=torch.int64)
    lengths = torch.tensor([len(r) for r in data], dtype=torch.int64)
    weights = torch.arange(values.numel(), dtype=torch.float32) if weighted else None
    return JaggedIds.from_lengths(values, lengths, weights)


@given(rows, rows, st.booleans())
def test_concat_then_slice_is_identity(a, b, weighted):
    ja, jb = _jagged(a, weighted), _jagged(b, weighted)
    both = JaggedIds.concat([ja, jb])
    assert both.slice(0, len(a)) == ja
    assert both.slice(len(a), len(a) + len(b)) == jb


@given(rows)
def test_offsets_are_monotone_and_cover_values(data):
    j = _jagged(data)
    assert int(j.offsets[0]) == 0 and int(j.offsets[-1]) == j.values.numel()
    assert bool((j.offsets[1:] >= j.offsets[:-1]).all())
    assert j.lengths().tolist() == [len(r) for r in data]
    assert j.row_ids().tolist() == [i for i, r in enumerate(data) for _ in r]


@given(rows, st.booleans())
def test_arrow_round_trip(data, weighted):
    j = _jagged(data, weighted)
    assert JaggedIds.from_arrow(j.to_arrow()) == j


@given(rows, st.integers(0, 4))
def test_truncate_last_keeps_most_recent(data, max_len):
    j = _jagged(data).truncate_last(max_len)
    expected = [r[len(r) - min(len(r), max_len) :] for r in data]
    assert j == _jagged(expected)


def test_batch_slice_concat_and_types():
    b = Batch(
        labels=torch.rand(5, 2),
        dense=torch.rand(5, 3),
        sparse={"f": _jagged([[1], [2, 3], [], [4], [5, 6, 7]])},
        group_ids=torch.arange(5),
        timestamps=torch.arange(5) * 10,
    )
    back = Batch.concat([b.slice(0, 2), b.slice(2, 5)])
    assert torch.equal(back.labels, b.labels) and torch.equal(back.dense, b.dense)
    assert back.sparse["f"] == b.sparse["f"]
    assert torch.equal(back.timestamps, b.timestamps) and len(back) == 5
    assert b.to("cpu").sparse["f"] == b.sparse["f"]
    with pytest.raises(TypeError):
        JaggedIds(torch.zeros(2, dtype=torch.int32), torch.zeros(3, dtype=torch.int64))


@given(rows, st.booleans(), st.data())
def test_take_picks_the_same_rows_as_one_row_slices_in_that_order(data, weighted, draw):
    ids = _jagged(data, weighted)
    n = len(data)
    batch = Batch(
        torch.arange(n, dtype=torch.float32)[:, None],
        torch.arange(2 * n, dtype=torch.float32).reshape(n, 2),
        {"f": ids},
        timestamps=torch.arange(n) * 10,
    )
    index = draw.draw(st.lists(st.integers(0, n - 1), max_size=2 * n))
    taken = batch.take(torch.tensor(index, dtype=torch.int64))
    assert taken.size == len(index)
    if index:
        expected = Batch.concat([batch.slice(i, i + 1) for i in index])
        assert taken.sparse["f"] == expected.sparse["f"]
        assert torch.equal(taken.dense, expected.dense)
        assert torch.equal(taken.labels, expected.labels)
        assert torch.equal(taken.timestamps, expected.timestamps)
    else:
        assert taken.sparse["f"].values.numel() == 0
