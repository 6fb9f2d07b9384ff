"""`torchrun --nproc_per_node N -m streamrec train CONFIG`: the same job on N processes.

Every rank reads the same stream of global batches and trains on its 1/N slice of each (so N
ranks see exactly what one process would); embedding tables are sharded row-wise over the ranks
(`embedding/sharded.py`), the dense part is data-parallel (DDP, gloo on CPU). Validation
metrics are computed over all ranks' predictions. At the end every rank writes its shard
(`OUT/shards/rank-NNN`, a model directory of its rows) and rank 0 reshards them into one
ordinary model directory (`OUT/model`) that `streamrec eval` and `serve` read in one process.
A rank that dies makes the others fail at their next exchange, after the process-group timeout
(STREAMREC_DIST_TIMEOUT seconds, default 120), instead of hanging.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from streamrec.batch import Batch
from streamrec.config import ConfigError, JobConfig, TableConfig
from streamrec.data.errors import DeadLetter
from streamrec.embedding.reshard import load_resharded_tables
from streamrec.embedding.sharded import shard_tables
from streamrec.models.persistence import load_model, save_model
from streamrec.train.job import open_training_data
from streamrec.train.metrics import MetricAccumulator
from streamrec.train.preparation import Start, fit, fresh_start, seed_everything
from streamrec.train.run_dir import RunDir
from streamrec.train.sharded_checkpoint import (
    latest_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from streamrec.train.trainer import Trainer, TrainResult, build_dense_optimizer


def world_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def wants_sharded_run(out: str | Path, resume: bool) -> bool:
    """Launched by torchrun with several ranks, or resuming (in any number of processes, one
    included) from the sharded checkpoint such a job wrote."""
    return world_from_env() > 1 or (
        resume and latest_checkpoint(Path(out) / "checkpoint") is not None
    )


def local_slice(batch: Batch, rank: int, world: int) -> Batch:
    lo, hi = batch.size * rank // world, batch.size * (rank + 1) // world
    return batch.slice(lo, hi)


class DistributedTrainer(Trainer):
    """A Trainer whose validation gathers every rank's predictions before computing metrics,
    and whose checkpoints are sharded (`train/sharded_checkpoint.py`)."""

    checkpoint_root: Path | None = None
    best_root: Path | None = None  # the best epoch's sharded checkpoint (see save_best)
    sharded: list = []  # the model's EmbeddingCollections, their tables sharded

    def flush_sparse(self) -> None:
        """Apply every embedding gradient still in flight (hybrid mode) before the tables are
        read as a whole: evaluation, eviction, checkpoints."""
        for collection in self.sharded:
            collection.flush()

    def quiesce_tables(self) -> None:
        self.flush_sparse()
        super().quiesce_tables()

    def step_examples(self) -> int:
        """This rank's loss terms × the world size: the exchange divides each rank's row
        gradients by the world size before the owner sums them, so scaling by this gives
        every example's gradient summed, however unevenly the batch was sliced."""
        return super().step_examples() * dist.get_world_size()

    def save_best(self, metrics: dict) -> None:
        if self.best_root is not None:
            self.flush_sparse()
            save_sharded_checkpoint(self, self.best_root, metrics, epoch_done=True)

    def restore_best(self) -> bool:
        step_dir = latest_checkpoint(self.best_root) if self.best_root is not None else None
        if step_dir is None:
            return False
        best, *_ = load_sharded_checkpoint(
            step_dir,
            dist.get_rank(),
            dist.get_world_size(),
            lambda m: build_dense_optimizer(m, self.train_config),
        )
        self.model.load_state_dict(best.state_dict())  # this rank's shard of every table
        return True

    def status_dir(self) -> Path | None:
        """Rank 0 writes the job's status.json (its own warnings; every rank logs its own)."""
        if self.checkpoint_root is None or dist.get_rank() != 0:
            return None
        return self.checkpoint_root.parent

    def nothing_to_learn(self, examples: int) -> bool:
        return False  # a rank's empty share still steps with the averaged gradients

    def agree_any(self, flag: bool) -> bool:
        """Whether any rank says yes (a health stop: every rank must stop at the same step)."""
        vote = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        return bool(vote[0])

    def agreed_norm(self, norm: torch.Tensor) -> torch.Tensor:
        """The largest norm over the ranks: each rank holds its own rows' gradients, and every
        rank must clip alike and skip the same steps (a skipped exchange would hang the rest)."""
        agreed = norm.detach().reshape(1).float()
        agreed = torch.where(torch.isfinite(agreed), agreed, torch.inf)  # NaN never wins a max
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        return agreed[0]

    def save_progress(self, metrics: dict | None = None, epoch_done: bool = False) -> None:
        if self.checkpoint_root is not None:
            self.flush_sparse()
            save_sharded_checkpoint(self, self.checkpoint_root, metrics, epoch_done)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> dict[str, dict[str, float]]:
        self.flush_sparse()
        self.model.eval()
        rank, world = dist.get_rank(), dist.get_world_size()
        labels, preds, groups = [], [], []
        for batch in batches:
            part = local_slice(batch, rank, world)
            p = self.model.predict(part)
            labels.append(part.labels[:, : p.shape[1]].numpy())
            preds.append(p.numpy())
            if part.group_ids is not None:
                groups.append(part.group_ids.numpy())
        mine = (
            np.concatenate(labels),
            np.concatenate(preds),
            np.concatenate(groups) if groups else None,
        )
        everyone: list = [None] * world
        dist.all_gather_object(everyone, mine)
        acc = MetricAccumulator(self.tasks)
        for lab, pred, grp in everyone:
            acc.update(lab, pred, grp)
        return acc.lifetime()


def init_process_group(timeout: timedelta) -> None:
    """gloo over torchrun's rendezvous store, under a key prefix of this attempt: workers that
    torchrun restarts (`--max-restarts`) would otherwise read the dead workers' addresses,
    still in the store, and fail to connect."""
    if "MASTER_ADDR" not in os.environ:  # one process, not launched by torchrun
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        return
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=rank == 0 and not agent_store,
        timeout=timeout,
    )
    dist.init_process_group(
        "gloo",
        store=dist.PrefixStore(f"streamrec/attempt-{attempt}", store),
        rank=rank,
        world_size=world,
        timeout=timeout,
    )


def dist_timeout() -> timedelta:
    """How long a collective waits for a dead or stuck rank (STREAMREC_DIST_TIMEOUT seconds)."""
    return timedelta(seconds=float(os.environ.get("STREAMREC_DIST_TIMEOUT", "120")))


def shard_for_training(
    trainer: Trainer,
    config: JobConfig,
    exchange: object,
    timeout: timedelta,
) -> None:
    """Shard the trainer's embedding collections over `exchange` and put the dense part under
    DDP. Collective: in hybrid mode (`train.sparse_staleness`) every rank opens the group the
    gradients in flight travel on here."""
    train = config.train
    dtype = torch.float16 if train.exchange_precision == "fp16" else torch.float32
    gradient_group = (
        dist.new_group(backend="gloo", timeout=timeout) if train.sparse_staleness else None
    )
    trainer.sharded = shard_tables(
        trainer.model, exchange, dtype, train.sparse_staleness, gradient_group
    )
    trainer.forward_module = DistributedDataParallel(trainer.model)


def restarted_by_torchrun() -> bool:
    """torchrun counts restarts of the worker group (`--max-restarts`) in this variable."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def run_distributed_training(
    config: JobConfig, out: str | Path, resume: bool = False, progress: bool = True
) -> tuple[TrainResult, Path]:
    """Train on this rank's slice of every global batch. With `resume`, or when torchrun has
    restarted the workers after a failure, continue from OUT/checkpoint's newest complete step
    (resharding its tables if the world size changed)."""
    out = Path(out)
    timeout = dist_timeout()
    init_process_group(timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    config = storage_for_rank(config, rank)
    run = RunDir(out)
    try:
        if rank == 0:
            run.open()  # one job per run directory: rank 0 holds the lock for all ranks
        exchange = dist.new_group(backend="gloo", timeout=timeout)
        seed_everything(config.train.seed)
        dead = DeadLetter(
            out / f"dead_letter.rank{rank}.jsonl" if rank == 0 else None, strict=config.data.strict
        )
        splits, pinned = open_training_data(config, dead)
        step_dir = latest_checkpoint(out / "checkpoint")
        if step_dir is not None and (resume or restarted_by_torchrun()):
            start = sharded_checkpoint_start(step_dir, rank, world, config)
            if rank == 0:
                step = start.position["global_step"]
                print(f"resuming from {step_dir} (step {step})", file=sys.stderr, flush=True)
        else:
            if rank == 0:  # a fresh run: checkpoints of an earlier run in OUT are not ours
                shutil.rmtree(out / "checkpoint", ignore_errors=True)
                shutil.rmtree(out / "best", ignore_errors=True)
            start = fresh_start(config, splits)  # same sample on every rank → same schema
            if not start.model.prepared:
                raise ConfigError(
                    f"model {config.model.name} fits part of itself in batch on one process "
                    "(gbdt_lr's trees): train it with `streamrec train`, without torchrun"
                )
        pinned.update(start.kinds)
        trainer = DistributedTrainer(
            start.model, start.config, None, start.optimizer, progress=progress and rank == 0
        )
        shard_for_training(trainer, start.config, exchange, timeout)
        trainer.checkpoint_root = out / "checkpoint"
        trainer.best_root = out / "best"
        result = fit(trainer, start, splits, lambda batch: local_slice(batch, rank, world))
        trainer.flush_sparse()
        dead.close()
        result.samples_per_s *= world  # every rank trained its slice in the same time
        shard_dir = out / "shards" / f"rank-{rank:03d}"
        save_model(
            shard_dir,
            start.model,
            start.config,
            {"rank": rank, "world_size": world, "input_kinds": start.kinds},
        )
        dist.barrier()
        model_dir = out / "model"
        if rank == 0:
            model_dir = merge_shards(
                out / "shards",
                world,
                model_dir,
                {
                    "metrics": result.metrics,
                    "train": result.to_json(),
                    "dead_lettered": dead.count,
                    "input_kinds": start.kinds,
                    "trained_on_ranks": world,
                },
            )
        dist.barrier()
        return result, model_dir
    finally:
        run.release()
        dist.destroy_process_group()


def storage_for_rank(config: JobConfig, rank: int) -> JobConfig:
    """Tiered tables (`storage:`) get a folder per rank, `path/rank-NNN`: each rank's shard
    is its own disk tier, and two ranks on one machine must not open one store."""
    def own(table: TableConfig) -> TableConfig:
        if table.storage is None:
            return table
        path = str(Path(table.storage.path) / f"rank-{rank:03d}")
        storage = table.storage.model_copy(update={"path": path})
        return table.model_copy(update={"storage": storage})

    tables = [config.default_table, *config.tables.values()]
    if all(t.storage is None for t in tables):
        return config
    return config.model_copy(
        update={
            "default_table": own(config.default_table),
            "tables": {name: own(t) for name, t in config.tables.items()},
        }
    )


def sharded_checkpoint_start(step_dir: Path, rank: int, world: int, config: JobConfig) -> Start:
    """This rank's `Start` from a sharded checkpoint (resharded when the world size changed);
    the schedule asked for now (`--epochs` extends) replaces the saved one."""
    model, saved, optimizer, position, kinds = load_sharded_checkpoint(
        step_dir, rank, world, lambda m: build_dense_optimizer(m, config.train)
    )
    saved.train.epochs = config.train.epochs
    return Start(model, saved, kinds, optimizer, position)


def merge_shards(shards: Path, world: int, model_dir: Path, extra_manifest: dict) -> Path:
    """N shard directories (shards/rank-NNN) → one single-process model directory (M = 1
    resharding), with `extra_manifest` (metrics, input kinds …) in its manifest."""
    first = load_model(shards / "rank-000")  # dense weights are identical on every rank (DDP)
    load_resharded_tables(first.model, [shards / f"rank-{r:03d}" for r in range(world)], 1, 0)
    return save_model(model_dir, first.model, first.config, extra_manifest)
