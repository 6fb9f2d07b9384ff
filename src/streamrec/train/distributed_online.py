"""`torchrun --nproc_per_node N -m streamrec online CONFIG --source S --out OUT`: online training
on N ranks, with the same guarantees as one process.

* Rank 0 is the stream's only consumer: it polls, decodes (dead-lettering what is malformed),
  and decides when a delta or a checkpoint is due. Each decision, with the decoded batch, is
  broadcast, so every rank takes the same steps in the same order.
* Every rank predicts (progressive validation, gathered on rank 0) and then trains its 1/N slice
  of each batch; tables are sharded row-wise and the dense part is under DDP, as in batch
  training (`train/distributed.py`).
* Deltas: every rank collects the rows of its shard changed since the last delta; rank 0 writes
  them as one delta, so a server applies it exactly as one from a single process.
* Checkpoints are sharded (`train/sharded_checkpoint.py`) and carry rank 0's stream position; the
  source is committed only once every rank's shard is durable. A job restarted by
  `torchrun --max-restarts`, or run again with the same OUT, resumes from the newest one —
  events after it are trained exactly once more, none before it twice.
* At the end rank 0 merges the shards into OUT/model, a model directory `serve` and `eval` read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from streamrec.config import ConfigError, JobConfig
from streamrec.data.stream.base import StreamSource, StreamUnavailable
from streamrec.embedding.reshard import reshard
from streamrec.store import read_manifest
from streamrec.store.delta import TableDelta
from streamrec.store.manifest import DeltaProgress
from streamrec.train.delta_export import consumed_range
from streamrec.train.distributed import (
    DistributedTrainer,
    dist_timeout,
    init_process_group,
    local_slice,
    merge_shards,
    shard_for_training,
)
from streamrec.train.health import HealthStop
from streamrec.train.online import OnlineTrainer
from streamrec.train.sharded_checkpoint import (
    latest_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from streamrec.train.trainer import build_dense_optimizer


class DistributedOnlineTrainer(OnlineTrainer):
    """`OnlineTrainer` on every rank of an initialised process group; `source` is read on rank 0
    only (pass None elsewhere)."""

    def __init__(
        self,
        config: JobConfig,
        source: StreamSource | None,
        out: str | Path,
        exchange_group: object = None,
        timeout: timedelta | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._exchange_group, self._timeout = exchange_group, timeout or dist_timeout()
        super().__init__(config, source, out, progress=False, log=log)

    def _writes_run_dir(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ model
    def _load_or_build(self, config: JobConfig) -> tuple:
        step_dir = latest_checkpoint(self.out / "checkpoint")
        if step_dir is not None:
            model, config, optimizer, position, self.kinds = load_sharded_checkpoint(
                step_dir, self.rank, self.world, lambda m: build_dense_optimizer(m, config.train)
            )
            manifest = read_manifest(step_dir / "rank-000")  # the stream position is rank 0's
            trainer, config, state = self._resumed(model, config, optimizer, position, manifest)
        else:
            model, config = self._initial_model(config)
            if (
                self.online_config.init_model
            ):  # a single-process model: keep only the rows this rank owns
                for table in model.dynamic_tables().values():
                    table.load_state_dict(
                        reshard(table.settings, [table.state_dict()], self.world)[self.rank]
                    )
            trainer, state = DistributedTrainer(model, config, None, progress=False), None
        if not trainer.model.predicts_labels:
            raise ConfigError(
                "online training under torchrun takes a ranking model; train a two-tower "
                "retriever online in one process (`streamrec online`, no torchrun)"
            )
        shard_for_training(trainer, config, self._exchange_group, self._timeout)
        return trainer, config, state

    def _trainer_class(self) -> type:
        return DistributedTrainer

    # ------------------------------------------------------------------ the loop
    def run(self, stop_when_idle: float | None = None, max_events: int | None = None) -> dict:
        stopped: HealthStop | None = None
        try:
            self._loop_everywhere(stop_when_idle, max_events)
        except HealthStop as e:  # every rank decided it together (`Trainer.agree_any`)
            stopped = e
        self.sync()
        return self._finish(stopped)

    def _loop_everywhere(self, stop_when_idle: float | None, max_events: int | None) -> None:
        batch_size = self.config.data.batch_size
        idle_since = time.monotonic()
        self._unavailable_at_stop: str | None = None
        while True:
            order: dict[str, Any] | None = None
            if self.rank == 0:
                order = self._next_order(batch_size, stop_when_idle, max_events, idle_since)
                if order["action"] == "step" or self.source_down_since is not None:
                    idle_since = time.monotonic()  # an outage is not the stream running dry
            box = [order]
            dist.broadcast_object_list(box, src=0)
            order = box[0]
            if order["action"] == "step":
                self._step_everywhere(order)
            elif order["action"] == "sync":
                self.sync()
            if order.get("stop"):
                self._unavailable_at_stop = order.get("unavailable")
                break

    def _finish(self, stopped: HealthStop | None) -> dict:
        self.checkpoint()
        status = self.status() if self.rank == 0 else {}
        if self.rank == 0:
            self.write_status()
            merge_shards(
                latest_checkpoint(self.out / "checkpoint"),
                self.world,
                self.out / "model",
                {
                    "input_kinds": self.kinds,
                    "online": {"events_trained": self.events_trained},
                    "last_delta_version": self.exporter.version,
                    "trained_on_ranks": self.world,
                },
            )
        dist.barrier()
        self.dead.close()
        if stopped is not None:
            raise stopped
        if self._unavailable_at_stop:
            raise StreamUnavailable(self._unavailable_at_stop)
        return status

    def _next_order(
        self,
        batch_size: int,
        stop_when_idle: float | None,
        max_events: int | None,
        idle_since: float,
    ) -> dict[str, Any]:
        """Rank 0: what every rank does next — train a batch, write a delta, or stop."""
        try:
            messages = self._poll(batch_size)
        except StreamUnavailable as e:  # past the timeout: every rank stops together
            return {"action": "stop", "stop": True, "unavailable": str(e)}
        self._drain_source_rejects()  # also gaps found by a poll that delivered nothing
        if messages:
            consumed = self.events_consumed + len(messages)
            return {
                "action": "step",
                "table": self.decode(messages),
                "events_consumed": consumed,
                "next_offset": messages[-1].offset + 1,
                "consumed_at": time.time(),
                "sync": self._due(
                    self._batches_since_delta + 1,
                    self._last_delta,
                    self.online_config.sync_every_batches,
                    self.online_config.sync_interval_seconds,
                ),
                "checkpoint": self._due(
                    self._batches_since_checkpoint + 1,
                    self._last_checkpoint,
                    self.online_config.checkpoint_every_batches,
                    self.online_config.checkpoint_interval_seconds,
                ),
                "stop": max_events is not None and consumed >= max_events,
            }
        if stop_when_idle is not None and time.monotonic() - idle_since >= stop_when_idle:
            return {"action": "stop", "stop": True}
        if not self.online_config.deterministic and (
            self._pending_consumed_at
            and time.monotonic() - self._last_delta >= self.online_config.sync_interval_seconds
        ):
            return {"action": "sync"}
        return {"action": "idle"}

    def _step_everywhere(self, order: dict[str, Any]) -> None:
        self.events_consumed = order["events_consumed"]
        self.next_offset = order["next_offset"]
        table = order["table"]
        if table is not None:
            batch = self.encode_schema.encode(table)
            mine = local_slice(batch, self.rank, self.world)
            self.model.eval()
            preds = self.model.predict(mine).numpy()  # predict first …
            labels = mine.labels[:, : preds.shape[1]].numpy()
            everyone: list = [None] * self.world
            dist.all_gather_object(everyone, (labels, preds))
            if self.rank == 0:
                self.metrics.update(
                    np.concatenate([lab for lab, _ in everyone]),
                    np.concatenate([p for _, p in everyone]),
                )
            self.trainer.train_step(mine)  # … then learn
            self.events_trained += batch.size
            self._pending_consumed_at.append(order["consumed_at"])
            if self.rank == 0:
                self._check_calibration()  # the gathered predictions are rank 0's
            self.trainer.raise_if_health_stop()  # collective on check steps
        self._batches_since_delta += 1
        self._batches_since_checkpoint += 1
        if order["sync"]:
            self.sync()
        if order["checkpoint"]:
            self.checkpoint()

    # ------------------------------------------------------------------ outputs
    def sync(self) -> Path | None:
        """Collective: every rank's changed rows → one delta written by rank 0."""
        self.trainer.flush_sparse()
        mine = self.exporter.collect()
        everyone: list = [None] * self.world
        dist.all_gather_object(everyone, mine)
        path = None
        if self.rank == 0:
            merged = {name: _concat([parts[name] for parts in everyone]) for name in mine}
            path = self.exporter.write(
                merged,
                DeltaProgress(
                    offsets={"next": self.next_offset},
                    events_trained=self.events_trained,
                    health=self._health(),
                    consumed_at=consumed_range(self._pending_consumed_at),
                ),
            )
            if self.on_delta is not None:
                self.on_delta(self.exporter.version, list(self._pending_consumed_at))
            now = time.time()
            self.delta_latencies.extend(now - t for t in self._pending_consumed_at)
            del self.delta_latencies[:-10_000]
        else:
            self.exporter.version += 1  # every rank numbers deltas alike
        self._pending_consumed_at.clear()
        self._batches_since_delta = 0
        self._last_delta = time.monotonic()
        if self.rank == 0:
            self.write_status()
        return path

    def checkpoint(self) -> None:
        """Collective: every rank's shard, then rank 0 publishes the step and commits."""
        kinds = [self.kinds]  # learnt from the stream, which only rank 0 reads
        dist.broadcast_object_list(kinds, src=0)
        self.kinds = kinds[0]
        self.trainer.extra_manifest = {
            "input_kinds": self.kinds,
            "online": self._online_state() if self.rank == 0 else {},
            "last_delta_version": self.exporter.version,
        }
        save_sharded_checkpoint(self.trainer, self.out / "checkpoint", None, False)
        if self.rank == 0:
            self.source.commit(self.next_offset)  # only once every shard is durable
        self._batches_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()


def _concat(parts: list[TableDelta]) -> TableDelta:
    def cat(xs: list[torch.Tensor | None]) -> torch.Tensor | None:
        return None if xs[0] is None else torch.cat(xs)

    return TableDelta(
        torch.cat([p.fids for p in parts]),
        torch.cat([p.values for p in parts]),
        torch.cat([p.deleted for p in parts]),
        cat([p.scale for p in parts]),
        cat([p.offset for p in parts]),
        cat([p.counts for p in parts]),
    )


def run_distributed_online(
    config: JobConfig,
    open_source: Callable[[], StreamSource],
    out: str | Path,
    stop_when_idle: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """The body of `torchrun … -m streamrec online`: → rank 0's final status ({} elsewhere).
    `open_source` is called on rank 0 only."""
    timeout = dist_timeout()
    init_process_group(timeout)
    try:
        exchange = dist.new_group(backend="gloo", timeout=timeout)
        rank = dist.get_rank()
        source = open_source() if rank == 0 else None
        trainer = DistributedOnlineTrainer(
            config, source, out, exchange, timeout, log if rank == 0 else None
        )
        return trainer.run(stop_when_idle=stop_when_idle)
    finally:
        dist.destroy_process_group()
