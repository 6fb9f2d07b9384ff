import numpy as np
import pyarrow as pa
import torch

from streamrec.embedding import DynamicTable
from streamrec.embedding.collection import EmbeddingCollection
from streamrec.schema import EmbeddingFeature, Schema


def _setup(pooling="sum", max_length=None):
    schema = Schema(
        embeddings=[
            EmbeddingFeature(name="item", table="items", missing="empty"),
            EmbeddingFeature(
                name="hist",
                table="items",
                pooling=pooling,
                weights="hist_w",
                max_length=max_length,
                missing="empty",
            ),
        ]
    )
    data = pa.table(
        {
            "item": [1, 2, 3],
            "hist": pa.array([[1, 2], [], [2, 2, 4]], pa.list_(pa.int64())),
            "hist_w": pa.array([[1.0, 0.5], [], [1.0, 2.0, 1.0]], pa.list_(pa.float32())),
        }
    )
    table = DynamicTable(dim=4, optimizer="sgd", lr=1.0)
    return (
        EmbeddingCollection(schema, {"items": table}),
        schema.encode(data, with_labels=False),
        table,
    )


def test_pooling_matches_a_manual_computation():
    for pooling in ("sum", "mean", "sqrtn"):
        coll, batch, table = _setup(pooling)
        out = coll(batch).pooled
        e = {i: table.lookup(torch.tensor([i]), insert=False)[0] for i in (1, 2, 3, 4)}
        assert torch.allclose(out["item"], torch.stack([e[1], e[2], e[3]]))
        sums = [e[1] + 0.5 * e[2], torch.zeros(4), e[2] + 2 * e[2] + e[4]]
        norm = {"sum": [1, 1, 1], "mean": [2, 1, 3], "sqrtn": [2**0.5, 1, 3**0.5]}[pooling]
        expected = torch.stack([s / n for s, n in zip(sums, norm, strict=True)])
        assert torch.allclose(out["hist"], expected, atol=1e-7)


def test_the_step_updates_only_the_rows_of_the_batch_and_backward_none():
    coll, batch, table = _setup()
    table.lookup(torch.tensor([1, 2, 3, 4, 99]), now=0)  # 99: a row the batch does not touch
    before = table.lookup(torch.tensor([1, 2, 3, 4, 99]), insert=False)
    out = coll(batch).pooled
    (out["item"].sum() + out["hist"].sum()).backward()
    after_backward = table.lookup(torch.tensor([1, 2, 3, 4, 99]), insert=False)
    assert torch.equal(after_backward, before)  # rows wait for the optimizer step
    assert len(coll.row_gradients) == 1
    coll.apply_row_gradients()
    assert coll.row_gradients == []
    after = table.lookup(torch.tensor([1, 2, 3, 4, 99]), insert=False)
    # d/dw of the sum: item 1 → 1 (item) + 1 (hist w=1); item 2 → 1 + 0.5 + 2 + 1; 3 → 1; 4 → 1
    expected_grad = torch.tensor([2.0, 4.5, 1.0, 1.0, 0.0])[:, None].expand(5, 4)
    assert torch.allclose(before - after, expected_grad, atol=1e-6)


def test_eval_mode_admits_nothing_and_builds_no_graph():
    coll, batch, table = _setup()
    coll.eval()
    out = coll(batch).pooled
    assert len(table) == 0 and not out["item"].requires_grad
    assert torch.count_nonzero(out["item"]) == 0


def test_sequences_come_back_padded_with_a_mask():
    coll, batch, table = _setup(max_length=3)
    seq, mask = coll(batch).sequences["hist"]
    assert seq.shape == (3, 3, 4)
    assert mask.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    e2 = table.lookup(torch.tensor([2]), insert=False)[0]
    assert torch.equal(seq[2, 0], e2) and torch.equal(seq[2, 1], e2)
    assert torch.count_nonzero(seq[1]) == 0


def test_groups_stack_features_without_a_copy_and_match_pooled():
    coll, batch, table = _setup()
    out = coll(batch)
    names = coll.feature_order
    stacked = out.stacked(names)
    assert stacked.shape == (3, 2, 4)
    for i, n in enumerate(names):
        assert torch.equal(stacked[:, i], out.pooled[n])
    assert out.stacked(names[::-1]).data_ptr() != stacked.data_ptr()


def test_one_id_per_row_features_pool_and_train_like_bags():
    """Criteo-shaped groups (every bag one id, shared table): the manual lookup's values in
    [B, F, dim] order, whatever the pooling mode, and repeated ids get their gradients summed."""
    schema = Schema(
        embeddings=[
            EmbeddingFeature(name="a", table="t", pooling="mean"),
            EmbeddingFeature(name="b", table="t", pooling="sqrtn"),
        ]
    )
    data = pa.table({"a": [5, 6, 5], "b": [6, 7, 5]})
    table = DynamicTable(dim=3, optimizer="sgd", lr=1.0)
    coll = EmbeddingCollection(schema, {"t": table})
    emb = coll(schema.encode(data, with_labels=False))
    e = {i: table.lookup(torch.tensor([i]), insert=False)[0] for i in (5, 6, 7)}
    stacked = emb.stacked(["a", "b"])
    expected = torch.stack([torch.stack([e[x], e[y]]) for x, y in [(5, 6), (6, 7), (5, 5)]])
    assert torch.equal(stacked, expected) and torch.equal(emb.pooled["b"], expected[:, 1])
    stacked.sum().backward()
    coll.apply_row_gradients()
    after = {i: table.lookup(torch.tensor([i]), insert=False)[0] for i in (5, 6, 7)}
    for fid, times in {5: 3, 6: 2, 7: 1}.items():
        assert torch.allclose(e[fid] - after[fid], torch.full((3,), float(times)))


def test_training_forward_counts_every_occurrence_of_every_table():
    """Tables are resolved by different threads; each table's counts and last-seen times are
    exact (a lost or doubled increment would show here)."""
    names = [f"C{i}" for i in range(8)]
    schema = Schema(embeddings=[EmbeddingFeature(name=n, missing="empty") for n in names])
    tables = {n: DynamicTable(dim=4, name=n) for n in names}
    coll = EmbeddingCollection(schema, tables)
    rng = np.random.default_rng(3)
    columns = {n: np.minimum(rng.zipf(1.2, 5000), 300).astype(np.int64) for n in names}
    batch = schema.encode(pa.table(columns), with_labels=False)
    coll.now = 1234.0
    coll(batch)
    for n, t in tables.items():
        fids, expected = np.unique(columns[n], return_counts=True)
        rows = t.resolve(fids, insert=False)
        assert (rows >= 0).all()
        state = t.state_dict()
        assert np.array_equal(state["count"].numpy()[rows], expected)
        assert (state["last_seen"].numpy()[rows] == 1234).all()


def test_collection_sees_a_table_reloaded_in_place():
    """Loading a state into a table replaces all of its storage: the group's cached addresses
    must be rebuilt, or the next batch would read freed memory."""
    coll, batch, table = _setup()
    coll(batch)  # caches the group's addresses
    donor = DynamicTable(dim=4, optimizer="sgd", lr=1.0, seed=7)  # other values than table's
    donor.lookup(torch.arange(1, 5000, dtype=torch.int64), now=0)  # many more rows: new chunks
    table.load_state_dict(donor.state_dict())
    coll.eval()
    out = coll(batch).pooled["item"]
    assert torch.equal(out, donor.lookup(torch.tensor([1, 2, 3]), insert=False))
