"""DLRM (Naumov et al. 2019): a bottom MLP embeds the dense features to the embedding dim, all
pairwise dot products of [dense, sparse embeddings] feed a top MLP.

`concat_embeddings=True` also feeds the embeddings themselves to the top MLP (the variant many
DLRM ports offer): dot products alone carry first-order per-id effects only through the
bottom vector, which is a constant when there are no dense features (MovieLens ids-only)."""

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
        concat_embeddings: bool = False,
    ) -> None:
        super().__init__(schema, tables)
        dims = set(self.embedding_dims)
        if len(dims) != 1:
            raise ValueError("DLRM needs every embedding feature at one dim")
        dim = dims.pop()
        self.bottom = MLP(max(self.dense_width, 1), bottom, out=dim)
        n = len(self.features) + 1
        pairs = torch.triu_indices(n, n, offset=1)
        # Flat positions of the upper-triangle pairs in [n·n]: index_select on the flattened dot
        # products runs forward + backward twice as fast as advanced indexing [:, i, j].
        self.register_buffer("pair_index", pairs[0] * n + pairs[1], persistent=False)
        self.concat_embeddings = concat_embeddings
        width = dim + pairs.shape[1] + (dim * len(self.features) if concat_embeddings else 0)
        self.top = MLP(width, top, out=self.num_tasks, dropout=dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        dense = batch.dense if self.dense_width else batch.dense.new_zeros(batch.size, 1)
        z = self.bottom(dense)  # [B, dim]
        emb = self.embed(batch).stacked(self.features)  # [B, F, dim]
        stacked = torch.cat([z[:, None, :], emb], dim=1)
        dots = torch.bmm(stacked, stacked.transpose(1, 2))  # [B, n, n]
        interactions = dots.flatten(1).index_select(1, self.pair_index)
        parts = [z, interactions]
        if self.concat_embeddings:
            parts.append(emb.reshape(emb.shape[0], emb.shape[1] * emb.shape[2]))
        return self.top(torch.cat(parts, dim=1))
