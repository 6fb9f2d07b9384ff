"""Every model trains on real MovieLens-100k rows and its loss falls; a user model plugs in."""

import pytest
import torch
import torch.nn.functional as F

from streamrec.config import ModelConfig, TableConfig
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
            sparse.step()
    model.eval()
    with torch.no_grad():
        after = [F.binary_cross_entropy_with_logits(model(b), b.labels).item() for b in batches]
        preds = model.predict(batches[0])
    assert sum(after) < sum(before) - 0.05, (before, after)
    assert preds.shape == (500, 2) and float(preds.min()) >= 0 and float(preds.max()) <= 1


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
