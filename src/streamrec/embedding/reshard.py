"""Resharding: the shards a job of N ranks saved → the tables of M ranks (M = 1 for serving and
evaluation). Each live row keeps its weights, optimizer state, count, last-seen time and version;
a row goes to owner(fid) mod M. Count-min sketches of disjoint id sets add up counter by
counter, so admission statistics survive too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamrec.embedding.admission import sketch_from_state, sketch_state
from streamrec.embedding.sharded import owner_of
from streamrec.embedding.table import DynamicTable
from streamrec.store import read_manifest, read_tensors
from streamrec.table_config import TableConfig


def _live(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    live = state["count"].numpy() > 0
    return {
        k: state[k].numpy()[live]
        for k in ("weights", "optimizer_state", "fid", "count", "last_seen", "row_version")
    }


def reshard(
    settings: TableConfig, states: list[dict[str, torch.Tensor]], world: int
) -> list[dict[str, torch.Tensor]]:
    """Table state dicts of N shards → state dicts for `world` ranks (rank r owns the fids with
    owner_of(fid, world) == r)."""
    rows = [_live(s) for s in states]
    merged = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    order = np.argsort(merged["fid"], kind="stable")  # deterministic layout
    merged = {k: v[order] for k, v in merged.items()}
    owners = owner_of(merged["fid"], world)
    version = max(int(s["counters"][2]) for s in states)
    sketch = np.zeros_like(sketch_from_state(states[0]), dtype=np.int64)
    for s in states:
        sketch += sketch_from_state(s)
    sketch = np.minimum(sketch, 65535).astype(np.uint16)
    out = []
    for rank in range(world):
        mine = owners == rank
        n = int(mine.sum())
        out.append(
            {
                "weights": torch.from_numpy(merged["weights"][mine].copy()),
                "optimizer_state": torch.from_numpy(merged["optimizer_state"][mine].copy()),
                "fid": torch.from_numpy(merged["fid"][mine].copy()),
                "count": torch.from_numpy(merged["count"][mine].copy()),
                "last_seen": torch.from_numpy(merged["last_seen"][mine].copy()),
                "row_version": torch.from_numpy(merged["row_version"][mine].copy()),
                "free_rows": torch.zeros(0, dtype=torch.int64),
                **sketch_state(sketch),
                "counters": torch.tensor([n, 0, version, 0]),
                "deleted_fids": torch.zeros(0, dtype=torch.int64),
                "deleted_versions": torch.zeros(0, dtype=torch.int64),
            }
        )
    DynamicTable.from_config(settings).load_state_dict(out[0])  # validates the layout
    return out


def load_resharded_tables(model: nn.Module, rank_dirs: list[Path], world: int, rank: int) -> None:
    """Replace every table of `model` by rank `rank`'s share (of `world`) of the tables saved in
    `rank_dirs` (one model or checkpoint directory per saved rank)."""
    manifests = [read_manifest(d) for d in rank_dirs]
    for name, table in model.dynamic_tables().items():
        states = [
            read_tensors(d, m.tables[name].file, m)
            for d, m in zip(rank_dirs, manifests, strict=True)
        ]
        table.load_state_dict(reshard(table.settings, states, world)[rank])
