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
    kinds = load_model(directory).manifest["input_kinds"]
    assert kinds == {"x": "float", "user": "int", "item": "int"}
    assert Snapshot.load(directory).kinds["user"] == "int"
    config = parse_config(RAW)  # never fitted: nothing says how to read user and item
    model = build_model(config.model, config.schema, config.table_configs())
    with pytest.raises(ValueError, match=r"\['user', 'item'\].*declare `kind:`"):
        save_model(tmp_path / "unfitted", model, config)
