"""Model directories: identical predictions after a round trip, corruption detected, and a
resumed run that equals an uninterrupted one."""

import json

import pytest
import torch

from streamrec.config import parse_config
from streamrec.models import build_model
from streamrec.models.persistence import load_model, save_model
from streamrec.store import CorruptModelError
from streamrec.train.checkpoint import load_checkpoint
from streamrec.train.trainer import Trainer, build_dense_optimizer

RAW = {
    "name": "t",
    "schema": {
        "labels": [{"name": "label"}],
        "embeddings": [
            {"name": "user_id", "kind": "int"},
            {"name": "item_id", "kind": "int"},
            {"name": "genres", "pooling": "mean", "kind": "list<string>"},
            {"name": "occupation", "kind": "string"},
        ],
    },
    "default_table": {"dim": 8, "optimizer": "adagrad", "lr": 0.05, "admit_min_count": 1},
    "model": {"name": "deepfm", "params": {"hidden": [32], "dropout": 0.1}},
    "train": {"epochs": 2, "seed": 3, "negative_sampling_rate": 0.7, "evict_every_steps": 2},
}


@pytest.fixture(scope="module")
def batches(ml100k):
    cfg = parse_config(RAW)
    return [cfg.schema.encode(ml100k.slice(i, 400)) for i in range(0, 4000, 400)]


def _fresh(seed: int = 3):
    cfg = parse_config(RAW)
    torch.manual_seed(seed)
    return cfg, build_model(cfg.model, cfg.schema, cfg.table_configs())


def test_round_trip_gives_identical_predictions(tmp_path, batches):
    cfg, model = _fresh()
    trainer = Trainer(model, cfg, progress=False)
    trainer.fit(lambda epoch: batches[:5])
    save_model(tmp_path / "m", model, cfg)
    loaded = load_model(tmp_path / "m")
    model.eval()
    for b in batches[5:]:
        assert torch.equal(loaded.model.predict(b), model.predict(b))
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"dense.safetensors", "tables/000.safetensors"}


def test_flipped_or_truncated_bytes_are_refused_with_the_file_named(tmp_path, batches):
    cfg, model = _fresh()
    save_model(tmp_path / "m", model, cfg)
    target = tmp_path / "m" / "tables" / "001.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(CorruptModelError, match=r"tables/001.safetensors: checksum mismatch"):
        load_model(tmp_path / "m")
    save_model(tmp_path / "m", model, cfg)
    dense = tmp_path / "m" / "dense.safetensors"
    dense.write_bytes(dense.read_bytes()[:100])
    with pytest.raises(CorruptModelError, match="dense.safetensors"):
        load_model(tmp_path / "m")
    with pytest.raises(CorruptModelError, match="not a model directory"):
        load_model(tmp_path)


def test_resume_at_an_epoch_boundary_or_mid_epoch_equals_an_uninterrupted_run(tmp_path, batches):
    cfg, model = _fresh()
    full = Trainer(model, cfg, progress=False)
    full.fit(lambda epoch: batches)
    reference = full.losses

    for stop_after in (len(batches), 4):  # end of epoch 1; 4 steps into epoch 1
        cfg, model = _fresh()
        first = Trainer(model, cfg, progress=False)
        for b in batches[:stop_after]:
            first.train_step(b)
        first.step_in_epoch = stop_after
        done = stop_after == len(batches)
        first.checkpoint(tmp_path / "ck", epoch_done=done)
        model2, cfg2, opt2, pos = load_checkpoint(
            tmp_path / "ck", lambda m, c=cfg: build_dense_optimizer(m, c.train)
        )
        second = Trainer(model2, cfg2, optimizer=opt2, progress=False)
        second.global_step, second.samples_trained = pos["global_step"], pos["samples"]
        second.fit(lambda epoch: batches, start_epoch=pos["epoch"], skip_steps=pos["step_in_epoch"])
        assert first.losses + second.losses == reference


def test_lazy_table_files_load_exactly_what_was_saved(tmp_path):
    import numpy as np

    from streamrec.embedding import DynamicTable
    from streamrec.store.model_dir import TensorFile, tensors_to_bytes

    t = DynamicTable(dim=5, optimizer="adam", chunk_rows=64)
    ids = torch.arange(1000, dtype=torch.int64) * 7
    t.lookup(ids, now=3)
    t.apply_gradients(ids[::3], torch.randn(334, 5))
    (tmp_path / "t.safetensors").write_bytes(tensors_to_bytes(t.state_dict()))
    lazy = TensorFile(tmp_path / "t.safetensors")
    assert lazy.shape("weights") == [1000, 5]
    assert torch.equal(lazy.slice("weights", 10, 20), t.state_dict()["weights"][10:20])
    clone = DynamicTable.from_config(t.settings)
    clone.load_state_dict(lazy)
    for key, value in t.state_dict().items():
        assert np.array_equal(value.numpy(), clone.state_dict()[key].numpy()), key


def test_resume_takes_the_dense_rates_from_todays_config(batches):
    """A checkpoint keeps the dense optimizer's moments, not its rates: resuming with a new
    train.dense_lr trains at the new rate (each group's base_lr comes from the config)."""
    from streamrec.train.checkpoint import optimizer_tensors, restore_optimizer

    cfg, model = _fresh()
    old = build_dense_optimizer(model, cfg.train.model_copy(update={"dense_lr": 0.01}))
    trainer = Trainer(model, cfg, optimizer=old, progress=False)
    trainer.train_step(batches[0])
    tensors, settings = optimizer_tensors(old)
    new = build_dense_optimizer(model, cfg.train.model_copy(update={"dense_lr": 0.02}))
    restore_optimizer(new, tensors, settings)
    assert [g["base_lr"] for g in new.param_groups] == [0.02]
    assert new.state_dict()["state"].keys() == old.state_dict()["state"].keys()
