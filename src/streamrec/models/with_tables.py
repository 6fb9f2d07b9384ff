"""WithTables: what every model that holds DynamicTables shares (rankers and the two-tower).

Its tables are found wherever they sit (any EmbeddingCollection inside), take the batch's event
time for admission and expiry, and are part of `state_dict()` — or left out of it, for the
model directory, which stores the dense weights and each table in files of their own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from streamrec.batch import Batch
from streamrec.embedding.collection import EmbeddingCollection, tables_left_out
from streamrec.embedding.table import DynamicTable
from streamrec.models.objective import Objective


class WithTables(nn.Module):
    # Whether `predict(batch)` gives calibrated label probabilities [B, tasks] (rankers). A
    # retriever does not: online training skips progressive validation for it.
    predicts_labels = False

    def objective(self, output: torch.Tensor, batch: Batch) -> Objective:
        """The training loss of `output = self(batch)` (`models/objective.py`)."""
        raise NotImplementedError(f"{type(self).__name__} does not say what it trains on")

    def regularization(self) -> torch.Tensor | None:
        """A term the trainer adds to the loss of the last forward (None: nothing). COLD's
        cost-weighted feature-gate penalty is one."""
        return None

    def dense_param_groups(self, dense_lr: float) -> list[dict[str, Any]]:
        """The dense optimizer's parameter groups, each with its own base "lr" (warm-up scales
        every group alike). Default: every trainable parameter at `train.dense_lr`; a model
        whose parts want different rates (LR's bias) overrides this."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": dense_lr}]

    def use_negative_sampling(self, rate: float) -> None:
        """Training keeps a fraction `rate` of the negatives (`train.negative_sampling_rate`);
        a model whose outputs are probabilities re-calibrates for it. Default: nothing to do."""

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
