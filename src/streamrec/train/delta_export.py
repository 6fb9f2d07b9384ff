"""DeltaExporter: writes what training changed since the last export, for the server to apply.

Each `export()` collects, per table, the live rows changed after the version recorded at the
previous export (`DynamicTable.changed_since`) and the fids deleted since (`deleted_since`),
optionally in fp16 / int8, plus the dense weights every `dense_every` deltas, and writes them
as one delta directory (`streamrec.store.delta`). Deltas are numbered 1, 2, 3 … per base model.

Every `snapshot_every`-th delta is a full snapshot: every live row and the dense weights,
marked `full` — a server applying it replaces its tables' content, which heals the gap left
by any delta it had to skip as corrupt. The choice depends on the version number alone, so
every rank of a distributed trainer makes it alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from streamrec.embedding.export import quantize
from streamrec.models.base import RankingModel
from streamrec.store.delta import TableDelta, list_deltas, write_delta
from streamrec.store.manifest import DeltaProgress


def consumed_range(consumed_at: list[float]) -> list[float] | None:
    """The manifest field `consumed_at`: [first, last] wall time (Unix seconds) at which the
    trainer read the events this delta learnt from. A server that applies the delta reports
    now − first as its event → served freshness. None when the delta holds no new events."""
    return [min(consumed_at), max(consumed_at)] if consumed_at else None


class DeltaExporter:
    def __init__(
        self,
        model: RankingModel,
        deltas_dir: str | Path,
        base_model_version: int,
        precision: str = "fp32",
        dense_every: int = 10,
        snapshot_every: int = 0,
    ) -> None:
        self.model = model
        self.snapshot_every = snapshot_every
        self.deltas_dir = Path(deltas_dir)
        self.base_model_version = base_model_version
        self.precision = precision
        self.dense_every = dense_every
        existing = list_deltas(self.deltas_dir)
        self.version = existing[-1] if existing else 0
        self.table_versions = {name: t.version for name, t in model.dynamic_tables().items()}
        for table in model.dynamic_tables().values():
            if table.has_disk_tier:  # log rows that go to disk changed, for the next delta
                table.track_changes = True

    def export(self, progress: DeltaProgress | None = None, force_dense: bool = False) -> Path:
        return self.write(self.collect(), progress, force_dense)

    def is_snapshot(self, version: int) -> bool:
        return self.snapshot_every > 0 and version % self.snapshot_every == 0

    def collect(self) -> dict[str, TableDelta]:
        """Per table, the live rows changed and the fids deleted since the previous collect —
        or every live row, when the next delta is a full snapshot."""
        full = self.is_snapshot(self.version + 1)
        tables = {}
        for name, table in self.model.dynamic_tables().items():
            since = self.table_versions.get(name, 0)
            fids, weights = table.changed_since(0 if full else since)
            rows = quantize(fids, weights, self.precision)
            deleted = torch.empty(0, dtype=torch.int64) if full else table.deleted_since(since)
            counts = torch.from_numpy(table.counts_of(rows.fids.numpy()).astype(np.int32))
            tables[name] = TableDelta(
                rows.fids, rows.values, deleted, rows.scale, rows.offset, counts
            )
            self.table_versions[name] = table.version
            table.forget_deletions(since)
        return tables

    def write(
        self,
        tables: dict[str, TableDelta],
        progress: DeltaProgress | None = None,
        force_dense: bool = False,
    ) -> Path:
        """The next delta: these table rows, and the dense weights when due."""
        self.version += 1
        full = self.is_snapshot(self.version)
        dense = None
        if full or force_dense or self.version % self.dense_every == 0:
            dense = {k: v.detach().clone() for k, v in self.model.dense_state_dict().items()}
        return write_delta(
            self.deltas_dir,
            self.version,
            tables,
            dense,
            base_model_version=self.base_model_version,
            precision=self.precision,
            full=full,
            progress=progress,
        )
