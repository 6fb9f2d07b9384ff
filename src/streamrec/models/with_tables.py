"""WithTables: what every model that holds DynamicTables shares (rankers and the two-tower).

Its tables are found wherever they sit (any EmbeddingCollection inside), take the batch's event
time for admission and expiry, and are part of `state_dict()` — or left out of it, for the
model directory, which stores the dense weights and each table in files of their own.
"""

from __future__ import annotations

import torch
from torch import nn

from streamrec.embedding.collection import EmbeddingCollection, tables_left_out
from streamrec.embedding.table import DynamicTable


class WithTables(nn.Module):
    def dynamic_tables(self) -> dict[str, DynamicTable]:
        """Every DynamicTable the model reads, by table name."""
        out: dict[str, DynamicTable] = {}
        for module in self.modules():
            if isinstance(module, EmbeddingCollection):
                out.update(module.tables)
        return out

    def set_event_time(self, now: float | None) -> None:
        """Event time (seconds) for admission and expiry in the next forward passes."""
        for module in self.modules():
            if isinstance(module, EmbeddingCollection):
                module.now = now

    def dense_state_dict(self) -> dict[str, torch.Tensor]:
        """`state_dict()` without the tables: the dense weights (what dense.safetensors holds)."""
        with tables_left_out():
            return self.state_dict()

    def load_dense_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load dense weights only (every one required); the tables are left as they are."""
        with tables_left_out():
            self.load_state_dict(state)
