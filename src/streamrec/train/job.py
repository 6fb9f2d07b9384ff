"""The single-process training job: data → fitted schema → model → Trainer → saved model.

The run directory holds `metrics.csv`, `checkpoint/` (the newest checkpoints as versions, for
`--resume`) and `model/`, the final model directory that `streamrec eval` and `serve` read.
`streamrec.api.train` picks this job, the torchrun one (`distributed.py`) or the two-tower one.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from streamrec.config import JobConfig
from streamrec.data.errors import DeadLetter
from streamrec.data.splits import DatasetSplits, check_columns, open_splits
from streamrec.models.persistence import save_model
from streamrec.models.registry import build_model
from streamrec.store.manifest import ParentModel
from streamrec.train.lineage import lineage
from streamrec.train.mlflow_run import MlflowRun
from streamrec.train.preparation import (
    Start,
    checkpoint_start,
    fit,
    fresh_start,
    prepare_model,
    seed_everything,
    warm_start,
)
from streamrec.train.rate_search import search_rates, wants_rate_search
from streamrec.train.run_dir import RunDir
from streamrec.train.trainer import Trainer, TrainResult


def open_training_data(config: JobConfig, dead: DeadLetter) -> tuple[DatasetSplits, dict[str, str]]:
    """The splits, read with the declared column kinds (the dict returned; the caller adds the
    kinds the model learns, so later files are read as the model saw its sample), after every
    file's columns have been checked — before the first step, not hours into it."""
    pinned = config.schema.declared_kinds()
    check_columns(config.data, config.schema.input_columns(with_labels=True), pinned)
    return open_splits(config.data, dead, pinned, config.schema.labels), pinned


def run_training(
    config: JobConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    warm_start_from: str | Path | None = None,
) -> tuple[TrainResult, Path]:
    """Train `config` into the run directory `out`: afresh, from its checkpoint (`resume`), or
    from another model (`warm_start_from`: the daily retrain, `preparation.warm_start`)."""
    if config.model.name == "two_tower":
        raise ValueError("a two_tower config trains with streamrec.api.train (or train_two_tower)")
    run = RunDir(out).open()  # one writer per run directory
    try:
        return _train(run, config, resume, progress, warm_start_from)
    finally:
        run.release()


def _train(
    run: RunDir, config: JobConfig, resume: bool, progress: bool,
    warm_start_from: str | Path | None,
) -> tuple[TrainResult, Path]:
    out = run.path
    seed_everything(config.train.seed)
    dead = DeadLetter(
        config.data.dead_letter or out / "dead_letter.jsonl", strict=config.data.strict
    )
    splits, pinned = open_training_data(config, dead)
    start = run.load_checkpoint(lambda path: checkpoint_start(path, config)) if resume else None
    if start is None:
        if not resume:
            run.start_afresh()
        if warm_start_from is not None:
            start = warm_start(Path(warm_start_from), config)
        else:
            start = fresh_start(config, splits)
            prepare_model(start, splits)
            if start.prepared and progress:
                print(f"{config.model.name} fitted before its first step: "
                      f"{json.dumps(start.prepared)}", file=sys.stderr)
            if wants_rate_search(config, splits):
                start = _rates_chosen(start, splits, progress)
    pinned.update(start.kinds)  # validation files, later epochs: read as the model saw its sample
    trainer = Trainer(start.model, start.config, out, start.optimizer, progress=progress)
    tracked = config.train.mlflow
    if tracked:
        trainer.mlflow = MlflowRun.start(tracked, out, config.name, start.config.to_dict())
    try:
        result, model_dir = _fit_and_save(trainer, start, splits, dead)
    except BaseException:
        if trainer.mlflow is not None:
            trainer.mlflow.finish(None, status="FAILED")  # --resume continues the same run
        raise
    if trainer.mlflow is not None:
        trainer.mlflow.finish(model_dir)
    return result, model_dir


def _rates_chosen(start: Start, splits: DatasetSplits, progress: bool) -> Start:
    """`start` with the linear model's α and λ2 chosen on the validation split."""

    def trial(config: JobConfig, model, run_dir: Path) -> float:
        # A trial that over-fits is judged by its score; its health warnings would only
        # interleave with the search's own lines.
        config = config.model_copy(deep=True)
        config.train.health = "off"
        seed_everything(config.train.seed)
        trainer = Trainer(model, config, run_dir, progress=False)
        fit(trainer, Start(model, config, start.kinds), splits)
        return math.nan if trainer.best_score is None else float(trainer.best_score)

    def build(config: JobConfig):
        model = build_model(config.model, config.schema, config.table_configs())
        model.load_prepared_state(start.model.prepared_state())  # the same trees
        return model

    note = (lambda line: print(line, file=sys.stderr)) if progress else (lambda _: None)
    chosen, trials = search_rates(start.config, trial, note, build)
    seed_everything(chosen.train.seed)
    return Start(build(chosen), chosen, start.kinds, rate_search=trials, prepared=start.prepared)


def _fit_and_save(
    trainer: Trainer, start, splits: DatasetSplits, dead: DeadLetter
) -> tuple[TrainResult, Path]:
    out = trainer.run_dir
    result = fit(trainer, start, splits)
    dead.close()
    model_dir = save_model(
        out / "model",
        trainer.model,
        start.config,
        {
            "metrics": result.metrics,
            "train": result.to_json()
            | ({"rate_search": start.rate_search} if start.rate_search else {})
            | ({"prepared": start.prepared} if start.prepared else {}),
            "dead_lettered": dead.count,
            "input_kinds": start.kinds,
            "lineage": lineage(
                start.config,
                None
                if start.parent is None
                else ParentModel(
                    path=str(start.parent.resolve()), model_version=start.parent_version
                ),
            ).model_dump(mode="json"),
        },
    )
    return result, model_dir
