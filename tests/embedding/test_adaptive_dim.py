"""Frequency-adaptive widths: rare ids keep rare_dim values, ids seen often get the rest."""

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.embedding.adaptive_dim import FREQUENT, build_tables, split_settings
from streamrec.embedding.collection import EmbeddingCollection
from streamrec.schema import EmbeddingFeature, Schema
from streamrec.table_config import TableConfig

SETTINGS = TableConfig(dim=6, rare_dim=2, promote_after=3, optimizer="sgd", lr=1.0,
                       init_scale=0.5, sketch_width=1 << 12)


def _collection(
    settings: TableConfig = SETTINGS, two_features: bool = False
) -> tuple[EmbeddingCollection, Schema]:
    features = [EmbeddingFeature(name="item", table="items")]
    if two_features:
        features.append(EmbeddingFeature(name="also", table="items"))
    schema = Schema(embeddings=features)
    return EmbeddingCollection(schema, build_tables({"items": settings})), schema


def _batch(schema: Schema, ids: list[int]):
    columns = {f.name: ids for f in schema.embeddings}
    return schema.encode(pa.table(columns), with_labels=False)


def test_the_table_comes_in_two_parts_of_the_right_widths():
    rare, frequent = split_settings(SETTINGS)
    assert rare.dim == 2 and rare.rare_dim is None
    assert frequent is not None and frequent.dim == 4 and frequent.admit_min_count == 3
    assert split_settings(TableConfig(dim=8)) == (TableConfig(dim=8), None)
    coll, _ = _collection()
    assert sorted(coll.tables) == ["items", "items" + FREQUENT]
    assert coll.dim("item") == 6 and coll.feature_order == ["item"]
    with pytest.raises(ValueError, match="rare_dim"):
        TableConfig(dim=4, rare_dim=4)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=25), min_size=1, max_size=8))
def test_an_id_gets_its_full_width_once_seen_promote_after_times(batches):
    coll, schema = _collection()
    coll.train()
    seen: Counter = Counter()
    for ids in batches:
        seen.update(ids)
        out = coll(_batch(schema, ids)).pooled["item"]
        assert out.shape == (len(ids), 6)
    coll.eval()
    probe = sorted(seen)
    out = coll(_batch(schema, probe)).pooled["item"]
    promoted = np.array([seen[i] >= 3 for i in probe])
    tail_set = (out[:, 2:] != 0).any(dim=1).numpy()
    assert (tail_set == promoted).all()  # the sketch is wide enough to count exactly here
    assert (out[:, :2] != 0).any(dim=1).all()  # every admitted id has its rare part
    assert len(coll.tables["items" + FREQUENT]) == int(promoted.sum())


def test_both_parts_learn_from_one_backward():
    coll, schema = _collection(SETTINGS.model_copy(update={"promote_after": 5}), True)
    coll.train()
    batch = _batch(schema, [7, 7, 7, 8])
    coll(batch)  # 7 is promoted (seen 6 times across both features), 8 is not (2, then 4)
    before = coll.eval()(batch).pooled["item"].detach().clone()
    coll.train()
    out = coll(batch).pooled
    (out["item"].sum() + out["also"].sum()).backward()
    coll.apply_row_gradients()
    after = coll.eval()(batch).pooled["item"]
    moved = (after - before).abs() > 1e-6
    assert moved[0].all()  # id 7: rare and frequent values both stepped
    assert moved[3, :2].all() and (after[3, 2:] == 0).all()  # id 8: only its rare part


def test_sequences_come_back_at_full_width_with_their_promoted_parts():
    schema = Schema(embeddings=[EmbeddingFeature(name="hist", table="items", max_length=4)])
    coll = EmbeddingCollection(schema, build_tables({"items": SETTINGS}))
    data = pa.table({"hist": pa.array([[1, 1, 1, 2], [1, 3]], pa.list_(pa.int64()))})
    batch = schema.encode(data, with_labels=False)
    coll.train()
    coll(batch)  # 1 seen 4 times: promoted; 2 and 3 once
    coll.eval()
    rows, mask = coll(batch).sequences["hist"]
    assert rows.shape == (2, 4, 6) and list(coll(batch).sequences) == ["hist"]
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]
    filled = (rows[..., 2:] != 0).any(dim=2)
    assert filled.tolist() == [[True, True, True, False], [True, False, False, False]]


def test_a_trained_model_saves_serves_and_syncs_its_promotions(tmp_path, ml100k):
    """The loop with adaptive widths: train, save, serve (a Snapshot, as the server holds
    it), train on, and the deltas bring the new promotions: scores equal the trainer's."""
    from streamrec.config import load_config
    from streamrec.models.persistence import load_model
    from streamrec.serving.snapshot import Snapshot
    from streamrec.store.delta import read_delta
    from streamrec.train.delta_export import DeltaExporter
    from streamrec.train.job import run_training
    from tests.conftest import REPO

    cfg = load_config(REPO / "examples" / "ml100k_deepfm.yaml")
    cfg.train.epochs = 1
    cfg.default_table = cfg.default_table.model_copy(update={"rare_dim": 4, "promote_after": 5})
    result, model_dir = run_training(cfg, tmp_path / "run", progress=False)
    assert result.metrics["label"]["auc"] > 0.7
    trainer = load_model(model_dir)
    served = Snapshot(load_model(model_dir))
    items = trainer.model.dynamic_tables()["item_id" + FREQUENT]
    rare_items = trainer.model.dynamic_tables()["item_id"]
    assert 0 < len(items) < len(rare_items)  # some items promoted, not all
    rows = ml100k.slice(0, 2000)
    batch = trainer.config.schema.encode(rows)
    assert torch.equal(torch.from_numpy(served.predict_batch(batch)), trainer.model.predict(batch))
    exporter = DeltaExporter(trainer.model, tmp_path / "deltas", trainer.manifest.model_version)
    trainer.model.train()
    fresh_ids = torch.arange(10**6, 10**6 + 3).repeat(5)  # three new items, seen 5 times each
    more = rows.slice(0, 15).set_column(
        rows.schema.get_field_index("item_id"), "item_id", pa.array(fresh_ids.numpy())
    )
    trainer.model(trainer.config.schema.encode(more))
    exporter.export()
    trainer.model.eval()
    served.apply_delta(read_delta(tmp_path / "deltas", 1))
    check = trainer.config.schema.encode(more)
    assert torch.equal(torch.from_numpy(served.predict_batch(check)), trainer.model.predict(check))
    promoted = items.lookup(fresh_ids[:3], insert=False)
    assert (promoted != 0).any(dim=1).all()  # the new items were promoted, and synced
