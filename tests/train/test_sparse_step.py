"""The explicit sparse step: embedding rows change only in the optimizer step — after one global
clip that counts them, never with a non-finite gradient, once per accumulated group — and a
model's tables travel in its state_dict."""

import io

import pyarrow as pa
import pytest
import torch

from streamrec.config import parse_config
from streamrec.models import build_model
from streamrec.train.trainer import Trainer

RAW = {
    "name": "t",
    "schema": {
        "labels": [{"name": "label"}],
        "dense": [{"name": "x"}],
        "embeddings": [{"name": "user"}, {"name": "item"}],
    },
    "default_table": {"dim": 4, "optimizer": "sgd", "lr": 1.0, "init_scale": 0.1},
    "model": {"name": "deepfm", "params": {"hidden": [8]}},
    "train": {"dense_optimizer": "sgd", "dense_lr": 0.1},
}


def _rows(n: int, seed: int) -> pa.Table:
    g = torch.Generator().manual_seed(seed)
    return pa.table(
        {
            "label": torch.randint(0, 2, (n,), generator=g).float().numpy(),
            "x": torch.rand(n, generator=g).numpy(),
            "user": torch.randint(0, 30, (n,), generator=g).numpy(),
            "item": torch.randint(0, 50, (n,), generator=g).numpy(),
        }
    )


def _trainer(**train: object) -> Trainer:
    raw = {**RAW, "train": {**RAW["train"], **train}}
    config = parse_config(raw)
    config.schema_ = config.schema.fit(_rows(64, 0))
    torch.manual_seed(0)
    model = build_model(config.model, config.schema, config.table_configs())
    return Trainer(model, config, progress=False)


def _table_rows(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {
        name: table.state_dict()["weights"].clone()
        for name, table in trainer.model.dynamic_tables().items()
    }


def _dense(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_clipping_reaches_the_embedding_rows():
    """A row moves by lr × its clipped gradient; rows updated inside backward (before the
    clip) would move by the raw gradient, hundreds of times more."""
    clip = 1e-4
    trainer = _trainer(grad_clip_norm=clip)
    batch = trainer.config.schema.encode(_rows(256, 1))
    trainer.model.train()
    trainer.model(batch)  # admit the batch's ids, so every row exists before the step
    before = _table_rows(trainer)
    trainer.train_step(batch)
    moved = sum(
        float((after - before[name][: after.shape[0]]).pow(2).sum())
        for name, after in _table_rows(trainer).items()
    )
    assert 0 < moved**0.5 <= clip * 1.0001  # lr 1.0: the rows' share of the clipped norm
    unclipped = _trainer()
    unclipped.model.train()
    unclipped.model(batch)
    before = _table_rows(unclipped)
    unclipped.train_step(batch)
    raw = sum(
        float((after - before[name][: after.shape[0]]).pow(2).sum())
        for name, after in _table_rows(unclipped).items()
    )
    assert raw**0.5 > 100 * clip  # the clip did change something


def test_a_nan_gradient_skips_the_whole_step_and_is_counted():
    trainer = _trainer()
    schema = trainer.config.schema
    trainer.train_step(schema.encode(_rows(128, 2)))  # a normal step: rows exist, counts 0
    rows, dense = _table_rows(trainer), _dense(trainer)
    poisoned = schema.encode(_rows(128, 3))
    poisoned.dense[0, 0] = float("nan")
    trainer.train_step(poisoned)
    assert trainer.skipped_steps == 1
    after = _table_rows(trainer)
    for name, weights in rows.items():  # new ids may have been admitted; old rows unchanged
        assert torch.equal(after[name][: weights.shape[0]], weights)
        assert torch.isfinite(after[name]).all()
    assert all(torch.equal(a, b) for a, b in zip(_dense(trainer), dense, strict=True))
    trainer.train_step(schema.encode(_rows(128, 4)))  # and training goes on
    assert trainer.skipped_steps == 1 and trainer.optimizer_steps == 3


def test_accumulated_micro_batches_equal_one_batch_of_their_union():
    """SGD everywhere: two half batches accumulated = one step on the whole batch."""
    rows = _rows(256, 5)
    whole, halves = _trainer(), _trainer(grad_accumulation_steps=2)
    schema = whole.config.schema
    for t in (whole, halves):  # admit every id first: admission order must not differ
        t.model.train()
        t.model(schema.encode(rows))
    whole.train_step(schema.encode(rows))
    before = _table_rows(halves)
    halves.train_step(schema.encode(rows.slice(0, 128)))
    assert all(torch.equal(_table_rows(halves)[n], w) for n, w in before.items())  # waiting
    halves.train_step(schema.encode(rows.slice(128, 128)))
    assert halves.optimizer_steps == 1 and whole.optimizer_steps == 1
    for name, weights in _table_rows(whole).items():
        assert torch.allclose(_table_rows(halves)[name], weights, atol=1e-6)
    for a, b in zip(_dense(whole), _dense(halves), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_accumulation_must_divide_the_checkpoint_interval():
    with pytest.raises(ValueError, match="multiple of grad_accumulation_steps"):
        _trainer(grad_accumulation_steps=3, checkpoint_every_steps=10)


def test_torch_save_of_a_state_dict_round_trips_the_tables():
    trainer = _trainer()
    batch = trainer.config.schema.encode(_rows(256, 6))
    for _ in range(3):
        trainer.train_step(batch)
    model = trainer.model.eval()
    state = model.state_dict()
    assert any(".tables." in k for k in state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = _trainer().model.eval()
    assert not torch.equal(fresh.predict(batch), model.predict(batch))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh.predict(batch), model.predict(batch))
    dense_only = model.dense_state_dict()
    assert dense_only and not any(".tables." in k for k in dense_only)
    with pytest.raises(RuntimeError, match=r"tables\.user\.\*"):
        _trainer().model.load_state_dict(dense_only)  # strict: a dict without tables is refused


def test_a_model_saved_from_a_users_own_loop_serves_ints_as_ints(tmp_path):
    """save_model without input kinds takes them from the fitted schema; an unfitted schema
    that declares none is refused instead of being served with every input as a string."""
    from streamrec.models.persistence import load_model, save_model
    from streamrec.serving.snapshot import Snapshot

    trainer = _trainer()
    trainer.train_step(trainer.config.schema.encode(_rows(128, 7)))
    directory = save_model(tmp_path / "m", trainer.model, trainer.config)
    kinds = load_model(directory).manifest.input_kinds
    assert kinds == {"x": "float", "user": "int", "item": "int"}
    assert Snapshot.load(directory).kinds["user"] == "int"
    config = parse_config(RAW)  # never fitted: nothing says how to read user and item
    model = build_model(config.model, config.schema, config.table_configs())
    with pytest.raises(ValueError, match=r"\['user', 'item'\].*declare `kind:`"):
        save_model(tmp_path / "unfitted", model, config)


def _one_id_trainer(optimizer: str, batch_size: int, **train: object) -> tuple[Trainer, object]:
    """An LR over one feature whose every row holds id 7: the id's gradient is the batch-mean
    of identical per-example gradients."""
    raw = {
        "name": "t",
        "schema": {"labels": [{"name": "label"}], "embeddings": [{"name": "user"}]},
        "default_table": {"dim": 1, "optimizer": "adagrad"},
        "model": {
            "name": "lr",
            "params": {"row_optimizer": {"optimizer": optimizer, "lr": 0.5, "ftrl_l2": 2.0}},
        },
        "train": {"dense_optimizer": "sgd", "dense_lr": 1e-9, **train},
    }
    config = parse_config(raw)
    rows = pa.table({"label": [1.0] * batch_size, "user": [7] * batch_size})
    config.schema_ = config.schema.fit(rows)
    model = build_model(config.model, config.schema, config.table_configs())
    return Trainer(model, config, progress=False), config.schema.encode(rows)


def _weight_of_the_id(trainer: Trainer) -> float:
    (table,) = trainer.model.dynamic_tables().values()
    return float(table.state_dict()["weights"][0, 0])


@pytest.mark.parametrize("batch_size", [1, 16, 256])
def test_ftrl_takes_per_example_gradients_at_any_batch_size(batch_size):
    """FTRL-Proximal's β and λ2 are per-example quantities: B identical examples must move the
    weight as the paper's closed form does for their summed gradient −B/2 (p = ½ at w = 0,
    label 1), not for the batch mean −½ — so one setting means the same at any batch size."""
    trainer, batch = _one_id_trainer("ftrl", batch_size)
    trainer.train_step(batch)
    g = -0.5 * batch_size  # Σ over the batch of dloss/dw = p − y
    alpha, beta, l2 = 0.5, 1.0, 2.0
    expected = -g / ((beta + abs(g)) / alpha + l2)  # w = −z / ((β + √n) / α + λ2), z = g, n = g²
    assert _weight_of_the_id(trainer) == pytest.approx(expected, rel=1e-5)


def test_ftrl_per_example_scale_survives_accumulation_and_leaves_adagrad_alone():
    """Two accumulated micro-batches of 8 are one step over 16 examples (the FTRL closed form
    for Σg = −8); Adagrad is scale-free, so its first step is lr · sign(g) either way."""
    trainer, batch = _one_id_trainer("ftrl", 8, grad_accumulation_steps=2)
    trainer.train_step(batch)
    assert _weight_of_the_id(trainer) == 0.0  # nothing applied before the second micro-batch
    trainer.train_step(batch)
    g = -0.5 * 16
    assert _weight_of_the_id(trainer) == pytest.approx(-g / ((1 + abs(g)) / 0.5 + 2.0), rel=1e-5)
    adagrad, batch = _one_id_trainer("adagrad", 64)
    adagrad.train_step(batch)
    assert _weight_of_the_id(adagrad) == pytest.approx(0.5, rel=1e-5)
