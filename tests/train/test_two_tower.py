"""The two-tower retriever trains through the one Trainer: its loss, its positives, and what the
Trainer gives every model — kill-safe resume and TTL eviction — on ML-100k."""

from pathlib import Path

import pyarrow as pa
import pytest
import torch

from streamrec.api import train
from streamrec.config import load_config
from streamrec.data.errors import DeadLetter
from streamrec.data.splits import open_splits
from streamrec.models.persistence import load_model
from streamrec.models.registry import build_model

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "ml100k_two_tower.yaml"


@pytest.fixture(scope="module")
def sample():
    """(fitted config, 64 training rows of ML-100k)."""
    config = load_config(CONFIG)
    rows = next(iter(open_splits(config.data, DeadLetter()).train())).slice(0, 64)
    table = pa.Table.from_batches([rows])
    config.schema_ = config.schema.fit(table)
    return config, table


def _model(config):
    torch.manual_seed(0)
    return build_model(config.model, config.schema, config.table_configs())


def test_with_clicks_in_the_schema_only_clicked_rows_are_positives(sample, ml100k):
    config, table = sample
    model = _model(config).train()
    batch = config.schema.encode(table, with_labels=False)
    clicked = torch.zeros(batch.size, 1)
    clicked[::4] = 1.0  # a joined impression log: one row in four clicked
    batch.labels = clicked
    logits = model(batch)
    assert logits.shape == (batch.size // 4, batch.size // 4)
    objective = model.objective(logits, batch)
    assert objective.terms == batch.size // 4 and objective.scores is None
    batch.labels = torch.zeros(batch.size, 1)
    batch.labels[3] = 1.0  # one click: no other clicked item to tell it from
    assert model.objective(model(batch), batch).terms == 0
    batch.labels = torch.zeros(batch.size, 1)  # nothing clicked: nothing to learn, no rows made
    before = {name: len(t) for name, t in model.dynamic_tables().items()}
    objective = model.objective(model(batch), batch)
    assert objective.terms == 0 and float(objective.loss.detach()) == 0.0
    assert {name: len(t) for name, t in model.dynamic_tables().items()} == before


def test_the_in_batch_loss_corrects_for_item_frequency(sample, ml100k):
    config, table = sample
    model = _model(config).eval()
    batch = config.schema.encode(table, with_labels=False)
    plain = model(batch)
    items = batch.sparse["item_id"].values
    model.item_frequency.seed(torch.cat([items[:1].repeat(1000), items]))  # the first: popular
    corrected = model(batch)
    popular = items == items[0]
    change = (plain - corrected).detach().nan_to_num(posinf=0, neginf=0)
    # log(1001 / 1) ≈ 6.9 nats more for the popular item's column than for the others'
    assert float(change[:, popular].mean()) > float(change[:, ~popular].mean()) + 5


def test_a_resumed_two_tower_run_ends_where_an_uninterrupted_one_does(tmp_path, ml100k):
    config = load_config(CONFIG)
    config.train.epochs = 2
    straight = train(config, tmp_path / "straight", progress=False)
    config.train.epochs = 1
    train(config, tmp_path / "halves", progress=False)
    config.train.epochs = 2
    resumed = train(config, tmp_path / "halves", resume=True, progress=False)
    assert resumed.details["resumed_from_step"] == straight.details["steps"] // 2
    a, b = load_model(straight.model_dir).model, load_model(resumed.model_dir).model
    for name, weight in a.dense_state_dict().items():  # item frequency included
        assert torch.equal(weight, b.dense_state_dict()[name]), name
    assert resumed.metrics["recall@50"] == straight.metrics["recall@50"]


def test_a_capacity_on_the_retrievers_tables_is_kept_by_eviction(tmp_path, ml100k):
    """Two-tower tables used to accept capacity, TTL and tiers and ignore them."""
    config = load_config(CONFIG)
    config.train.epochs = 1
    config.train.evict_every_steps = 10
    config.tables = {"user_id": config.default_table.model_copy(update={"capacity": 300})}
    report = train(config, tmp_path / "bounded", progress=False)
    users = load_model(report.model_dir).model.dynamic_tables()["user_id"]
    assert 0 < len(users) <= 300  # the epoch's end evicts too: the saved model keeps the bound
    assert report.metrics["recall@50"] > report.metrics["baseline_recall@50"] / 2
