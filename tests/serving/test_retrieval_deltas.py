"""The retrieval stage learns from deltas: towers, index and cached user vectors change together,
never a user vector of one model searched in an index of another."""

import numpy as np
import torch

from streamrec.models.persistence import load_model
from streamrec.serving.request import rows_table
from streamrec.serving.retrieval_stage import RecommendRequest, RetrievalStage
from streamrec.serving.retrieval_watcher import RetrievalWatcher
from streamrec.store.delta import list_deltas, read_delta
from streamrec.train.delta_export import DeltaExporter

USER = {"user_id": 1, "history": [50, 172, 133], "age": 24, "gender": "M"}


def _perturbed(model, seed: int) -> None:
    """A trainer's change: every dense weight of both towers, and some item rows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(model.user_mlp.parameters()) + list(model.item_mlp.parameters()):
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    items = model.dynamic_tables()["item_id"]
    fids = items.live_fids()[:200]
    rows = items.gather_rows(items.live_rows()[:200])
    items.upsert(fids, rows + 0.2 * torch.randn(rows.shape, generator=generator).numpy())


def _deltas(directory):
    return [read_delta(directory, v) for v in list_deltas(directory)]


def _exact_top(model, stage, user, k):
    """The top k of the catalog by the model's own exact scores."""
    with torch.inference_mode():
        u = model.user_vectors(stage.schema.encode(rows_table(user, [{}], stage.kinds), False))
        rows = list(stage.catalog.values())
        table = rows_table({}, rows, stage.kinds)
        v = model.item_vectors(stage.schema.encode(table, with_labels=False))
    scores = (v @ u.T).flatten().numpy()
    ids = np.array(list(stage.catalog.keys()))
    return set(ids[np.argsort(-scores)[:k]].tolist())


def test_a_delta_swaps_towers_index_and_user_vectors_as_one(retriever_run, tmp_path):
    stage = RetrievalStage.load(retriever_run)
    request = RecommendRequest(USER, 20, set())
    served_before = stage.retrieve(request)[0]
    vector_before = stage.user_vector(USER).copy()
    trainer_model = load_model(retriever_run).model.eval()  # an online trainer's copy
    exporter = DeltaExporter(trainer_model, tmp_path / "deltas", stage.version)
    _perturbed(trainer_model, seed=1)
    exporter.export(force_dense=True)

    def swap(put_in_service):  # where requests run: until now, they see the old towers only
        assert np.array_equal(stage.user_vector(USER), vector_before)
        assert stage.retrieve(request)[0] == served_before
        put_in_service()

    stage.apply_deltas(_deltas(tmp_path / "deltas"), swap)
    assert stage.serving_version == f"{stage.version}.1"
    with torch.inference_mode():
        expected = trainer_model.user_vectors(
            stage.schema.encode(rows_table(USER, [{}], stage.kinds), with_labels=False)
        ).numpy()
    assert np.allclose(stage.user_vector(USER), expected, atol=1e-6)  # no stale cached vector
    served = stage.retrieve(request)[0]
    assert served != served_before
    exact = _exact_top(trainer_model, stage, USER, 20)
    assert len(exact & set(served)) >= 18  # the index holds the new item vectors (HNSW: ≈)

    # The retired copy caught up with delta 1 before becoming the shadow: delta 2 lands on both
    _perturbed(trainer_model, seed=2)
    exporter.export(force_dense=True)
    stage.apply_deltas(_deltas(tmp_path / "deltas")[1:], lambda put: put())
    assert stage.serving_version == f"{stage.version}.2"
    for name, weight in trainer_model.dense_state_dict().items():
        assert torch.allclose(stage.model.dense_state_dict()[name], weight), name
    assert len(exact := _exact_top(trainer_model, stage, USER, 20)) == 20
    assert len(exact & set(stage.retrieve(request)[0])) >= 18


def test_the_watcher_serves_a_backlog_in_order_and_quarantines_a_corrupt_delta(
    retriever_run, tmp_path
):
    stage = RetrievalStage.load(retriever_run)
    deltas = tmp_path / "deltas"
    trainer_model = load_model(retriever_run).model.eval()
    exporter = DeltaExporter(trainer_model, deltas, stage.version)
    for seed in (1, 2, 3):
        _perturbed(trainer_model, seed)
        exporter.export(force_dense=True)
    (deltas / f"{2:012d}" / "dense.safetensors").write_bytes(b"bit rot")
    other = DeltaExporter(trainer_model, tmp_path / "other", stage.version + 7)
    watcher = RetrievalWatcher(stage, deltas, lambda put: put())
    watcher.check_deltas()
    assert stage.delta_version == 1 and set(watcher.quarantined) == {2}
    watcher.check_deltas()  # the ones after the bad delta are still served
    assert stage.delta_version == 3 and stage.deltas_applied == 2
    assert "dense.safetensors" in watcher.quarantined[2]  # the reason names the bad file
    for name, weight in trainer_model.dense_state_dict().items():  # delta 3 is a full dense
        assert torch.allclose(stage.model.dense_state_dict()[name], weight), name
    for _ in range(4):  # written for another base model: skipped, never applied
        other.export(force_dense=True)
    skipping = RetrievalWatcher(stage, tmp_path / "other", lambda put: put())
    skipping.check_deltas()
    assert skipping.deltas_skipped == 1 and stage.delta_version == 3  # (versions 1–3: served)


def test_a_stage_that_never_sees_a_delta_never_copies_its_towers(retriever_run, tmp_path):
    stage = RetrievalStage.load(retriever_run)
    RetrievalWatcher(stage, tmp_path / "none yet", lambda put: put()).check_deltas()
    assert stage._shadow is None and stage.delta_version == 0 and stage.deltas_applied == 0
