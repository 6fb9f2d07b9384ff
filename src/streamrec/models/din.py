"""DIN (Zhou et al. 2018): target attention over a user's behaviour sequence.

The candidate item's embedding is the query; each id of the behaviour sequence (a feature with
`max_length`, sharing the item table) is a key; a small MLP over [q, k, q − k, q ⊙ k] scores it;
the masked, score-weighted sum of keys joins the other embeddings in the MLP.
"""

from __future__ import annotations

import torch
from torch import nn

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.models.base import RankingModel
from streamrec.models.layers import MLP
from streamrec.models.request_sharing import LayerInput, worth_sharing
from streamrec.schema import Schema


class TargetAttention(nn.Module):
    def __init__(self, dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.score = MLP(4 * dim, hidden, out=1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """query [B, d], keys [B, L, d], mask [B, L] → [B, d]."""
        q = query[:, None, :].expand_as(keys)
        scores = self.score(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)
        scores = scores.masked_fill(~mask, 0.0)
        return (scores[:, :, None] * keys).sum(dim=1)


class DIN(RankingModel):
    def __init__(
        self,
        schema: Schema,
        tables: dict[str, TableConfig],
        sequence: str = "history",
        target: str = "item_id",
        attention_hidden: tuple[int, ...] = (64, 32),
        hidden: tuple[int, ...] = (256, 128),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(schema, tables)
        features = {f.name: f for f in schema.embeddings}
        if sequence not in features or features[sequence].max_length is None:
            raise ValueError(f"DIN needs a sequence feature {sequence!r} with max_length")
        if target not in features:
            raise ValueError(f"DIN needs the target feature {target!r}")
        if features[sequence].table_name != features[target].table_name:
            raise ValueError("the sequence and the target must share a table")
        self.sequence, self.target = sequence, target
        dim = self.embeddings.dim(target)
        self.attention = TargetAttention(dim, attention_hidden)
        self.others = [f for f in self.features if f != sequence]
        in_dim = sum(self.embeddings.dim(f) for f in self.others) + dim + self.dense_width
        self.mlp = MLP(in_dim, hidden, out=self.num_tasks, dropout=dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        emb = self.embed(batch)
        keys, mask = emb.sequences[self.sequence]
        interest = self.attention(emb.pooled[self.target], keys, mask)

        def unshared() -> torch.Tensor:
            parts = [emb.pooled[f] for f in self.others] + [interest, batch.dense]
            return torch.cat(parts, dim=1)

        shared = batch.context.features if batch.context is not None else frozenset()
        width = sum(self.embeddings.dim(f) for f in self.others if f in shared)
        if emb.requests is None or not worth_sharing(self.mlp, batch, width):
            return self.mlp(unshared())
        # The user's own features once per request; the attention pools the history for each
        # candidate, so it and what follows it run per row.
        requests = emb.requests
        x = LayerInput(requests.index, requests.num_requests)
        for f in self.others:
            if f in requests:
                x.add(requests.pooled(f), per_request=True)
            else:
                x.add(emb.pooled[f])
        x.add(interest)
        x.add_dense(batch)
        return x.through(self.mlp, unshared)
