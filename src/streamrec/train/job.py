"""A training job from a config: data → fitted schema → model → Trainer → saved model.

Used by `streamrec train` and `streamrec eval`; code-driven use can call these directly.
The run directory holds `metrics.csv`, `checkpoint/` (the newest checkpoints as versions, for
`--resume`) and `model/`, the final model directory that `streamrec eval` and `serve` read.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from streamrec.config import JobConfig
from streamrec.data.errors import DeadLetter
from streamrec.data.loader import BatchLoader, shuffle_blocks
from streamrec.data.splits import check_columns, open_splits
from streamrec.models.persistence import load_model, save_model
from streamrec.models.registry import build_model
from streamrec.schema import input_kinds
from streamrec.store import read_manifest
from streamrec.train.checkpoint import load_checkpoint
from streamrec.train.run_dir import RunDir
from streamrec.train.trainer import Trainer, TrainResult, build_dense_optimizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit_schema(config: JobConfig, splits) -> tuple[JobConfig, dict[str, str]]:  # noqa: ANN001
    """A copy of the config whose schema holds statistics learnt on the training sample, and
    the kinds (int / float / string / list) of the input columns."""
    fitted = config.model_copy(deep=True)
    sample = splits.sample()
    fitted.schema_ = config.schema.fit(sample)
    return fitted, input_kinds(sample, fitted.schema_.input_columns(with_labels=False))


def training_rows(config: JobConfig, source: Callable, epoch: int) -> Callable:
    """The training split's record batches for `epoch`: shuffled when `data.shuffle_rows`."""
    block = config.data.shuffle_rows
    if not block:
        return source
    seed = config.train.seed * 1_000_003 + epoch
    return lambda: shuffle_blocks(source(), block, seed)


def run_training(
    config: JobConfig, out: str | Path, resume: bool = False, progress: bool = True
) -> tuple[TrainResult, Path]:
    run = RunDir(out).open()  # one writer per run directory
    try:
        return _train(run, config, resume, progress)
    finally:
        run.release()


def _train(
    run: RunDir, config: JobConfig, resume: bool, progress: bool
) -> tuple[TrainResult, Path]:
    out = run.path
    seed_everything(config.train.seed)
    dead = DeadLetter(
        config.data.dead_letter or out / "dead_letter.jsonl", strict=config.data.strict
    )
    pinned = config.schema.declared_kinds()  # column types every read uses (grows below)
    check_columns(config.data, config.schema.input_columns(with_labels=True), pinned)
    splits = open_splits(config.data, dead, pinned, config.schema.labels)
    start_epoch = skip = 0
    kinds: dict[str, str] = {}
    epochs = config.train.epochs  # the schedule asked for now, e.g. `--epochs` to extend

    def load(path: Path) -> tuple:
        loaded = load_checkpoint(path, lambda m: build_dense_optimizer(m, config.train))
        return (*loaded, read_manifest(path).get("input_kinds", {}))

    resumed = run.load_checkpoint(load) if resume else None
    if resumed is not None:
        model, config, optimizer, position, kinds = resumed
        config.train.epochs = epochs
        start_epoch, skip = position["epoch"], position["step_in_epoch"]
        trainer = Trainer(model, config, out, optimizer, progress=progress)
        trainer.restore_position(position)
    else:
        if not resume:  # a fresh run: checkpoints of an earlier run in OUT are not ours
            shutil.rmtree(run.checkpoints, ignore_errors=True)
        config, kinds = fit_schema(config, splits)
        model = build_model(config.model, config.schema, config.table_configs())
        trainer = Trainer(model, config, out, progress=progress)
    pinned.update(kinds)  # validation files, later epochs: read as the model saw its sample
    trainer.extra_manifest = {"input_kinds": kinds}
    schema, batch_size = config.schema, config.data.batch_size

    def train_batches(epoch: int) -> BatchLoader:
        return BatchLoader(training_rows(config, splits.train, epoch), schema, batch_size)

    valid_batches = None
    if splits.valid is not None:

        def valid_batches() -> BatchLoader:
            return BatchLoader(splits.valid, schema, 4096)

    result = trainer.fit(train_batches, valid_batches, start_epoch, skip)
    dead.close()
    model_dir = save_model(
        out / "model",
        trainer.model,
        config,
        {
            "metrics": result.metrics,
            "train": result.to_json(),
            "dead_lettered": dead.count,
            "input_kinds": kinds,
        },
    )
    return result, model_dir


def evaluate_model_dir(
    path: str | Path, data: str | None = None, fmt: str | None = None, progress: bool = False
) -> dict:
    """Metrics of a saved model on `data` (default: the validation split of its config)."""
    loaded = load_model(path)
    config = loaded.config
    kinds = loaded.manifest.get("input_kinds") or {}  # read files as the model was trained
    dead = DeadLetter()
    if data is not None:
        from streamrec.data.formats import read_records

        def source():  # noqa: ANN202
            return read_records(
                data, fmt or config.data.format, dead, kinds=kinds, fields=config.data.fields
            )
    else:
        source = open_splits(config.data, dead, kinds).valid
        if source is None:
            raise ValueError("the model's config names no validation data: pass --data")
    trainer = Trainer(loaded.model, config, None, progress=progress)
    metrics = trainer.evaluate(BatchLoader(source, config.schema, 4096))
    return {
        "metrics": metrics,
        "model_version": loaded.manifest.get("model_version"),
        "rejected_rows": dead.count,
    }
