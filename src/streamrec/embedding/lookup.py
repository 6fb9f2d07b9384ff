"""RowLookup: how an EmbeddingCollection gets the rows of a batch's ids, local or sharded.

The collection's forward is the same for every placement of the tables (TorchRec's
input-dist → lookup → output-dist split, with the dists folded into the lookup):

    weights, inverse, handle = lookup.lookup(fids, segments, now, insert)
    … pool `weights` [U, dim] by `inverse` [n] …
    lookup.apply_gradients(handle, grad)          # at the optimizer step, grad [U, dim]

`TableGroup` (grouped.py) answers from this process's tables; `ShardedGroup` (sharded.py) sends
each id to the rank that owns it and brings the rows back. Both subclass `RowLookup`, whose
optional parts (merging accumulated gradients, prefetching from a disk tier, flushing) have
defaults here, so a collection calls every method of every lookup — nothing found by `hasattr`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamrec.embedding.table import DynamicTable


class RowLookup(ABC):
    tables: list[DynamicTable]

    @abstractmethod
    def lookup(
        self, fids: np.ndarray, segments: np.ndarray, now: float | None, insert: bool
    ) -> tuple[torch.Tensor, np.ndarray, Any]:
        """fids int64 [n] laid out table after table (table i's ids are
        fids[segments[i]:segments[i + 1]]) → (FloatTensor [U, dim]: the rows of the unique
        ids, zeros where not stored; int64 [n]: each id's position among them; a handle for
        `apply_gradients`). insert=True (training) admits new ids and counts every id."""
        ...

    @abstractmethod
    def apply_gradients(self, handle: Any, grads: torch.Tensor) -> None:
        """One row-optimizer step on the rows of a `lookup`; grads [U, dim]."""
        ...

    def flush(self) -> None:
        """Apply every gradient still in flight (before the tables are read as a whole).
        Default: none is."""
        return

    def merge(
        self, handles: list[Any], grads: list[torch.Tensor]
    ) -> tuple[Any, torch.Tensor] | None:
        """Several lookups' gradients (accumulated micro-batches) as one step's: (a handle,
        grads [U', dim]) with each row once. Default None: applied one lookup at a time."""
        return None

    def prefetch(self, fids: np.ndarray, segments: np.ndarray) -> None:
        """Start reading from disk the rows of the next batch's ids (laid out as for `lookup`)
        that DRAM does not hold. Default: each tiered table reads its own ids."""
        for i, table in enumerate(self.tables):
            if table.has_disk_tier:
                table.prefetch(fids[segments[i] : segments[i + 1]])

    def wait_prefetch(self) -> None:
        """Return once no prefetch of this lookup's reads the tables. Default: nothing to
        wait for (a table's own prefetch is joined by the table before its map changes)."""
        return


@dataclass
class RowGradient:
    """What backward leaves beside a group of tables: the gradient `grad` [U, dim] of the
    unique rows a `lookup` returned (`handle`), waiting for the optimizer step
    (`SparseOptimizer`, sparse_optimizer.py) to clip, check and apply it."""

    lookup: RowLookup
    handle: Any
    grad: torch.Tensor
