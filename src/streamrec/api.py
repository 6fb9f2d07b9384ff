"""streamrec from Python: one function per job, routed exactly as the `streamrec` command does.

    from streamrec import api
    report = api.train("examples/ml100k_deepfm.yaml", "runs/ml100k")  # ranker, two-tower, torchrun
    api.evaluate("runs/ml100k")                                       # ranking or retrieval metrics
    api.predict("runs/ml100k", "rows.parquet", "scores.parquet")      # one score per row
    status = api.online("examples/mlsmall_online.yaml", "LOG", "runs/online", stop_when_idle=5)

`config` is a `JobConfig` or the path of its YAML file. Errors are the library's own
(ConfigError, DataError, CorruptModelError, RunDirBusy, SchemaError: all ValueErrors with a
message that says what to do, except RunDirBusy, a RuntimeError).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamrec.config import JobConfig, load_config, parse_config, with_overrides
from streamrec.data.errors import DeadLetter
from streamrec.data.stream import StreamSource
from streamrec.data.stream.address import parse_stream_address
from streamrec.data.stream.connect import open_source
from streamrec.data.stream.joined import JoinedSource
from streamrec.data.stream.joiner import OnlineJoiner
from streamrec.schema import SECONDS_PER_UNIT
from streamrec.serving.batch_scoring import score_file
from streamrec.store import read_manifest
from streamrec.train.distributed import (
    run_distributed_training,
    wants_sharded_run,
    world_from_env,
)
from streamrec.train.distributed_online import run_distributed_online
from streamrec.train.evaluation import evaluate_model_dir
from streamrec.train.job import run_training
from streamrec.train.online import OnlineTrainer
from streamrec.train.two_tower import evaluate_retrieval_dir, train_two_tower


@dataclass
class TrainReport:
    """What a training job produced.

    model_type: "ranking" or "retrieval" (a two-tower model with its index)
    metrics:    ranking: {task: {auc, gauc, logloss, ne, calibration}};
                retrieval: {"recall@10": …, "recall@50": …, "ndcg@10": …, …}
    model_dir:  the saved model (serve it, eval it)
    rank:       this process's rank under torchrun (only rank 0 prints a report)
    details:    the job's whole report (samples/s, epochs, history …), as JSON
    """

    model_type: str
    metrics: dict[str, Any]
    model_dir: Path
    samples_per_s: float
    rank: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.details, "model_dir": str(self.model_dir)}


def as_config(config: JobConfig | str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """A JobConfig from a config object or YAML path, with `overrides` (`key.path=value`, as
    `--set` takes them) applied and validated."""
    if not isinstance(config, JobConfig):
        return load_config(config, overrides)
    if not overrides:
        return config
    return parse_config(with_overrides(config.to_dict(), overrides), source="--set")


def train(
    config: JobConfig | str | Path,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    overrides: Sequence[str] = (),
    warm_start: str | Path | None = None,
) -> TrainReport:
    """Train what `config` describes into the run directory `out`: a two-tower retriever
    (`model.name: two_tower`), the sharded job when launched by torchrun with several ranks (or
    resuming from a sharded checkpoint), else the single-process job. `warm_start`: a model (or
    checkpoint) to continue from on `config`'s data — the daily retrain (single process)."""
    cfg = as_config(config, overrides)
    if warm_start is not None and (cfg.model.name == "two_tower" or wants_sharded_run(out, resume)):
        raise ValueError(
            "--warm-start continues a ranking model in one process (two-tower retrievers and "
            "torchrun jobs continue with `streamrec online --init-model`)"
        )
    if cfg.model.name == "two_tower":
        details, model_dir = train_two_tower(cfg, out, resume=resume, progress=progress)
        return TrainReport(
            "retrieval", details["metrics"], model_dir, details["samples_per_s"], 0, details
        )
    if wants_sharded_run(out, resume):  # torchrun: sharded tables, data-parallel dense
        result, model_dir = run_distributed_training(cfg, out, resume=resume, progress=progress)
        rank = int(os.environ.get("RANK", "0"))
    else:
        result, model_dir = run_training(
            cfg, out, resume=resume, progress=progress, warm_start_from=warm_start
        )
        rank = 0
    return TrainReport(
        "ranking", result.metrics, model_dir, result.samples_per_s, rank, result.to_json()
    )


def evaluate(
    model_dir: str | Path, data: str | None = None, fmt: str | None = None, progress: bool = False
) -> dict:
    """Metrics of a saved model: a ranker on `data` (default: its validation split), a
    retriever (recall@k, NDCG) on its config's test split. `progress`: a bar on a terminal."""
    if read_manifest(model_dir).is_retrieval:
        return evaluate_retrieval_dir(model_dir)
    return evaluate_model_dir(model_dir, data, fmt, progress=progress)


def impressions(
    retriever: str | Path,
    config: JobConfig | str | Path,
    out: str | Path,
    candidates: int | None = None,
    target_fraction: float = 0.2,
) -> dict[str, Any]:
    """An impression-shaped training set for the ranker (`retrieval/impression_set.py`): the
    training split of `config`'s data, each user's past queried against `retriever` as the
    server queries it, the `candidates` items it returns (default: the retriever's
    `retrieval.candidates`) labelled by the user's future; context features are the config's
    `serving.context_features`. Written to `out` (Parquet, atomically)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from streamrec.data.splits import open_splits
    from streamrec.retrieval.impression_set import LABEL, impression_set
    from streamrec.retrieval.model_dir import find_retrieval_dir, load_retrieval_model

    cfg = as_config(config)
    directory = find_retrieval_dir(retriever)
    if directory is None:
        raise FileNotFoundError(f"{retriever}: no retrieval model (retrieval/index.faiss)")
    loaded = load_retrieval_model(directory)
    n = candidates or loaded.config.retrieval.candidates
    dead = DeadLetter()
    train = pa.Table.from_batches(list(open_splits(cfg.data, dead).train()))
    table = impression_set(
        loaded,
        train,
        n,
        cfg.serving.context_features,
        target_fraction,
        loaded.config.data.history_length or 50,
        cfg.schema_.timestamp,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    positives = int(pc.sum(table[LABEL]).as_py() or 0)
    return {
        "rows": table.num_rows,
        "users": int(pc.count_distinct(table["user_id"]).as_py()),
        "candidates": n,
        "positives": positives,
        "positive_rate": positives / max(1, table.num_rows),
        "rejected_rows": dead.count,
        "output": str(out),
    }


def predict(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    fmt: str | None = None,
    id_column: str | None = None,
    precision: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score every row of `data` into `out` (.parquet / .csv / .tsv); malformed rows go to
    OUT.dead_letter.jsonl and are counted in `rejected_rows`. `progress`: a bar on a
    terminal."""
    out = Path(out)
    dead = DeadLetter(out.with_name(out.name + ".dead_letter.jsonl"))
    try:
        if precision not in (None, "fp32", "bf16"):
            raise ValueError(f"precision {precision!r}: choose fp32 or bf16")
        report = score_file(
            model_dir, data, out, fmt, id_column, dead=dead, precision=precision,
            progress=progress,
        )
    finally:
        dead.close()
    return {**report, "rejected_rows": dead.count}


def online(
    config: JobConfig | str | Path,
    source: str | Path,
    out: str | Path,
    *,
    actions: str | Path | None = None,
    group: str = "default",
    stop_when_idle: float | None = None,
    init_model: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Train online from the stream `source` into the run directory `out` (predict first,
    then learn; deltas for the server). A stream is a local log folder, kafka://HOST:PORT/TOPIC
    (every partition) or redis://HOST:PORT/STREAM (`data/stream/address.py`), with client
    settings from `online.source`. With `actions`, `source` is the impressions stream and
    the two are joined (`online.join`). Under torchrun rank 0 reads the stream and every rank
    trains a slice. → the final status (rank 0; {} elsewhere)."""
    cfg = as_config(config, overrides)
    if init_model is not None:
        cfg.online.init_model = str(init_model)

    addresses = [parse_stream_address(a) for a in (source, actions) if a is not None]
    settings = dict(cfg.online.source) or None

    def open_stream() -> StreamSource:
        o = cfg.online
        stream = open_source(addresses[0], group, settings, o.on_gap, o.service_timeout_seconds)
        if actions is not None:
            j = cfg.online.join
            stream = JoinedSource(
                stream,
                open_source(addresses[1], group, settings, o.on_gap, o.service_timeout_seconds),
                OnlineJoiner(j.tasks, j.window_seconds, j.allowed_lateness, j.max_pending),
                cfg.schema_.timestamp,
                SECONDS_PER_UNIT[cfg.schema_.timestamp_unit],
            )
        return stream

    if world_from_env() > 1:
        return run_distributed_online(cfg, open_stream, out, stop_when_idle, log)
    stream = open_stream()
    try:
        return OnlineTrainer(cfg, stream, out, progress=progress, log=log).run(stop_when_idle)
    finally:
        stream.close()  # the client's threads end here, not at interpreter teardown
