"""Sharded training checkpoints: what `torchrun --max-restarts` (or `--resume`) continues from.

Layout under `RUN_DIR/checkpoint/`:

    step-000000200/rank-000/   one ordinary checkpoint directory per rank (`train/checkpoint.py`):
    step-000000200/rank-001/   dense weights and optimizer (equal on every rank under DDP), the
                               rank's shard of every table, its position and RNG state
    step-000000200/world.json  written by rank 0 once every rank has finished its directory
    latest                     the name of the newest complete step directory (atomic rename)

A step directory that `latest` does not name is incomplete (a rank died while writing) and is
ignored; older ones are removed once a newer one is complete. Loading with the same world size
restores every rank exactly (bit-exact continuation); with another world size the tables are
resharded (`reshard.py`) and the dense part is taken from rank 0.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from streamrec.embedding.reshard import load_resharded_tables
from streamrec.models.persistence import saved_input_kinds
from streamrec.store import read_manifest
from streamrec.store.atomic import write_atomic
from streamrec.train.checkpoint import load_checkpoint
from streamrec.train.trainer import Trainer

LATEST = "latest"
WORLD = "world.json"


def _step_name(global_step: int, epoch_done: bool) -> str:
    # An epoch-end save at the same step as a periodic one must not overwrite it in place.
    return f"step-{global_step:09d}" + ("-end" if epoch_done else "")


def save_sharded_checkpoint(
    trainer: Trainer, root: Path, metrics: dict | None, epoch_done: bool
) -> Path:
    """Collective: every rank writes its directory, then rank 0 publishes the step."""
    rank, world = dist.get_rank(), dist.get_world_size()
    step_dir = root / _step_name(trainer.global_step, epoch_done)
    trainer.checkpoint(step_dir / f"rank-{rank:03d}", metrics, epoch_done)
    dist.barrier()
    if rank == 0:
        info = {"world_size": world, "position": trainer.position(epoch_done)}
        write_atomic(step_dir / WORLD, json.dumps(info))
        write_atomic(root / LATEST, step_dir.name)
        for old in root.glob("step-*"):
            if old.name != step_dir.name and old.name < step_dir.name:
                shutil.rmtree(old, ignore_errors=True)
    return step_dir


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete step directory, or None."""
    try:
        name = (root / LATEST).read_text().strip()
    except OSError:
        return None
    step_dir = root / name
    return step_dir if (step_dir / WORLD).exists() else None


def load_sharded_checkpoint(
    step_dir: Path, rank: int, world: int, optimizer_factory: Callable
) -> tuple:
    """→ (model with this rank's table shards, config, dense optimizer, position, input kinds).
    The model is not yet sharded: the caller wraps its collections as for a fresh start."""
    saved_world = int(json.loads((step_dir / WORLD).read_text())["world_size"])
    mine = step_dir / f"rank-{min(rank, saved_world - 1):03d}"
    model, config, optimizer, position = load_checkpoint(mine, optimizer_factory)
    kinds = saved_input_kinds(read_manifest(mine), config.schema)
    if saved_world != world:
        rank_dirs = [step_dir / f"rank-{r:03d}" for r in range(saved_world)]
        load_resharded_tables(model, rank_dirs, world, rank)
        torch.manual_seed(config.train.seed + position["global_step"] * world + rank)
    return model, config, optimizer, position, kinds
