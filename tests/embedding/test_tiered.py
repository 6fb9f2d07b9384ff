"""TieredTable behaves exactly like an in-memory DynamicTable, whatever sits on disk.

Random operation sequences run on both tables side by side, the tiered one with a budget of a
few rows so nearly every operation moves rows between the tiers; after every operation the
answers must agree, and at the end every row (weights, optimizer state, count, last-seen,
version), the table version, the deletion log and the deltas must be equal — also across a
checkpoint (hot tensors + hard-linked disk tier) and a restart.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.embedding.table import DynamicTable
from streamrec.embedding.tiered import TieredTable, build_table
from streamrec.store.model_dir import TensorFile, sha256_file, write_streamed
from streamrec.table_config import StorageConfig, TableConfig, parse_bytes

ids = st.lists(st.integers(0, 40), min_size=1, max_size=25)
operation = st.one_of(
    st.tuples(st.just("train"), ids),
    st.tuples(st.just("read"), ids),
    st.tuples(st.just("evict"), st.integers(0, 3)),
    st.tuples(st.just("trim"), st.integers(0, 6)),
    st.tuples(st.just("upsert"), ids),
    st.tuples(st.just("delete"), ids),
    st.tuples(st.just("prefetch"), ids),
    st.tuples(st.just("tick"), st.integers(1, 4)),
)
table_settings = st.fixed_dictionaries(
    {
        "optimizer": st.sampled_from(["rowwise_adagrad", "adam", "sgd", "ftrl"]),
        "ttl_seconds": st.sampled_from([None, 3.0, 2.5]),
        "admit": st.sampled_from([{}, {"admit_min_count": 2}, {"admit_probability": 0.5}]),
        "eviction": st.sampled_from(["lfu", "lru"]),
    }
)


def _pair(tmp_path, s: dict, budget_rows: int) -> tuple[DynamicTable, TieredTable]:
    base = {
        "dim": 3,
        "optimizer": s["optimizer"],
        "ttl_seconds": s["ttl_seconds"],
        "eviction": s["eviction"],
        "sketch_width": 64,
        **s["admit"],
    }
    plain = DynamicTable.from_config(TableConfig(**base), "t")
    storage = {"memory_budget": "1MiB", "path": str(tmp_path)}
    tiered = build_table(TableConfig(**base, storage=storage), "t")
    assert isinstance(tiered, TieredTable)
    tiered.budget_rows = budget_rows  # a handful of rows: everything else lives on disk
    tiered.track_changes = True
    return plain, tiered


def _rows_by_fid(table: DynamicTable) -> dict[str, np.ndarray]:
    state = table.state_dict()
    live = state["count"].numpy() > 0
    order = np.argsort(state["fid"].numpy()[live])
    return {
        k: state[k].numpy()[live][order]
        for k in ("fid", "weights", "optimizer_state", "count", "last_seen", "row_version")
    }


def _assert_same(plain: DynamicTable, tiered: TieredTable) -> None:
    assert len(plain) == len(tiered)
    assert plain.version == tiered.version
    a, b = _rows_by_fid(plain), _rows_by_fid(tiered)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert sorted(plain.deleted_since(0).tolist()) == sorted(tiered.deleted_since(0).tolist())


def _changes(table: DynamicTable, version: int) -> dict[int, list[float]]:
    fids, weights = table.changed_since(version)
    return {int(f): w.tolist() for f, w in zip(fids, weights, strict=True)}


def _run(plain, tiered, ops, now: list[int], step: list[int]) -> None:
    for op, arg in ops:
        step[0] += 1
        if op in ("train", "read"):
            x = torch.tensor(arg, dtype=torch.int64)
            insert = op == "train"
            out_a = plain.lookup(x, now=now[0], insert=insert)
            out_b = tiered.lookup(x, now=now[0], insert=insert)
            torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
            if insert:
                g = torch.from_numpy(
                    np.random.default_rng(step[0]).standard_normal((len(arg), 3)).astype("f4")
                )
                plain.apply_gradients(x, g)
                tiered.apply_gradients(x, g)
        elif op == "evict":
            now[0] += arg
            a = plain.evict(now=now[0])
            b = tiered.evict(now=now[0])
            assert sorted(a.tolist()) == sorted(b.tolist())
        elif op == "trim":
            tiered.trim(target_rows=arg)
        elif op == "upsert":
            fids = np.unique(np.array(arg, np.int64))
            w = np.full((fids.size, 3), step[0] / 7, np.float32)
            plain.upsert(fids, w, now=now[0])
            tiered.upsert(fids, w, now=now[0])
        elif op == "delete":
            a = plain.delete(np.array(arg, np.int64))
            b = tiered.delete(np.array(arg, np.int64))
            assert sorted(a.tolist()) == sorted(b.tolist())
        elif op == "prefetch":
            tiered.prefetch(np.array(arg, np.int64))
        elif op == "tick":
            now[0] += arg


@settings(max_examples=35, deadline=None)
@given(table_settings, st.integers(0, 6), st.lists(operation, min_size=1, max_size=30))
def test_tiered_table_behaves_like_an_in_memory_one(tmp_path_factory, s, budget, ops):
    plain, tiered = _pair(tmp_path_factory.mktemp("tier"), s, budget)
    versions = [0]
    now, step = [1000], [0]
    for chunk in (ops[: len(ops) // 2], ops[len(ops) // 2 :]):
        _run(plain, tiered, chunk, now, step)
        versions.append(plain.version)
    _assert_same(plain, tiered)
    for v in versions:  # a delta from any earlier version is the same rows
        assert _changes(plain, v) == _changes(tiered, v)
    tiered.close()


@settings(max_examples=15, deadline=None)
@given(
    table_settings,
    st.integers(0, 5),
    st.lists(operation, min_size=1, max_size=20),
    st.lists(operation, min_size=1, max_size=20),
)
def test_checkpoint_and_restart_continue_exactly(tmp_path_factory, s, budget, before, after):
    """hot_state_dict + checkpoint_cold, then load_tiered into a fresh table (another
    working folder): the restored table continues as if nothing happened."""
    root = tmp_path_factory.mktemp("ckpt")
    plain, tiered = _pair(root / "work", s, budget)
    now, step = [1000], [0]
    _run(plain, tiered, before, now, step)
    digest = write_streamed(root / "hot.safetensors", tiered.hot_state_file())
    assert digest == sha256_file(root / "hot.safetensors")
    hot = TensorFile(root / "hot.safetensors")  # read lazily, as load_model does
    whole = tiered.hot_state_dict()
    assert sorted(hot.keys()) == sorted(whole)
    for name, tensor in whole.items():
        assert torch.equal(hot[name], tensor), name
    sums = tiered.checkpoint_cold(root / "checkpoint")
    assert set(sums) == {f.name for f in (root / "checkpoint").iterdir()}
    _run(plain, tiered, [("train", [1, 2, 3])], [now[0]], [999])  # work after the checkpoint …
    tiered.close()  # … is lost in the "crash"

    reference = DynamicTable.from_config(plain.settings, "t")
    reference.load_state_dict(_replay_state(s, budget, before, root / "replay"))
    restored = TieredTable.from_config(tiered.settings, "t", working_dir=root / "restart")
    restored.load_tiered(hot, root / "checkpoint")
    restored.budget_rows = budget
    restored.track_changes = True
    _assert_same(reference, restored)
    _run(reference, restored, after, now, step)
    _assert_same(reference, restored)
    restored.close()


def _replay_state(s, budget, ops, path) -> dict:
    plain, tiered = _pair(path, s, budget)
    _run(plain, tiered, ops, [1000], [0])
    tiered.close()
    return plain.state_dict()


def test_whole_state_round_trips_through_a_plain_table(tmp_path):
    """state_dict() of a tiered table is every row; loading it into a tiered table with a
    small budget writes the excess down again."""
    plain, tiered = _pair(tmp_path / "a", {
        "optimizer": "adam", "ttl_seconds": None, "admit": {}, "eviction": "lfu"
    }, 4)
    x = torch.arange(50)
    plain.lookup(x, now=5)
    tiered.lookup(x, now=5)
    tiered.trim()
    assert tiered.hot_rows <= 4 and tiered.cold_rows == 50 - tiered.hot_rows
    other = build_table(tiered.settings, "other")
    other.budget_rows = 10
    other.load_state_dict(tiered.state_dict())
    assert other.hot_rows == 9 and len(other) == 50  # trimmed to 90% of the budget
    _assert_same(plain, other)
    with pytest.raises(ValueError, match="only the DRAM tier"):
        other.load_state_dict(tiered.hot_state_dict())


def test_prefetched_rows_are_used_and_stale_ones_dropped(tmp_path):
    _, tiered = _pair(tmp_path, {
        "optimizer": "rowwise_adagrad", "ttl_seconds": None, "admit": {}, "eviction": "lru"
    }, 0)
    x = torch.arange(100)
    before = tiered.lookup(x, now=1)
    tiered.trim(target_rows=0)
    tiered.prefetch(np.arange(100))
    reads = tiered.disk_hits
    torch.testing.assert_close(tiered.lookup(x, now=2, insert=False), before)
    assert tiered.disk_hits - reads == 100
    # A delete after the prefetch makes its copy stale: the row must not come back.
    tiered.trim(target_rows=0)
    tiered.prefetch(np.arange(100))
    tiered.delete(np.array([5]))
    tiered.trim(target_rows=0)
    assert tiered.lookup(torch.tensor([5]), now=3, insert=False).abs().sum() == 0
    assert len(tiered) == 99


def test_hit_rate_counts_distinct_ids_that_dram_held(tmp_path):
    _, tiered = _pair(tmp_path, {
        "optimizer": "sgd", "ttl_seconds": None, "admit": {}, "eviction": "lfu"
    }, 100)
    tiered.lookup(torch.arange(10), now=1)  # 10 new: misses
    tiered.lookup(torch.tensor([1, 1, 2, 3]), now=1)  # 3 distinct, all in DRAM
    assert tiered.hit_rate() == pytest.approx(3 / 13)


def test_expiry_reaches_rows_on_disk(tmp_path):
    plain, tiered = _pair(tmp_path, {
        "optimizer": "sgd", "ttl_seconds": 10.0, "admit": {}, "eviction": "lru"
    }, 0)
    for t in (plain, tiered):
        t.lookup(torch.arange(20), now=100)
        t.lookup(torch.arange(10), now=105)
    tiered.trim(target_rows=0)
    assert tiered.cold_rows == 20
    assert plain.evict(now=112).sort().values.tolist() == list(range(10, 20))
    assert tiered.evict(now=112).sort().values.tolist() == list(range(10, 20))
    assert tiered.cold_rows == 10 and len(tiered) == 10
    _assert_same(plain, tiered)


def test_storage_settings_are_validated(tmp_path):
    assert parse_bytes("4GiB") == 4 << 30
    assert parse_bytes("1.5 MiB") == 3 << 19
    with pytest.raises(ValueError, match="not a size like 4GiB"):
        StorageConfig(memory_budget="4 parsecs", path=str(tmp_path))
    with pytest.raises(ValueError, match="unknown unit 'iB'"):
        StorageConfig(memory_budget="4PiB", path=str(tmp_path))
    with pytest.raises(ValueError, match="under 64 KiB"):
        StorageConfig(memory_budget=1000, path=str(tmp_path))
    with pytest.raises(ValueError, match="capacity and storage"):
        TableConfig(capacity=10, storage={"memory_budget": "1GiB", "path": str(tmp_path)})


def test_a_folder_in_use_is_refused_with_a_reason(tmp_path):
    cfg = TableConfig(storage={"memory_budget": "1GiB", "path": str(tmp_path)})
    first = build_table(cfg, "t")
    with pytest.raises(OSError, match="own `storage.path`"):
        build_table(cfg, "t")
    first.close()
