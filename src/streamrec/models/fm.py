"""Factorisation machine (Rendle 2010): linear term + pairwise dot products of embeddings."""

from __future__ import annotations

import torch

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.models.base import RankingModel
from streamrec.models.layers import LinearTerm, fm_interaction, linear_settings
from streamrec.schema import Schema


class FM(RankingModel):
    def __init__(
        self, schema: Schema, tables: dict[str, TableConfig], linear_lr: float | None = None
    ) -> None:
        super().__init__(schema, tables)
        if len(set(self.embedding_dims)) > 1:
            raise ValueError("FM needs every embedding feature at one dim")
        self.linear = LinearTerm(schema, tables, self.num_tasks, linear_settings(linear_lr))

    def forward(self, batch: Batch) -> torch.Tensor:
        stacked = self.embed(batch).stacked(self.features)
        return self.linear(batch) + fm_interaction(stacked)
