"""`torchrun --nproc_per_node N -m streamrec train CONFIG`: the same job on N processes.

Every rank reads the same stream of global batches and trains on its 1/N slice of each (so N
ranks see exactly what one process would); embedding tables are sharded row-wise over the ranks
(`ShardedEmbeddingCollection`), the dense part is data-parallel (DDP, gloo on CPU). Validation
metrics are computed over all ranks' predictions. At the end every rank writes its shard
(`OUT/shards/rank-NNN`, a model directory of its rows) and rank 0 reshards them into one
ordinary model directory (`OUT/model`) that `streamrec eval` and `serve` read in one process.
A rank that dies makes the others fail at their next exchange, after the process-group timeout
(STREAMREC_DIST_TIMEOUT seconds, default 120), instead of hanging.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from streamrec.batch import Batch
from streamrec.config import JobConfig
from streamrec.data.errors import DeadLetter
from streamrec.data.loader import BatchLoader
from streamrec.data.splits import open_splits
from streamrec.distributed.collection import shard_collections
from streamrec.distributed.reshard import reshard
from streamrec.models.persistence import save_model
from streamrec.models.registry import build_model
from streamrec.store import read_manifest, read_tensors
from streamrec.train.job import fit_schema, seed_everything
from streamrec.train.metrics import MetricAccumulator
from streamrec.train.trainer import Trainer, TrainResult


def world_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_slice(batch: Batch, rank: int, world: int) -> Batch:
    lo, hi = batch.size * rank // world, batch.size * (rank + 1) // world
    return batch.slice(lo, hi)


class DistributedTrainer(Trainer):
    """A Trainer whose validation gathers every rank's predictions before computing metrics."""

    @torch.no_grad()
    def evaluate(self, batches) -> dict[str, dict[str, float]]:  # noqa: ANN001
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


def run_distributed_training(
    config: JobConfig, out: str | Path, progress: bool = True
) -> tuple[TrainResult, Path]:
    out = Path(out)
    timeout = timedelta(seconds=float(os.environ.get("STREAMREC_DIST_TIMEOUT", "120")))
    dist.init_process_group("gloo", timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        exchange = dist.new_group(backend="gloo", timeout=timeout)
        seed_everything(config.train.seed)
        dead = DeadLetter(
            out / f"dead_letter.rank{rank}.jsonl" if rank == 0 else None, strict=config.data.strict
        )
        splits = open_splits(config.data, dead)
        config, kinds = fit_schema(config, splits)  # same sample on every rank → same schema
        model = build_model(config.model, config.schema, config.table_configs())
        dtype = torch.float16 if config.train.exchange_precision == "fp16" else torch.float32
        shard_collections(model, exchange, dtype)
        trainer = DistributedTrainer(model, config, None, progress=progress and rank == 0)
        trainer.forward_module = DistributedDataParallel(model)
        schema, batch_size = config.schema, config.data.batch_size

        def train_batches(epoch: int):  # noqa: ANN202
            for batch in BatchLoader(splits.train, schema, batch_size):
                yield local_slice(batch, rank, world)

        valid = None
        if splits.valid is not None:

            def valid() -> BatchLoader:
                return BatchLoader(splits.valid, schema, 4096)

        result = trainer.fit(train_batches, valid)
        result.samples_per_s *= world  # every rank trained its slice in the same time
        shard_dir = out / "shards" / f"rank-{rank:03d}"
        save_model(
            shard_dir, model, config, {"rank": rank, "world_size": world, "input_kinds": kinds}
        )
        dist.barrier()
        model_dir = out / "model"
        if rank == 0:
            model_dir = merge_shards(out / "shards", world, model_dir, result, kinds)
        dist.barrier()
        return result, model_dir
    finally:
        dist.destroy_process_group()


def merge_shards(
    shards: Path, world: int, model_dir: Path, result: TrainResult, kinds: dict[str, str]
) -> Path:
    """N shard directories → one single-process model directory (M = 1 resharding)."""
    from streamrec.models.persistence import load_model

    first = load_model(shards / "rank-000")  # dense weights are identical on every rank (DDP)
    manifests = [read_manifest(shards / f"rank-{r:03d}") for r in range(world)]
    tables = first.model.dynamic_tables()
    for name, table in tables.items():
        states = [
            read_tensors(shards / f"rank-{r:03d}", m["tables"][name]["file"], m)
            for r, m in enumerate(manifests)
        ]
        table.load_state_dict(reshard(table.config(), states, 1)[0])
    return save_model(
        model_dir,
        first.model,
        first.config,
        {
            "metrics": result.metrics,
            "train": result.to_json(),
            "input_kinds": kinds,
            "trained_on_ranks": world,
        },
    )
