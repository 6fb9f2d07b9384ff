import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from streamrec.batch import Batch, JaggedIds, RequestContext

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


def _request_batch(sizes: list[int]) -> Batch:
    n = sum(sizes)
    dense = torch.arange(n * 3, dtype=torch.float32).view(n, 3)
    request = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    dense[:, 1] = request.float() * 10  # column 1 is the request's
    sparse = {"user": JaggedIds.from_lengths(request, torch.ones(n, dtype=torch.int64))}
    return Batch(torch.zeros(n, 0), dense, sparse)


@given(st.lists(st.integers(1, 5), min_size=1, max_size=6),
       st.lists(st.integers(1, 5), min_size=1, max_size=6))
def test_request_context_reads_each_request_once_and_concatenates(first_sizes, more_sizes):
    a, b = _request_batch(first_sizes), _request_batch(more_sizes)
    ca = RequestContext.of(a.dense, first_sizes, ["user"], [1])
    cb = RequestContext.of(b.dense, more_sizes, ["user"], [1])
    assert ca.num_requests == len(first_sizes)
    assert torch.equal(ca.dense[:, 0], torch.arange(len(first_sizes)).float() * 10)
    assert torch.equal(a.dense[ca.first, 1], ca.dense[:, 0])
    assert torch.equal(ca.index[ca.first], torch.arange(len(first_sizes)))
    both = Batch.concat([
        Batch(a.labels, a.dense, a.sparse, context=ca),
        Batch(b.labels, b.dense, b.sparse, context=cb),
    ])
    assert both.context is not None
    rows = torch.cat([a.dense, b.dense])
    # every row reads its request's shared column, and each request's first row is its own
    assert torch.equal(both.context.dense[both.context.index, 0], rows[:, 1])
    assert torch.equal(both.context.index[both.context.first],
                       torch.arange(len(first_sizes) + len(more_sizes)))
    # a part without a context, or sharing other features: the whole batch is scored unshared
    assert Batch.concat([Batch(a.labels, a.dense, a.sparse, context=ca), b]).context is None
    other = RequestContext.of(b.dense, more_sizes, [], [1])
    assert RequestContext.concat([ca, other]) is None
    # rows picked or cut need not keep their requests whole: no context
    assert Batch(a.labels, a.dense, a.sparse, context=ca).slice(0, 1).context is None


def test_a_request_context_that_does_not_fit_its_batch_is_refused():
    batch = _request_batch([2, 3])
    with pytest.raises(ValueError, match="sum to 4, not 5"):
        RequestContext.of(batch.dense, [2, 2], ["user"], [1])
    with pytest.raises(ValueError, match="at least one row"):
        RequestContext.of(batch.dense, [0, 5], ["user"], [1])
    context = RequestContext.of(batch.dense[:4], [2, 2], ["user"], [1])
    with pytest.raises(ValueError, match="covers 4 rows, the batch has 5"):
        Batch(batch.labels, batch.dense, batch.sparse, context=context)
