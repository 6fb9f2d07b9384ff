"""The linear models' count-based uncertainty: exactly √Σ 1/(1 + times seen) over a row's ids,
shrinking as training sees an id, the same in a server that follows the trainer's deltas, and
absent for models without an estimate."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import torch

from streamrec.config import JobConfig
from streamrec.embedding.sparse_optimizer import SparseOptimizer
from streamrec.models.registry import build_model
from streamrec.serving.delta_apply import apply_delta
from streamrec.store.delta import read_delta
from streamrec.train.delta_export import DeltaExporter


def _config(model: str) -> JobConfig:
    config = JobConfig.model_validate({
        "name": "sigma",
        "schema": {"labels": [{"name": "click"}],
                   "embeddings": [{"name": "user_id", "kind": "int"},
                                  {"name": "item_id", "kind": "int"}]},
        "default_table": {"dim": 4},
        "model": {"name": model, "params": {"rate_search": False} if model == "lr" else {}},
    })
    config.schema_ = config.schema
    return config


def _rows(users, items) -> pa.Table:
    n = len(users)
    return pa.table({"click": np.arange(n) % 2 == 0, "user_id": users, "item_id": items})


def _train(model, schema, table: pa.Table, steps: int) -> None:
    model.train()
    sparse = SparseOptimizer(model)
    batch = schema.encode(table)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(batch), batch.labels
        )
        loss.backward()
        sparse.step(examples=batch.size)
    model.eval()


def test_sigma_is_the_count_formula_and_shrinks_with_evidence():
    config = _config("lr")
    model = build_model(config.model, config.schema, config.table_configs())
    users = [1] * 30 + [2] * 2  # user 1 seen 30 times a step, user 2 twice
    items = [10] * 16 + [11] * 16
    _train(model, config.schema, _rows(users, items), steps=3)
    query = config.schema.encode(_rows([1, 2, 3], [10, 11, 99]), with_labels=False)
    sigma = model.uncertainty(query).numpy()
    expected = np.sqrt([1 / (1 + 90) + 1 / (1 + 48), 1 / (1 + 6) + 1 / (1 + 48), 2.0])
    np.testing.assert_allclose(sigma, expected, rtol=1e-6)
    assert sigma[0] < sigma[1] < sigma[2]  # known < rarely seen < unseen
    assert model.estimates_uncertainty


def test_a_server_following_the_deltas_has_the_trainers_sigma(tmp_path):
    config = _config("lr")
    trainer_model = build_model(config.model, config.schema, config.table_configs())
    served = copy.deepcopy(trainer_model).eval()
    exporter = DeltaExporter(trainer_model, tmp_path / "deltas", base_model_version=1)
    _train(trainer_model, config.schema, _rows([1, 1, 2, 3], [10, 11, 10, 12]), steps=4)
    delta_dir = exporter.export()
    delta = read_delta(tmp_path / "deltas", int(delta_dir.name))
    assert all(d.counts is not None for d in delta.tables.values())
    apply_delta(served, delta)
    query = config.schema.encode(_rows([1, 2, 3, 4], [10, 11, 12, 13]), with_labels=False)
    np.testing.assert_allclose(served.uncertainty(query).numpy(),
                               trainer_model.uncertainty(query).numpy(), rtol=1e-6)
    assert served.uncertainty(query)[3] > served.uncertainty(query)[0]


def test_deep_models_give_no_estimate():
    config = _config("deepfm")
    model = build_model(config.model, config.schema, config.table_configs())
    batch = config.schema.encode(_rows([1], [2]), with_labels=False)
    assert not model.estimates_uncertainty and model.uncertainty(batch) is None
