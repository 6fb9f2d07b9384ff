"""gbdt_lr: the trees' inputs (vocabularies, codes), the trees finding what a linear model
cannot, the leaves trained on a stream with the trees kept, served over HTTP, and the refusals
(an unfitted model, a fresh online run, ONNX)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.batch import JaggedIds
from streamrec.config import ConfigError, parse_config
from streamrec.models.gbdt_lr import LEAF_TABLE, TreeInputs, first_ids
from streamrec.models.persistence import load_model
from streamrec.models.registry import build_model
from streamrec.store import read_manifest
from streamrec.train.job import run_training
from streamrec.train.metrics import auc
from tests.serving.conftest import Server


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=200),
    st.integers(1, 4),
    st.integers(1, 3),
)
def test_codes_follow_frequency_with_one_code_for_the_rest(values, levels, min_count):
    ids = np.array(values, np.int64)
    present = ids != 0  # 0 stands for "no id" here
    inputs = TreeInputs.fit(0, {"f": (ids, present)}, levels, min_count)
    vocab = inputs.vocabularies["f"]
    counts = {v: int((ids[present] == v).sum()) for v in set(ids[present].tolist())}
    assert len(vocab) <= levels and all(counts[v] >= min_count for v in vocab)
    assert [counts[v] for v in vocab] == sorted((counts[v] for v in vocab), reverse=True)
    left_out = [v for v in counts if v not in set(vocab.tolist()) and counts[v] >= min_count]
    assert all(counts[v] <= counts[vocab[-1]] for v in left_out)  # the most frequent kept
    codes = inputs.codes("f", ids, present)
    assert np.isnan(codes[~present]).all()
    rank = {int(v): i for i, v in enumerate(vocab)}
    expected = [rank.get(int(v), len(vocab)) for v in ids[present]]
    assert codes[present].tolist() == expected


def test_a_row_with_several_ids_reads_its_first():
    ids = JaggedIds.from_lengths(torch.tensor([7, 8, 9, 4]), torch.tensor([2, 0, 1, 1]))
    first, present = first_ids(ids)
    assert first[present].tolist() == [7, 9, 4] and present.tolist() == [True, False, True, True]


def _write(path: Path, n: int, seed: int) -> None:
    """A click that needs thresholds: clicked when x is in a middle band (any user), plus a
    small per-user effect. A linear model in x sees almost nothing."""
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    user = rng.integers(0, 40, n)
    p = np.where((x > 0.35) & (x < 0.65), 0.75, 0.1) + 0.1 * (user % 2)
    table = pa.table({
        "label": (rng.random(n) < p).astype(np.float32),
        "x": x,
        "user_id": user,
        "timestamp": np.arange(n, dtype=np.int64) + seed * 100_000,
    })
    pq.write_table(table, path)


def _config(tmp: Path, model: str, **params) -> dict:
    return {
        "name": f"band_{model}",
        "schema": {
            "labels": [{"name": "label"}],
            "dense": [{"name": "x"}],
            "embeddings": [{"name": "user_id"}],
            "timestamp": "timestamp",
        },
        "data": {"format": "parquet", "train": str(tmp / "train.parquet"),
                 "valid": [str(tmp / "valid.parquet")], "batch_size": 256},
        "model": {"name": model, "params": {"rate_search": False, **params}},
        "train": {"epochs": 2, "seed": 0},
    }


@pytest.fixture(scope="module")
def band(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("band")
    _write(tmp / "train.parquet", 6000, 0)
    _write(tmp / "valid.parquet", 2000, 1)
    _write(tmp / "stream.parquet", 3000, 2)
    return tmp


@pytest.fixture(scope="module")
def band_run(band) -> Path:
    run_training(parse_config(_config(band, "gbdt_lr")), band / "gbdt_run", progress=False)
    return band / "gbdt_run"


def test_the_trees_find_the_band_that_lr_cannot(band, band_run):
    run_training(parse_config(_config(band, "lr")), band / "lr_run", progress=False)
    lr_auc = read_manifest(band / "lr_run" / "model").metrics["label"]["auc"]
    manifest = read_manifest(band_run / "model")
    hybrid_auc = manifest.metrics["label"]["auc"]
    prepared = manifest.train["prepared"]
    assert prepared["rows"] == 6000 and prepared["features"]["ids"] == ["user_id"]
    assert 1 <= prepared["trees"] <= 200 and prepared["trees_valid_auc"] > 0.75
    assert lr_auc < 0.62 < 0.75 < hybrid_auc, (lr_auc, hybrid_auc)


def test_the_saved_trees_score_as_lightgbm_does(band, band_run):
    loaded = load_model(band_run / "model")
    model = loaded.model
    batch = loaded.config.schema.encode(pq.read_table(band / "valid.parquet"))
    leaves = model.leaf_ids(batch)
    assert leaves.shape == (batch.size, model.fit_report["trees"])
    assert (leaves // model.tree_params["num_leaves"] == np.arange(leaves.shape[1])).all()
    trees_alone = torch.sigmoid(model.tree_logits(batch)).numpy()
    labels = batch.labels[:, 0].numpy()
    assert auc(labels, trees_alone) == pytest.approx(model.fit_report["trees_valid_auc"], abs=1e-6)
    assert len(model.dynamic_tables()[LEAF_TABLE]) > model.fit_report["trees"]  # leaves learnt


def test_online_training_moves_the_leaf_weights_and_keeps_the_trees(band, band_run, tmp_path):
    from streamrec.data.stream import LocalLog, LocalLogSource
    from streamrec.train.online import OnlineTrainer

    log = LocalLog(tmp_path / "log")
    for row in pq.read_table(band / "stream.parquet").to_pylist():
        log.append(row)
    log.close()
    before = load_model(band_run / "model").model
    cfg = parse_config(_config(band, "gbdt_lr") | {
        "online": {"init_model": str(band_run / "model"), "sync_every_batches": 5}
    })
    online = OnlineTrainer(cfg, LocalLogSource(tmp_path / "log"), tmp_path / "online",
                           progress=False)
    online.run(stop_when_idle=0.5)
    assert online.events_trained == 3000
    after = online.model
    assert torch.equal(after.trees, before.trees)
    leaf_before = before.dynamic_tables()[LEAF_TABLE]
    leaf_after = after.dynamic_tables()[LEAF_TABLE]
    rows = leaf_before.live_fids()
    moved = np.abs(leaf_after.gather_rows(leaf_after.resolve(rows, insert=False))
                   - leaf_before.gather_rows(leaf_before.resolve(rows, insert=False)))
    assert moved.max() > 1e-4

    fresh = parse_config(_config(band, "gbdt_lr"))
    with pytest.raises(ConfigError, match="streamrec train"):
        OnlineTrainer(fresh, LocalLogSource(tmp_path / "log"), tmp_path / "fresh", progress=False)


def test_an_unfitted_model_refuses_to_score_and_onnx_refuses_it(band, band_run, tmp_path):
    cfg = parse_config(_config(band, "gbdt_lr"))
    cfg.schema_ = load_model(band_run / "model").config.schema
    model = build_model(cfg.model, cfg.schema, cfg.table_configs())
    batch = cfg.schema.encode(pq.read_table(band / "valid.parquet").slice(0, 8))
    assert not model.prepared
    with pytest.raises(RuntimeError, match="streamrec train"):
        model(batch)

    from streamrec.onnx_export import OnnxExportError, export_onnx

    with pytest.raises(OnnxExportError, match="LightGBM"):
        export_onnx(band_run / "model", tmp_path / "triton")


@pytest.mark.slow
def test_served_scores_are_the_models(band_run):
    loaded = load_model(band_run / "model")
    xs = np.linspace(0, 1, 50).tolist()
    rows = pa.table({"x": xs, "user_id": [3] * 50})
    expected = loaded.model.predict(loaded.config.schema.encode(rows, with_labels=False))
    server = Server(band_run)
    try:
        body = {"context": {"user_id": 3}, "candidates": [{"x": x} for x in xs]}
        reply = server.post("/v1/rank", json=body)
        assert reply.status_code == 200, reply.text
        np.testing.assert_allclose(reply.json()["scores"]["label"], expected[:, 0].numpy(),
                                   rtol=1e-5, atol=1e-6)
        bad = server.post("/v1/rank", json={"context": {}, "candidates": [{"x": "high"}]})
        assert bad.status_code == 422 and "x" in bad.json()["error"]
    finally:
        server.stop()


def test_the_rate_search_fits_the_trees_once_and_every_trial_reads_them(band, monkeypatch):
    from streamrec.models.gbdt_lr import GBDTLR
    from streamrec.train.rate_search import TRIALS

    fitted, scored_trees = [], set()
    prepare, forward = GBDTLR.prepare, GBDTLR.forward

    def counting_prepare(self, *args, **kwargs):
        fitted.append(self)
        return prepare(self, *args, **kwargs)

    def noting_forward(self, batch):
        scored_trees.add(bytes(self.trees.numpy()))
        return forward(self, batch)

    monkeypatch.setattr(GBDTLR, "prepare", counting_prepare)
    monkeypatch.setattr(GBDTLR, "forward", noting_forward)
    cfg = _config(band, "gbdt_lr", rate_search=True)
    cfg["train"]["epochs"] = 1
    run_training(parse_config(cfg), band / "searched", progress=False)
    manifest = read_manifest(band / "searched" / "model")
    assert len(fitted) == 1 and len(scored_trees) == 1
    assert len(manifest.train["rate_search"]) == TRIALS
    assert manifest.config["model"]["params"]["row_optimizer"]["lr"] in {0.1, 0.3, 1.0}
