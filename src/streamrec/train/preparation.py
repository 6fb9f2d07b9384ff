"""What every training job does around `Trainer.fit`, on one process or N ranks: seed, fit the
schema on a sample or take a checkpoint's state (`Start`), and feed the epochs' batches."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamrec.batch import Batch
from streamrec.config import ConfigError, JobConfig
from streamrec.data.loader import BatchLoader, shuffle_blocks
from streamrec.data.splits import DatasetSplits
from streamrec.models.base import RankingModel
from streamrec.models.persistence import saved_input_kinds
from streamrec.models.registry import build_model
from streamrec.schema import input_kinds
from streamrec.store import read_manifest
from streamrec.train.checkpoint import load_checkpoint
from streamrec.train.trainer import Trainer, TrainResult, build_dense_optimizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Start:
    """Where a job starts: a fresh model (no optimizer, no position) or a checkpoint's state.

    kinds: input column → value kind (int / float / string / list<…>), as the model reads it.
    """

    model: RankingModel
    config: JobConfig
    kinds: dict[str, str]
    optimizer: torch.optim.Optimizer | None = None
    position: dict | None = None
    parent: Path | None = None  # a warm start's model directory
    parent_version: int | None = None
    rate_search: list[dict] | None = None  # the linear rates tried (`train/rate_search.py`)
    prepared: dict | None = None  # what the model learnt before its first step (`prepare_model`)

    @property
    def resumed(self) -> bool:
        return self.position is not None


def fresh_start(config: JobConfig, splits: DatasetSplits) -> Start:
    """A model built from a copy of `config` whose schema holds statistics learnt on the
    training sample (identical on every rank: every rank reads the same sample)."""
    fitted = config.model_copy(deep=True)
    sample = splits.sample()
    fitted.schema_ = config.schema.fit(sample)
    kinds = input_kinds(sample, fitted.schema_.input_columns(with_labels=False))
    return Start(build_model(fitted.model, fitted.schema_, fitted.table_configs()), fitted, kinds)


def prepare_model(start: Start, splits: DatasetSplits) -> None:
    """Let a fresh model learn what it learns in batch before the first step (gbdt_lr fits its
    trees) from the training split, in file order, and the validation split."""
    schema = start.config.schema
    valid = None
    if splits.valid is not None:

        def valid() -> BatchLoader:
            return BatchLoader(splits.valid, schema, 65536)

    start.prepared = start.model.prepare(
        lambda: BatchLoader(splits.train, schema, 65536), valid, start.config.train.seed
    )


def checkpoint_start(path: Path, config: JobConfig) -> Start:
    """The state saved in the checkpoint directory `path`: the model, its fitted schema and
    tables as saved; the `train` section is the one asked for now — `--epochs` extends a
    finished run, and the fix a health stop asks for (`--set train.dense_lr=…`,
    `train.health=warn`) applies to the resumed steps."""
    model, saved, optimizer, position = load_checkpoint(
        path, lambda m: build_dense_optimizer(m, config.train)
    )
    saved.train = config.train.model_copy(deep=True)
    kinds = saved_input_kinds(read_manifest(path), saved.schema)
    return Start(model, saved, kinds, optimizer, position)


def warm_start(path: Path, config: JobConfig) -> Start:
    """The daily retrain's start: the model at `path` — its tables with their optimizer state,
    its dense weights, and its fitted schema (so that yesterday's weights read today's inputs
    as they learnt them) — trained on `config`'s data from epoch 0. The dense optimizer's state
    comes too when `path` holds it (a checkpoint: `RUN/checkpoint`); a model directory has
    none, and a fresh dense optimizer starts. Tables keep their settings (admission, expiry):
    new ids are admitted and stale ones expire as in any training. ConfigError when `config`
    trains another architecture or reads other features than the model."""
    from streamrec.models.persistence import load_model
    from streamrec.store import CorruptModelError, find_model_dir
    from streamrec.train.checkpoint import restore_optimizer

    try:
        directory = find_model_dir(path)
        loaded = load_model(directory, storage="configured")
    except (CorruptModelError, FileNotFoundError) as e:
        raise ConfigError(f"--warm-start: {e}") from None
    parent = loaded.config
    if loaded.manifest.is_retrieval:
        raise ConfigError("--warm-start: a two-tower retriever continues with `streamrec online`")
    if parent.model.model_dump() != config.model.model_dump():
        raise ConfigError(
            f"--warm-start: {directory} is a {parent.model.name} "
            f"{parent.model.params or ''}; the config trains a {config.model.name} "
            f"{config.model.params or ''}: a different architecture starts afresh"
        )
    ours, theirs = _features(config.schema), _features(parent.schema)
    if ours != theirs:
        differ = sorted(ours ^ theirs)
        raise ConfigError(
            f"--warm-start: the config and {directory} read different features ({differ}); "
            "a model with other inputs starts afresh"
        )
    warm = config.model_copy(deep=True)
    warm.schema_ = parent.schema  # fitted statistics and vocabularies as the weights learnt them
    optimizer = None
    trainer_state = loaded.manifest.trainer
    if trainer_state is not None:
        optimizer = build_dense_optimizer(loaded.model, config.train)
        restore_optimizer(
            optimizer, loaded.directory.read_tensors("optimizer.safetensors"),
            trainer_state.optimizer,
        )
    kinds = saved_input_kinds(loaded.manifest, parent.schema)
    return Start(loaded.model, warm, kinds, optimizer, None, parent=directory,
                 parent_version=loaded.manifest.model_version)


def _features(schema) -> set[tuple[str, str]]:
    """(section, name) of every label and input a schema declares."""
    return {
        (section, item.name)
        for section in ("labels", "dense", "encodings", "embeddings")
        for item in getattr(schema, section)
    }


def training_rows(config: JobConfig, source: Callable, epoch: int) -> Callable:
    """The training split's record batches for `epoch`: shuffled when `data.shuffle_rows`."""
    block = config.data.shuffle_rows
    if not block:
        return source
    seed = config.train.seed * 1_000_003 + epoch
    return lambda: shuffle_blocks(source(), block, seed)


def fit(
    trainer: Trainer,
    start: Start,
    splits: DatasetSplits,
    local: Callable[[Batch], Batch] = lambda batch: batch,
) -> TrainResult:
    """Train `start` through its remaining epochs (continuing at its position when resumed);
    `local` cuts each global training batch to this rank's share."""
    config = start.config
    schema, batch_size = config.schema, config.data.batch_size
    trainer.extra_manifest = {"input_kinds": start.kinds}
    start_epoch = skip = 0
    if start.position is not None:
        start_epoch, skip = start.position["epoch"], start.position["step_in_epoch"]
        trainer.restore_position(start.position)

    teacher = _teacher(config)

    def train_batches(epoch: int) -> Iterator[Batch]:
        rows = training_rows(config, splits.train, epoch)
        batches = BatchLoader(rows, schema, batch_size)
        if teacher is not None:  # the same rows in the same order, encoded for the teacher
            again = BatchLoader(training_rows(config, splits.train, epoch), teacher[0], batch_size)
            batches = _distilled(batches, again, teacher[1], config.train.distill_weight)
        return (local(batch) for batch in batches)

    valid_batches = None
    if splits.valid is not None:

        def valid_batches() -> BatchLoader:
            return BatchLoader(splits.valid, schema, 4096)

    return trainer.fit(train_batches, valid_batches, start_epoch, skip)


def _teacher(config: JobConfig) -> tuple | None:
    """(schema, model) of `train.distill_from`, or None; ConfigError when it cannot teach."""
    if not config.train.distill_from:
        return None
    from streamrec.models.persistence import load_model
    from streamrec.store import CorruptModelError

    try:
        loaded = load_model(config.train.distill_from)
    except (CorruptModelError, FileNotFoundError) as e:
        raise ConfigError(f"train.distill_from: {e}") from None
    tasks = max(1, len(config.schema.labels))
    if loaded.model.num_tasks < tasks:
        raise ConfigError(
            f"train.distill_from: the teacher predicts {loaded.model.num_tasks} task(s), this "
            f"model trains {tasks}"
        )
    return loaded.config.schema, loaded.model.eval()


def _distilled(
    batches: Iterable[Batch], teacher_batches: Iterable[Batch], teacher, weight: float
) -> Iterator[Batch]:
    """Each batch with soft targets: weight × the teacher's probabilities + (1 − weight) ×
    its labels. The two loaders read the same rows in the same order (same source, same
    shuffle seed); a length mismatch means they did not, and is an error, not a silent skew."""
    for batch, seen_by_teacher in zip(batches, teacher_batches, strict=True):
        tasks = batch.labels.shape[1]
        soft = teacher.predict(seen_by_teacher)[:, :tasks]
        batch.targets = weight * soft + (1.0 - weight) * batch.labels
        yield batch
