"""RowLookup: how an EmbeddingCollection gets the rows of a batch's ids, local or sharded.

The collection's forward is the same for every placement of the tables (TorchRec's
input-dist → lookup → output-dist split, with the dists folded into the lookup):

    weights, inverse, handle = lookup.lookup(fids, segments, now, insert)
    … pool `weights` [U, dim] by `inverse` [n] …
    lookup.apply_gradients(handle, grad)          # at the optimizer step, grad [U, dim]

`TableGroup` (grouped.py) answers from this process's tables; `ShardedGroup` (sharded.py) sends
each id to the rank that owns it and brings the rows back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from streamrec.embedding.table import DynamicTable


class RowLookup(Protocol):
    tables: list[DynamicTable]

    def lookup(
        self, fids: np.ndarray, segments: np.ndarray, now: float | None, insert: bool
    ) -> tuple[torch.Tensor, np.ndarray, Any]:
        """fids int64 [n] laid out table after table (table i's ids are
        fids[segments[i]:segments[i + 1]]) → (FloatTensor [U, dim]: the rows of the unique
        ids, zeros where not stored; int64 [n]: each id's position among them; a handle for
        `apply_gradients`). insert=True (training) admits new ids and counts every id."""
        ...

    def apply_gradients(self, handle: Any, grads: torch.Tensor) -> None:
        """One row-optimizer step on the rows of a `lookup`; grads [U, dim]."""
        ...

    def flush(self) -> None:
        """Apply every gradient still in flight (before the tables are read as a whole)."""
        ...


@dataclass
class RowGradient:
    """What backward leaves beside a group of tables: the gradient `grad` [U, dim] of the
    unique rows a `lookup` returned (`handle`), waiting for the optimizer step
    (`SparseOptimizer`, sparse_optimizer.py) to clip, check and apply it."""

    lookup: RowLookup
    handle: Any
    grad: torch.Tensor
