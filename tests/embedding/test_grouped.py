"""TableGroup — the path training and serving take (one kernel call over all of a model's
tables) — behaves exactly like its tables driven one by one through DynamicTable's own
lookup / apply_gradients / evict, which test_table.py and test_tiered.py hold to the table
contract. So what those property tests certify is what a training step does."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.embedding import DynamicTable
from streamrec.embedding.grouped import TableGroup

OPTIMIZERS = ["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"]
ids = st.lists(st.integers(-40, 40), max_size=25)  # small range: repeats and collisions
step = st.tuples(
    st.sampled_from(["train", "serve", "evict"]),
    st.lists(ids, min_size=3, max_size=3),  # one id list per table
    st.integers(0, 2**31 - 1),  # gradient seed
)


def _tables(optimizer: str, admit: int, ttl: float | None, capacity: int | None):
    return [
        DynamicTable(dim=4, optimizer=optimizer, lr=0.1, chunk_rows=8, admit_min_count=admit,
                     ttl_seconds=ttl, capacity=capacity, name=f"t{i}")
        for i in range(3)
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(OPTIMIZERS),
    st.integers(1, 2),
    st.sampled_from([None, 3.0]),
    st.sampled_from([None, 20]),
    st.lists(step, min_size=1, max_size=10),
)
def test_a_group_step_equals_its_tables_stepped_one_by_one(optimizer, admit, ttl, capacity, ops):
    grouped, alone = _tables(optimizer, admit, ttl, capacity), _tables(optimizer, admit, ttl,
                                                                       capacity)
    group = TableGroup(grouped)
    for now, (op, per_table, seed) in enumerate(ops):
        if op == "evict":
            for g, a in zip(grouped, alone, strict=True):
                assert set(g.evict(now=now).tolist()) == set(a.evict(now=now).tolist())
            continue
        fids = np.concatenate([np.asarray(v, np.int64) for v in per_table])
        segments = np.cumsum([0] + [len(v) for v in per_table]).astype(np.int64)
        train = op == "train"
        rows, inverse, handle = group.lookup(fids, segments, now=now, insert=train)
        got = rows[torch.from_numpy(inverse)]
        want = torch.cat([
            a.lookup(torch.tensor(v, dtype=torch.int64), now=now, insert=train)
            for a, v in zip(alone, per_table, strict=True)
        ])
        assert torch.equal(got, want)
        if train and len(fids):
            grads = torch.randn(len(fids), 4, generator=torch.Generator().manual_seed(seed))
            unique_grads = torch.zeros(rows.shape[0], 4).index_add_(
                0, torch.from_numpy(inverse), grads)
            group.apply_gradients(handle, unique_grads)
            for a, v, g in zip(alone, per_table, grads.split([len(v) for v in per_table]),
                               strict=True):
                if v:
                    a.apply_gradients(torch.tensor(v, dtype=torch.int64), g)
    for g, a in zip(grouped, alone, strict=True):
        live = a.live_rows()
        fids = a.state_dict()["fid"][live]
        assert len(g) == len(a)
        assert torch.allclose(g.lookup(fids, now=len(ops), insert=False),
                              a.lookup(fids, now=len(ops), insert=False), atol=1e-6)


def test_tables_of_different_settings_cannot_share_a_group():
    with pytest.raises(ValueError, match="one dim, optimizer"):
        TableGroup([DynamicTable(dim=4), DynamicTable(dim=8)])
    with pytest.raises(ValueError, match="at least one table"):
        TableGroup([])
