"""Logistic regression: one weight per id (dim-1 tables) and per dense column, plus a bias."""

from __future__ import annotations

import torch

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.models.base import RankingModel
from streamrec.models.layers import LinearTerm
from streamrec.schema import Schema


class LR(RankingModel):
    def __init__(
        self, schema: Schema, tables: dict[str, TableConfig], linear_lr: float | None = None
    ) -> None:
        super().__init__(schema, tables, with_embeddings=False)
        self.linear = LinearTerm(schema, tables, self.num_tasks, linear_lr)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.linear(batch)
