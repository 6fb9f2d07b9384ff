"""DynamicTable behaviour through its public contract, with hypothesis where it matters."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.embedding import DynamicTable

id_lists = st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=60)


def _ids(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["insert", "evict"]), id_lists), min_size=1, max_size=12))
def test_distinct_fids_never_share_a_live_row(ops):
    t = DynamicTable(dim=4, capacity=25, chunk_rows=16, shard_bits=1)
    now = 0
    for op, values in ops:
        now += 1
        if op == "insert":
            t.lookup(_ids(values), now=now)
        else:
            t.evict(now=now)
        live = t.live_rows()
        fids = t.state_dict()["fid"].numpy()[live]
        assert len(np.unique(fids)) == len(live) == len(t)
        assert np.array_equal(t.resolve(fids, insert=False), live)  # each fid: its own row


@settings(max_examples=30, deadline=None)
@given(id_lists)
def test_lookup_is_stable_and_matches_the_fid_seeded_init(values):
    t = DynamicTable(dim=8, chunk_rows=16)
    first = t.lookup(_ids(values), now=1)
    again = t.lookup(_ids(values), now=2)
    assert torch.equal(first, again)
    other = DynamicTable(dim=8, chunk_rows=1 << 10)  # another run, another layout
    assert torch.equal(other.lookup(_ids(values[::-1]), now=1).flip(0), first)
    assert first.abs().max() <= 0.01 and first.abs().sum() > 0


def test_growth_past_many_chunks_keeps_every_row():
    t = DynamicTable(dim=2, chunk_rows=256, shard_bits=2)
    ids = torch.arange(0, 50_000, dtype=torch.int64) * 7919
    before = t.lookup(ids, now=0)
    assert len(t) == t.num_rows_allocated == 50_000  # 196 chunks of 256 rows
    assert torch.equal(t.lookup(ids, now=1, insert=False), before)


def test_gradient_changes_only_its_rows_and_duplicates_sum():
    t = DynamicTable(dim=3, optimizer="sgd", lr=0.5)
    ids = _ids([10, 20, 30])
    w0 = t.lookup(ids, now=0)
    t.apply_gradients(_ids([20, 20, 99]), torch.ones(3, 3))
    w1 = t.lookup(ids, now=0, insert=False)
    assert torch.equal(w1[[0, 2]], w0[[0, 2]])
    assert torch.allclose(w1[1], w0[1] - 0.5 * 2.0)  # two gradients of 1, summed
    assert len(t) == 3  # 99 was never stored, its gradient is ignored


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=80), st.integers(2, 4))
def test_admission_never_stores_an_id_seen_fewer_than_k_times(stream, k):
    t = DynamicTable(dim=2, admit_min_count=k, sketch_width=1 << 12)
    for i in range(0, len(stream), 7):
        t.lookup(_ids(stream[i : i + 7]), now=i)
    values, counts = np.unique(stream, return_counts=True)
    stored = set(t.state_dict()["fid"].numpy()[t.live_rows()].tolist())
    assert stored == set(values[counts >= k].tolist())  # tiny id space: the sketch is exact


def test_not_admitted_ids_read_zeros_and_get_no_update():
    t = DynamicTable(dim=4, admit_min_count=2, optimizer="sgd", lr=1.0)
    once = t.lookup(_ids([7]), now=0)
    assert torch.equal(once, torch.zeros(1, 4)) and len(t) == 0
    t.apply_gradients(_ids([7]), torch.ones(1, 4))
    assert len(t) == 0
    twice = t.lookup(_ids([7]), now=1)
    assert len(t) == 1 and twice.abs().sum() > 0


def test_probabilistic_admission_rate():
    t = DynamicTable(dim=2, admit_probability=0.25)
    t.lookup(torch.arange(20_000, dtype=torch.int64), now=0)
    assert 0.23 < len(t) / 20_000 < 0.27


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 100)), min_size=1, max_size=60),
    st.integers(1, 50),
)
def test_ttl_evicts_exactly_rows_older_than_the_ttl(events, ttl):
    t = DynamicTable(dim=2, ttl_seconds=ttl)
    last_seen: dict[int, int] = {}
    for fid, ts in sorted(events, key=lambda e: e[1]):
        t.lookup(_ids([fid]), now=ts)
        last_seen[fid] = ts
    now = max(ts for _, ts in events) + 10
    evicted = set(t.evict(now=now).tolist())
    assert evicted == {f for f, ts in last_seen.items() if now - ts > ttl}
    assert len(t) == len(last_seen) - len(evicted)


def test_capacity_lfu_and_lru():
    lfu = DynamicTable(dim=2, capacity=2, eviction="lfu")
    lfu.lookup(_ids([1, 1, 1, 2, 2, 3]), now=0)
    assert lfu.evict(now=0).tolist() == [3] and len(lfu) == 2
    lru = DynamicTable(dim=2, capacity=2, eviction="lru")
    for ts, fid in enumerate([1, 2, 3, 1]):
        lru.lookup(_ids([fid]), now=ts)
    assert lru.evict(now=10).tolist() == [2]


def test_reused_row_starts_with_fresh_weights_and_state():
    t = DynamicTable(dim=4, optimizer="adagrad", lr=0.1, capacity=1)
    t.lookup(_ids([1]), now=0)
    t.apply_gradients(_ids([1]), torch.full((1, 4), 3.0))
    t.lookup(_ids([2]), now=1)
    assert t.evict(now=1).tolist() == [1]  # both count 1: the older row goes first
    t.evict(now=2)
    fresh = DynamicTable(dim=4, optimizer="adagrad", lr=0.1)
    assert len(t) == 1
    t.lookup(_ids([5]), now=3)  # reuses a freed row
    row = int(t.resolve(np.array([5]), insert=False)[0])
    assert torch.equal(t.lookup(_ids([5]), now=3), fresh.lookup(_ids([5]), now=3))
    assert float(t.state_dict()["optimizer_state"][row].sum()) == 0.0


@settings(max_examples=20, deadline=None)
@given(id_lists, st.sampled_from(["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"]))
def test_state_dict_round_trip_is_bit_exact(values, optimizer):
    t = DynamicTable(dim=4, optimizer=optimizer, admit_min_count=1, ttl_seconds=5, capacity=40)
    ids = _ids(values)
    t.lookup(ids, now=1)
    t.apply_gradients(ids, torch.randn(len(values), 4))
    t.evict(now=100)
    t.lookup(ids[: len(values) // 2 + 1], now=101)
    clone = DynamicTable.from_config(t.settings)
    clone.load_state_dict(t.state_dict())
    for key, value in t.state_dict().items():
        assert torch.equal(value, clone.state_dict()[key]), key
    more = _ids([values[0], 12345])
    assert torch.equal(clone.lookup(more, now=102), t.lookup(more, now=102))


def test_deltas_track_changed_and_deleted_fids():
    t = DynamicTable(dim=2, optimizer="sgd", ttl_seconds=10)
    t.lookup(_ids([1, 2, 3]), now=0)
    v = t.version
    t.apply_gradients(_ids([2]), torch.ones(1, 2))
    changed, weights = t.changed_since(v)
    assert changed.tolist() == [2] and torch.equal(weights, t.lookup(_ids([2]), insert=False))
    v = t.version
    t.lookup(_ids([3]), now=20)
    t.evict(now=25)
    assert sorted(t.deleted_since(v).tolist()) == [1, 2]
    assert t.changed_since(t.version)[0].numel() == 0


def test_bad_arguments_are_clear_errors():
    with pytest.raises(TypeError, match="int64"):
        DynamicTable().lookup(torch.tensor([1, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"optimizer\n.*'sgd', 'adagrad'"):
        DynamicTable(optimizer="lamb")
    with pytest.raises(ValueError, match="capcity"):  # a typo is never ignored
        DynamicTable(capcity=10)
    with pytest.raises(ValueError, match="not both"):
        DynamicTable(admit_min_count=2, admit_probability=0.5)
    with pytest.raises(ValueError, match="grads must be"):
        DynamicTable(dim=4).apply_gradients(_ids([1]), torch.ones(1, 3))
