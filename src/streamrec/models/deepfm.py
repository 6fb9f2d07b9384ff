"""DeepFM (Guo et al. 2017): FM and an MLP over the same embeddings, summed into one logit."""

from __future__ import annotations

import torch

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.models.base import RankingModel
from streamrec.models.layers import MLP, LinearTerm, fm_interaction, linear_settings
from streamrec.models.request_sharing import shared_embedding_mlp
from streamrec.schema import Schema


class DeepFM(RankingModel):
    def __init__(
        self,
        schema: Schema,
        tables: dict[str, TableConfig],
        hidden: tuple[int, ...] = (256, 128),
        dropout: float = 0.0,
        linear_lr: float | None = None,
    ) -> None:
        super().__init__(schema, tables)
        if len(set(self.embedding_dims)) > 1:
            raise ValueError("DeepFM needs every embedding feature at one dim")
        self.linear = LinearTerm(schema, tables, self.num_tasks, linear_settings(linear_lr))
        in_dim = sum(self.embedding_dims) + self.dense_width
        self.deep = MLP(in_dim, hidden, out=self.num_tasks, dropout=dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        emb = self.embed(batch)
        stacked = emb.stacked(self.features)
        deep = shared_embedding_mlp(
            self.deep, emb, self.features, self.embedding_dims, batch,
            lambda: torch.cat([stacked.flatten(1), batch.dense], dim=1),
        )
        return self.linear(batch) + fm_interaction(stacked) + deep
