"""Online training: learn from a stream, predict first, export deltas every few seconds.

    trainer = OnlineTrainer(config, source, out="runs/online")
    trainer.run(stop_when_idle=5)

Per batch of messages (in offset order):
  1. decode JSON records against the input kinds (`json_records.py`); a message that is not a
     JSON object, is oversize or deeply nested, has a value of the wrong kind, a label that is
     not 0/1 or an absurd timestamp goes to `out/dead_letter.jsonl` with its offset and the
     reason — message content never stops the trainer;
  2. progressive validation: predict the batch with the current model *before* learning from
     it, into lifetime and windowed AUC / NE / calibration;
  3. one training step (tables admit new ids in forward; the row optimizers apply the rows in
     the optimizer step, after backward — `train/trainer.py`);
  4. every `sync_interval_seconds` (or `sync_every_batches` in deterministic mode) a delta of
     the rows touched since the last one goes to `out/deltas/` for the server;
  5. every `checkpoint_interval_seconds` a full checkpoint — model, optimizer, and the offset of
     the next message together — then the offset is committed to the source.
`out/status.json` is rewritten after every delta: events consumed / trained / dead-lettered,
last delta version, lag behind the stream head, seconds from consuming an event to the delta
that carries it.

A service that goes away (Redis restarting, Kafka's brokers unreachable) is waited out: polls
retry with a capped backoff, `status.json` shows `source_unavailable` and since when, a commit
that could not reach it is made at the next one that can (the checkpoint, not the commit, is
what a restart resumes from), and training continues when it returns — nothing lost or
repeated. Unavailable longer than `online.service_timeout_seconds`, the run ends with a
checkpoint and `StreamUnavailable` (CLI exit 4).

Exactly once: after a crash, `OnlineTrainer` resumes from the newest complete version in
`out/checkpoint/` and seeks the source to the offset stored in it, so every event after the
checkpoint is trained exactly once more and none before it twice; the dead-letter file is cut
back to its length at that checkpoint, so a rejected message is reported once. One trainer
writes a run directory at a time (`train/run_dir.py`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from streamrec.config import ConfigError, JobConfig
from streamrec.data.errors import DeadLetter
from streamrec.data.stream.base import Message, StreamSource, StreamUnavailable
from streamrec.data.stream.joined import JoinedSource
from streamrec.json_records import StreamRecordDecoder, majority_kinds
from streamrec.models.persistence import load_model, saved_input_kinds
from streamrec.models.registry import build_model
from streamrec.schema import Label
from streamrec.store import read_manifest
from streamrec.store.atomic import write_atomic
from streamrec.store.manifest import DeltaProgress, ModelManifest, OnlineSection
from streamrec.store.versions import newest_version
from streamrec.train.checkpoint import load_checkpoint
from streamrec.train.delta_export import DeltaExporter, consumed_range
from streamrec.train.health import HealthStop
from streamrec.train.metrics import MetricAccumulator, json_ready
from streamrec.train.mlflow_run import MlflowRun
from streamrec.train.preparation import seed_everything
from streamrec.train.run_dir import RunDir
from streamrec.train.run_metrics import RunMetrics
from streamrec.train.stall_watch import StallWatch
from streamrec.train.trainer import Trainer, build_dense_optimizer

RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.2, 5.0  # backoff while a service is unavailable


class OnlineTrainer:
    def __init__(
        self,
        config: JobConfig,
        source: StreamSource,
        out: str | Path,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.out = Path(out)
        self.run_dir = RunDir(self.out)
        if self._writes_run_dir():
            self.run_dir.open()
        self.source = source
        self.log = log or (lambda message: None)
        self.online_config = config.online
        self.checkpoint_version = 0  # the newest checkpoint written or resumed from
        self.trainer, config, state = self._load_or_build(config)
        if state is not None and source is not None:
            try:
                if hasattr(source, "restore") and state.source_state is not None:
                    source.restore(state.source_state)  # e.g. two streams + joiner state
                else:
                    source.seek(state.next_offset)
            except Exception:  # e.g. a StreamGap: let go of the run directory, then say why
                self.run_dir.release()
                raise
            self.log(f"resumed from checkpoint at offset {state.next_offset}")
        state = state or OnlineSection()  # a fresh run: every count starts at 0
        self.config = config
        self.model = self.trainer.model
        self.schema = config.schema
        self.encode_schema = self.schema.with_labels_mapped()  # the decoder maps labels
        self._decoder: StreamRecordDecoder | None = None
        self._unknown_kinds: list[str] = []
        self.events_consumed = state.events_consumed
        self.events_trained = state.events_trained
        self.dead = DeadLetter(self.out / "dead_letter.jsonl")
        self.dead.count = state.dead_lettered
        if self._writes_run_dir():
            self.dead.rewind(state.dead_letter_bytes)
        self.next_offset = state.next_offset
        self.mlflow = (  # a restart continues the same MLflow run (RUN/mlflow_run_id)
            MlflowRun.start(config.train.mlflow, self.out, config.name, config.to_dict())
            if config.train.mlflow and self._writes_run_dir() else None
        )
        self.metrics = MetricAccumulator(
            self.schema.task_names or ["label"],
            window=self.online_config.metrics_window,
            keep_lifetime=False,
        )
        self.exporter = DeltaExporter(
            self.model,
            self.out / "deltas",
            self.base_version,
            self.online_config.delta_precision,
            self.online_config.dense_every,
            self.online_config.snapshot_every_deltas,
        )
        if state.delta_since_versions is not None:  # checkpoints before it: from the tables
            self.exporter.table_versions.update(state.delta_since_versions)
        # Events/s, lag, last delta and windowed AUC on one line; off when not a terminal.
        self._bar = tqdm(
            desc="online", unit=" events", disable=None if progress else True,
            mininterval=1.0, initial=self.events_consumed, dynamic_ncols=True,
        )
        self.delta_latencies: list[float] = []
        # Called after each delta with (version, wall times its events were consumed at).
        self.on_delta = None
        self._pending_consumed_at: list[float] = []
        self._batches_since_delta = state.batches_since_delta
        # Set from another thread to end `run` after the current batch (then, as at any end:
        # a delta, a checkpoint, the status).
        self.stop_requested = threading.Event()
        self._batches_since_checkpoint = 0
        self._last_delta = self._last_checkpoint = self._last_status = time.monotonic()
        self.stall_watch = StallWatch(self.online_config.stall_seconds)
        self._history_step = -1  # events_trained at the last metrics.csv row
        self._started = time.monotonic()
        self._trained_at_start = self.events_trained
        self.run_metrics: RunMetrics | None = None  # metrics.csv + RUN/tb, from the first status
        self._consumed_at_status = -1  # events_consumed at the last status (see stream_lag)
        self.trainer.on_health = self._on_health
        self.source_down_since: float | None = None  # wall time the service stopped answering
        self._source_error = ""
        self._retry_seconds = RETRY_FIRST_SECONDS
        self._uncommitted: int | None = None  # a checkpoint's offset the service did not take

    def _writes_run_dir(self) -> bool:
        """Whether this process owns the run directory's lock and tidies it (rank 0)."""
        return True

    def _load_or_build(self, config: JobConfig) -> tuple[Trainer, JobConfig, OnlineSection | None]:
        """→ (trainer, config, online state of the checkpoint resumed from, or None). Also sets
        `self.kinds` and `self.base_version`."""

        def load(path: Path) -> tuple:
            loaded = load_checkpoint(path, lambda m: build_dense_optimizer(m, config.train))
            return path, loaded, read_manifest(path)

        resumed = self.run_dir.load_checkpoint(load)
        if resumed is not None:
            path, (model, config, optimizer, position), manifest = resumed
            self.kinds = saved_input_kinds(manifest, config.schema)
            self.checkpoint_version = int(path.name) if path.name.isdigit() else 0
            return self._resumed(model, config, optimizer, position, manifest)
        model, config = self._initial_model(config)
        return self._trainer_class()(model, config, None, progress=False), config, None

    def _trainer_class(self) -> type:
        return Trainer

    def _resumed(self, model, config, optimizer, position, manifest: ModelManifest) -> tuple:
        state = manifest.online  # None: a checkpoint written by no online run
        self.base_version = state.base_model_version if state is not None else None
        trainer = self._trainer_class()(model, config, None, optimizer, progress=False)
        trainer.restore_position(position)
        return trainer, config, state

    def _initial_model(self, config: JobConfig) -> tuple:
        """`online.init_model` (a trained model directory), or a fresh model from the config."""
        if self.online_config.init_model:
            loaded = load_model(self.online_config.init_model)
            self.kinds = loaded.input_kinds
            self.base_version = loaded.manifest.model_version
            schema = loaded.config.schema
            if not schema.labels and (labels := self._labels_for_unlabelled(config)):
                # A model trained on an unlabelled interaction log (a two-tower retriever)
                # learns online from labels: those the config declares, else a joined
                # impression log's (its clicks) — positives are its examples.
                schema = schema.model_copy(update={"labels": labels})
            return loaded.model, loaded.config.model_copy(
                update={"online": config.online, "train": config.train, "schema_": schema}
            )
        seed_everything(config.train.seed)  # dense init: same model in every run
        self.kinds = {}
        self.base_version = None  # deltas from a fresh model apply to its checkpoints
        model = build_model(config.model, config.schema, config.table_configs())
        if not model.prepared:
            raise ConfigError(
                f"model {config.model.name} learns part of itself in batch before its first "
                "step: train it with `streamrec train`, then continue online from the model "
                "(online.init_model: RUN/model)"
            )
        return model, config

    def _labels_for_unlabelled(self, config: JobConfig) -> list[Label]:
        """The labels a model saved without any learns from: the config's, else — on a joined
        source — one per label column the join writes (`online.join.tasks`)."""
        if config.schema.labels:
            return list(config.schema.labels)
        if isinstance(self.source, JoinedSource):
            return [Label(name=n) for n in dict.fromkeys(config.online.join.tasks.values())]
        return []

    # ------------------------------------------------------------------ decoding
    def decode(self, messages: list[Message]) -> pa.Table | None:
        """The batch's good records as a table; every other message is dead-lettered with its
        offset and reason (`json_records.StreamRecordDecoder`: nothing in a message's content
        can raise here)."""
        values = [m.value for m in messages]
        decoder = self._record_decoder(values)
        table, rejects = decoder.decode(values)
        for i, reason in rejects:
            m = messages[i]
            self.dead.reject(
                m.where or f"offset {m.offset}",
                None,
                reason,
                m.value[:500].decode("utf-8", "replace"),
            )
        return table

    def _record_decoder(self, first_values: list[bytes]) -> StreamRecordDecoder:
        """Input kinds come from the model resumed or started from, else from the schema's
        declarations (`kind:`), else — for columns neither names — from the majority of the
        first messages that carry them (logged: declare them to remove the guess)."""
        inputs = self.schema.input_columns(with_labels=False)
        if self._decoder is not None and not self._unknown_kinds:
            return self._decoder
        if self._decoder is None:
            declared = self.schema.declared_kinds()
            self.kinds = {c: self.kinds.get(c) or declared.get(c) for c in inputs}
            self.kinds = {c: k for c, k in self.kinds.items() if k}
        unknown = [c for c in inputs if c not in self.kinds]
        voted = majority_kinds(first_values, unknown) if unknown else {}
        if voted:
            self.log(
                f"input kinds from the stream's majority (declare `kind:` to fix them): {voted}"
            )
            self.kinds.update(voted)
        self._unknown_kinds = [c for c in unknown if c not in voted]
        self._decoder = StreamRecordDecoder(
            {c: self.kinds[c] for c in inputs if c in self.kinds},
            self.schema.labels,
            self.schema.timestamp,
            self.online_config.max_message_bytes,
            self.schema.timestamp_unit,
            self.schema.max_event_skew_seconds,
            self.schema.max_event_age_seconds,
        )
        return self._decoder

    # ------------------------------------------------------------------ the loop
    def _drain_source_rejects(self) -> None:
        """Messages a composite source could not use (e.g. unjoinable) are dead-lettered too."""
        bad = getattr(self.source, "bad_messages", None)
        while bad:
            stream, where, reason = bad.pop(0)
            self.dead.reject(f"{stream} {where}", None, reason)

    def step(self, messages: list[Message]) -> None:
        self._drain_source_rejects()
        consumed_at = time.time()
        self.events_consumed += len(messages)
        self._bar.update(len(messages))
        self.next_offset = messages[-1].offset + 1
        table = self.decode(messages)
        if table is not None:
            batch = self.encode_schema.encode(table)
            if self.model.predicts_labels:  # a retriever predicts no label: nothing to score
                self.model.eval()
                preds = self.model.predict(batch).numpy()  # predict first …
                self.metrics.update(batch.labels[:, : preds.shape[1]].numpy(), preds)
            self.trainer.train_step(batch)  # … then learn
            self.events_trained += batch.size
            self._pending_consumed_at.append(consumed_at)
            self._check_calibration()
            self.trainer.raise_if_health_stop()
        self._batches_since_delta += 1
        self._batches_since_checkpoint += 1
        if self._due(
            self._batches_since_delta,
            self._last_delta,
            self.online_config.sync_every_batches,
            self.online_config.sync_interval_seconds,
        ):
            self.sync()
        if self._due(
            self._batches_since_checkpoint,
            self._last_checkpoint,
            self.online_config.checkpoint_every_batches,
            self.online_config.checkpoint_interval_seconds,
        ):
            self.checkpoint()

    def _idle_status_seconds(self) -> float:
        return min(self.online_config.sync_interval_seconds, self.online_config.stall_seconds / 4)

    def _due(self, batches: int, since: float, every_batches: int, every_seconds: float) -> bool:
        if self.online_config.deterministic:
            return batches >= every_batches
        return time.monotonic() - since >= every_seconds

    def _check_calibration(self) -> None:
        """On the trainer's check steps: each task's windowed calibration (health rule)."""
        health = self.trainer.health
        if health is None or not health.due(self.trainer.global_step):
            return
        for task, metrics in self.metrics.windowed().items():
            health.check_calibration(
                self.trainer.global_step, task, metrics["calibration"], metrics["positives"]
            )
        if fired := health.take_fired():
            self.trainer.report_health(fired)

    def _on_health(self, fired: list) -> None:
        """Warnings that started firing: TensorBoard now; status.json and the next delta carry
        the active ones (and from the delta, the server's status page)."""
        if self.run_metrics is None:
            self.run_metrics = RunMetrics(
                self.out, self._trained_at_start or None, self.log, mlflow=self.mlflow
            )
        step = self.events_trained
        self.run_metrics.scalars("health", {w.key: w.value for w in fired}, step)
        self.run_metrics.flush()

    def _health(self) -> list[dict[str, Any]]:
        """The active warnings (status.json, and through deltas the server's status page),
        with the source's unavailability among them while it lasts."""
        health = self.trainer.health
        active = health.active_json() if health is not None else []
        if self.source_down_since is not None:
            active.append({
                "rule": "source_unavailable", "subject": "", "message": self._source_error,
                "value": time.time() - self.source_down_since,
                "step": self.trainer.global_step, "since": self.source_down_since,
            })
        return active

    def sync(self) -> Path:
        path = self.exporter.export(
            DeltaProgress(
                offsets={"next": self.next_offset},
                events_trained=self.events_trained,
                checkpoint_version=self.checkpoint_version,
                health=self._health(),
                consumed_at=consumed_range(self._pending_consumed_at),
            )
        )
        now = time.time()
        if self.on_delta is not None:
            self.on_delta(self.exporter.version, list(self._pending_consumed_at))
        self.delta_latencies.extend(now - t for t in self._pending_consumed_at)
        del self.delta_latencies[:-10_000]
        self._pending_consumed_at.clear()
        self._batches_since_delta = 0
        self._last_delta = time.monotonic()
        self.write_status()
        return path

    def _online_state(self) -> dict[str, Any]:
        """What a checkpoint must hold to resume the stream exactly where it stands."""
        online = {
            "next_offset": self.next_offset,
            "events_consumed": self.events_consumed,
            "events_trained": self.events_trained,
            "dead_lettered": self.dead.count,
            "dead_letter_bytes": self.dead.checkpoint(),
            "base_model_version": self.base_version,
            # What the next delta must send: changes after these table versions — those
            # made between the last delta and this checkpoint included — and where the
            # delta cadence stands, so a resumed run exports what an uninterrupted one would.
            "delta_since_versions": dict(self.exporter.table_versions),
            "batches_since_delta": self._batches_since_delta,
        }
        if hasattr(self.source, "state"):
            online["source_state"] = self.source.state()
        return online

    def checkpoint(self) -> None:
        """Model, optimizer and stream position, then the commit. Until a good record has
        said how to read the inputs (kinds neither declared nor resumed), there is nothing a
        model directory could record, so no checkpoint is written: a restart then re-reads
        from the last one, and any dead letters are rewritten identically."""
        declared = self.schema.declared_kinds()
        unknown = [
            c
            for c in self.schema.input_columns(with_labels=False)
            if c not in self.kinds and c not in declared
        ]
        if unknown:
            self.log(
                f"no checkpoint yet: no good record has shown how to read {unknown} "
                "(declare `kind:` on those features to checkpoint from the start)"
            )
            return
        # A server that reloads this checkpoint needs only the deltas written after it.
        self.trainer.extra_manifest = {
            "input_kinds": self.kinds,
            "online": self._online_state(),
            "last_delta_version": self.exporter.version,
        }
        path = self.run_dir.save_checkpoint(self.trainer.checkpoint)
        self.checkpoint_version = int(path.name)
        self._commit(self.next_offset)  # only once the checkpoint covering it is durable
        self._batches_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()

    def _commit(self, offset: int) -> None:
        if self.source_down_since is not None:  # no call that would wait on a service away
            self._uncommitted = offset
            return
        try:
            self.source.commit(offset)
            self._uncommitted = None
        except StreamUnavailable as e:  # the checkpoint holds the position; commit it later
            self._uncommitted = offset
            self.log(f"commit of offset {offset} deferred: {e}")

    def _poll(self, batch_size: int) -> list[Message]:
        """One poll. An unavailable service is waited out — a backoff sleep, `status.json`
        kept current — and raised only once it was away longer than the service timeout."""
        try:
            messages = self.source.poll(batch_size, timeout=0.2)
        except StreamUnavailable as e:
            self._source_unavailable(e)
            return []
        if self.source_down_since is not None:
            self.log(f"source available again after {time.time() - self.source_down_since:.1f} s")
            self.source_down_since, self._retry_seconds = None, RETRY_FIRST_SECONDS
            if self._uncommitted is not None:
                self._commit(self._uncommitted)
            self.write_status()
        return messages

    def _source_unavailable(self, error: StreamUnavailable) -> None:
        now, timeout = time.time(), self.online_config.service_timeout_seconds
        self._source_error = str(error)[:300]
        if self.source_down_since is None:
            self.source_down_since = now
            self.log(f"source unavailable: {error} (retrying for up to {timeout:g} s)")
            self.write_status()
        elif now - self.source_down_since > timeout:
            raise StreamUnavailable(
                f"{error} — unavailable for {now - self.source_down_since:.0f} s "
                f"(online.service_timeout_seconds {timeout:g}); a checkpoint was saved and a "
                "rerun continues from it"
            )
        time.sleep(self._retry_seconds)
        self._retry_seconds = min(2 * self._retry_seconds, RETRY_MAX_SECONDS)
        if time.monotonic() - self._last_status >= 1.0:
            self.write_status()

    def _unavailable(self) -> dict[str, Any] | None:
        if self.source_down_since is None:
            return None
        return {"since": self.source_down_since, "error": self._source_error}

    def stream_lag(self) -> dict[str, Any]:
        """Per-partition position, head, lag (messages and seconds) and the stall state. A
        source that cannot answer (a broker down) is reported, never raised: status must not
        stop training."""
        try:
            if self.source_down_since is not None:  # asking would wait out a request timeout
                raise StreamUnavailable(self._source_error)
            flowing = self.events_consumed != self._consumed_at_status
            self._consumed_at_status = self.events_consumed
            partitions = [asdict(p) for p in self.source.partition_lag(fresh=not flowing)]
        except Exception as e:  # any client error is a status to report, not a crash
            partitions, error = None, f"{type(e).__name__}: {e}"[:300]
        else:
            error = None
        head = None if partitions is None else self.next_offset + sum(p["lag"] for p in partitions)
        change = self.stall_watch.observe(self.events_consumed, head, time.time())
        if change is not None:
            self.log(change)
        seconds = [p["lag_seconds"] for p in partitions or [] if p["lag_seconds"] is not None]
        return {
            "lag": None if head is None else head - self.next_offset,
            "lag_seconds": max(seconds) if seconds else None,
            "partitions": partitions,
            "lag_error": error,
            "stalled": self.stall_watch.stalled,
        }

    def status(self) -> dict[str, Any]:
        lat = np.array(self.delta_latencies) if self.delta_latencies else None
        return {
            "events_consumed": self.events_consumed,
            "events_trained": self.events_trained,
            "dead_lettered": self.dead.count,
            "next_offset": self.next_offset,
            **self.stream_lag(),
            "last_delta_version": self.exporter.version,
            "event_to_delta_seconds": None
            if lat is None
            else {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
            "windowed": self.metrics.windowed(),
            "health": self._health(),
            "source_unavailable": self._unavailable(),
            "updated": time.time(),
        }

    def write_status(self) -> None:
        status = self.status()
        write_atomic(
            self.out / "status.json", json.dumps(json_ready(status), indent=1, allow_nan=False)
        )
        first = next(iter(status["windowed"].values()), {})
        self._bar.set_postfix(
            lag=status["lag"], delta=status["last_delta_version"],
            auc=f"{first.get('auc', float('nan')):.4f}", refresh=False,
        )
        self._last_status = time.monotonic()
        self._history(status)

    def _history(self, status: dict[str, Any]) -> None:
        """What status.json says now, kept: a metrics.csv row (phase "online": the windowed
        metrics of the first task) and TensorBoard scalars under RUN/tb (every task's windowed
        metrics, lag, freshness), at step = events trained. Only when training moved, so an
        idle run does not repeat itself."""
        step = status["events_trained"]
        if step == self._history_step:
            return
        self._history_step = step
        first = next(iter(status["windowed"].values()), {})
        elapsed = max(time.monotonic() - self._started, 1e-9)
        row = {"phase": "online", "epoch": 0, "step": step, "samples": step, **first}
        row["samples_per_s"] = (step - self._trained_at_start) / elapsed
        if self.run_metrics is None:
            self.run_metrics = RunMetrics(
                self.out, self._trained_at_start or None, self.log, mlflow=self.mlflow
            )
        self.run_metrics.row(row)
        for task, metrics in status["windowed"].items():
            self.run_metrics.scalars(f"online_{task}", metrics, step)
        freshness = status["event_to_delta_seconds"] or {}
        stream = {
            "lag": status["lag"],
            "lag_seconds": status["lag_seconds"],
            "event_to_delta_p50": freshness.get("p50"),
            "event_to_delta_p99": freshness.get("p99"),
            "dead_lettered": status["dead_lettered"],
        }
        self.run_metrics.scalars("stream", stream, step)
        self.run_metrics.flush()

    @property
    def synced(self) -> bool:
        """Whether every batch trained so far is in a delta already."""
        return not self._pending_consumed_at

    def close(self) -> None:
        """Let go of the run directory without a final checkpoint (`run` ends with one): what
        a crash does, and what a caller does before handing the directory to another trainer."""
        self._bar.close()
        self.dead.close()
        self.run_dir.release()

    def run(self, stop_when_idle: float | None = None, max_events: int | None = None) -> dict:
        try:
            self._loop(stop_when_idle, max_events)
        except (HealthStop, StreamUnavailable):  # end as a clean stop would, then say why
            self.sync()
            self.checkpoint()
            self.write_status()
            self.close()
            self._finish_mlflow("FAILED")
            raise
        self.sync()
        self.checkpoint()
        self.write_status()
        self.close()
        self._finish_mlflow("FINISHED")
        return self.status()

    def _finish_mlflow(self, status: str) -> None:
        """The MLflow run's artifacts, pointing at the newest checkpoint (what serves)."""
        if self.mlflow is not None:
            newest = newest_version(self.out / "checkpoint")
            self.mlflow.finish(newest, status=status)

    def _loop(self, stop_when_idle: float | None, max_events: int | None) -> None:
        batch_size = self.config.data.batch_size
        idle_since = time.monotonic()
        while not self.stop_requested.is_set():
            messages = self._poll(batch_size)
            self._drain_source_rejects()  # also gaps found by a poll that delivered nothing
            if self.source_down_since is not None:
                idle_since = time.monotonic()  # an outage is not the stream running dry
            if messages:
                idle_since = time.monotonic()
                self.step(messages)
                if max_events is not None and self.events_consumed >= max_events:
                    break
            elif stop_when_idle is not None and time.monotonic() - idle_since >= stop_when_idle:
                break
            elif not self.online_config.deterministic and (
                self._pending_consumed_at
                and time.monotonic() - self._last_delta >= self.online_config.sync_interval_seconds
            ):
                self.sync()
            elif time.monotonic() - self._last_status >= self._idle_status_seconds():
                self.write_status()  # idle: lag and stalls are still watched
