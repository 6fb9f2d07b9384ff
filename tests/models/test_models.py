"""Every model trains on real MovieLens-100k rows and its loss falls; a user model plugs in."""

import pytest
import torch
import torch.nn.functional as F

from streamrec.config import ConfigError, ModelConfig, TableConfig, parse_config
from streamrec.data.movielens import add_history
from streamrec.embedding.sparse_optimizer import SparseOptimizer
from streamrec.models import MODELS, RankingModel, build_model, register_model
from streamrec.schema import EmbeddingFeature, Label, Schema

SCHEMA = Schema(
    labels=[Label(name="label"), Label(name="rating", threshold=5)],
    embeddings=[
        EmbeddingFeature(name="user_id"),
        EmbeddingFeature(name="item_id", table="item"),
        EmbeddingFeature(name="history", table="item", max_length=10, pooling="mean"),
        EmbeddingFeature(name="genres", pooling="mean"),
        EmbeddingFeature(name="occupation"),
    ],
    group_id="user_id",
    timestamp="timestamp",
)
PARAMS = {
    "din": {"sequence": "history", "target": "item_id"},
    "wide_deep": {"crosses": [["user_id", "genres"]]},
}


@pytest.fixture(scope="module")
def batches(ml100k):
    table = add_history(ml100k.slice(0, 6000), length=10)
    return [SCHEMA.encode(table.slice(i, 500)) for i in range(0, 6000, 500)]


VARIANTS = [(name, PARAMS.get(name, {})) for name in sorted(set(MODELS) - {"two_tower"})]
VARIANTS.append(("dlrm", {"concat_embeddings": True}))


@pytest.mark.parametrize(("name", "params"), VARIANTS)
def test_model_learns_on_real_rows(name, params, batches):
    torch.manual_seed(0)
    tables = {t: TableConfig(dim=8, optimizer="adagrad", lr=0.05) for t in SCHEMA.tables()}
    model = build_model(ModelConfig(name=name, params=params), SCHEMA, tables)
    model.prepare(lambda: batches)  # what a model learns in batch first (gbdt_lr's trees)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sparse = SparseOptimizer(model)
    model.eval()
    with torch.no_grad():
        before = [F.binary_cross_entropy_with_logits(model(b), b.labels).item() for b in batches]
    model.train()
    for _ in range(3):
        for b in batches:
            loss = F.binary_cross_entropy_with_logits(model(b), b.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sparse.step(examples=b.size)
    model.eval()
    with torch.no_grad():
        after = [F.binary_cross_entropy_with_logits(model(b), b.labels).item() for b in batches]
        preds = model.predict(batches[0])
    assert sum(after) < sum(before) - 0.05, (before, after)
    assert preds.shape == (500, 2) and float(preds.min()) >= 0 and float(preds.max()) <= 1


@pytest.mark.parametrize(("name", "params"), VARIANTS)
def test_model_trains_under_bf16_autocast(name, params, batches):
    """`train.precision: bf16` runs the forward under autocast; every model's backward must
    take it (a custom autograd function once mixed bf16 and fp32 there)."""
    torch.manual_seed(0)
    tables = {t: TableConfig(dim=8, optimizer="adagrad", lr=0.05) for t in SCHEMA.tables()}
    model = build_model(ModelConfig(name=name, params=params), SCHEMA, tables)
    model.prepare(lambda: batches)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    for b in batches[:3]:
        with torch.autocast("cpu", torch.bfloat16):
            logits = model(b)
        loss = F.binary_cross_entropy_with_logits(logits.float(), b.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss), name
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_a_user_model_is_a_subclass_with_a_forward(batches):
    class MeanDot(RankingModel):
        def forward(self, batch):
            emb = self.embed(batch)
            return (
                (emb.pooled["user_id"] * emb.pooled["item_id"])
                .sum(1, keepdim=True)
                .expand(-1, self.num_tasks)
            )

    register_model("mean_dot", MeanDot)
    try:
        tables = {t: TableConfig(dim=4) for t in SCHEMA.tables()}
        model = build_model(ModelConfig(name="mean_dot"), SCHEMA, tables)
        assert model(batches[0]).shape == (500, 2)
    finally:  # the registry is process-wide: leave it as found
        MODELS.pop("mean_dot", None)


def test_bad_model_configs_are_clear():
    from streamrec.config import ConfigError

    tables = {t: TableConfig(dim=4) for t in SCHEMA.tables()}
    with pytest.raises(ConfigError, match="unknown model 'dfm'"):
        build_model(ModelConfig(name="dfm"), SCHEMA, tables)
    with pytest.raises(ConfigError, match="no parameter"):
        build_model(ModelConfig(name="deepfm", params={"hiden": [8]}), SCHEMA, tables)
    with pytest.raises(ConfigError, match="sequence feature 'nope'"):
        build_model(ModelConfig(name="din", params={"sequence": "nope"}), SCHEMA, tables)


def test_lr_defaults_to_per_id_ftrl_and_its_own_bias_rate():
    """LR's defaults (models/lr.py): FTRL-Proximal on the per-id weights whatever the config's
    default_table says, the bias and dense weights at 0.05 while train.dense_lr stays the
    deep models' 1e-3 — and `row_optimizer: {}` hands the ids back to the table settings."""
    from streamrec.models.lr import FTRL_DEFAULTS
    from streamrec.train.trainer import build_dense_optimizer

    raw = {
        "name": "t",
        "schema": {
            "labels": [{"name": "label"}],
            "dense": [{"name": "x"}],
            "embeddings": [{"name": "user"}],
        },
        "default_table": {"dim": 8, "optimizer": "adagrad", "lr": 0.01},
        "model": {"name": "lr"},
        "train": {"dense_lr": 0.001},
    }
    config = parse_config(raw)
    model = build_model(config.model, config.schema, config.table_configs())
    (table,) = model.dynamic_tables().values()
    for key, value in FTRL_DEFAULTS.items():
        assert getattr(table.settings, key) == value
    assert table.dim == 1
    (group,) = build_dense_optimizer(model, config.train).param_groups
    assert group["lr"] == group["base_lr"] == 0.05

    raw["model"] = {"name": "lr", "params": {"row_optimizer": {}, "dense_lr": None}}
    config = parse_config(raw)
    model = build_model(config.model, config.schema, config.table_configs())
    (table,) = model.dynamic_tables().values()
    assert (table.settings.optimizer, table.settings.lr) == ("adagrad", 0.01)
    (group,) = build_dense_optimizer(model, config.train).param_groups
    assert group["lr"] == 0.001

    raw["model"] = {"name": "lr", "params": {"row_optimizer": {"ftrl_lambda": 1.0}}}
    config = parse_config(raw)
    with pytest.raises(ConfigError, match="ftrl_lambda"):
        build_model(config.model, config.schema, config.table_configs())
