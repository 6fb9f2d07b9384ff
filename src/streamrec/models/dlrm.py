"""DLRM (Naumov et al. 2019): a bottom MLP embeds the dense features to the embedding dim, all
pairwise dot products of [dense, sparse embeddings] feed a top MLP."""

from __future__ import annotations

import torch

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.models.base import RankingModel
from streamrec.models.layers import MLP
from streamrec.schema import Schema


class DLRM(RankingModel):
    def __init__(
        self,
        schema: Schema,
        tables: dict[str, TableConfig],
        bottom: tuple[int, ...] = (512, 256),
        top: tuple[int, ...] = (512, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(schema, tables)
        dims = set(self.embedding_dims)
        if len(dims) != 1:
            raise ValueError("DLRM needs every embedding feature at one dim")
        dim = dims.pop()
        self.bottom = MLP(max(self.dense_width, 1), bottom, out=dim)
        n = len(self.features) + 1
        self.register_buffer("pairs", torch.triu_indices(n, n, offset=1), persistent=False)
        self.top = MLP(dim + self.pairs.shape[1], top, out=self.num_tasks, dropout=dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        dense = batch.dense if self.dense_width else batch.dense.new_zeros(batch.size, 1)
        z = self.bottom(dense)  # [B, dim]
        stacked = torch.cat([z[:, None, :], self.embed(batch).stacked(self.features)], dim=1)
        dots = torch.bmm(stacked, stacked.transpose(1, 2))  # [B, n, n]
        interactions = dots[:, self.pairs[0], self.pairs[1]]
        return self.top(torch.cat([z, interactions], dim=1))
