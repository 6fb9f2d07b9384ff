"""MMoE (Ma et al. 2018): shared experts, one softmax gate and one tower per task."""

from __future__ import annotations

import torch
from torch import nn

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.models.base import RankingModel
from streamrec.models.layers import MLP
from streamrec.schema import Schema


class MMoE(RankingModel):
    def __init__(
        self,
        schema: Schema,
        tables: dict[str, TableConfig],
        experts: int = 4,
        expert_hidden: tuple[int, ...] = (128, 64),
        tower_hidden: tuple[int, ...] = (32,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(schema, tables)
        in_dim = sum(self.embedding_dims) + self.dense_width
        self.experts = nn.ModuleList(
            MLP(in_dim, expert_hidden, dropout=dropout) for _ in range(experts)
        )
        width = self.experts[0].out_dim
        self.gates = nn.ModuleList(nn.Linear(in_dim, experts) for _ in range(self.num_tasks))
        self.towers = nn.ModuleList(MLP(width, tower_hidden, out=1) for _ in range(self.num_tasks))

    def forward(self, batch: Batch) -> torch.Tensor:
        x = torch.cat([self.flat_embeddings(self.embed(batch)), batch.dense], dim=1)
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, h]
        logits = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            weights = torch.softmax(gate(x), dim=1)[:, :, None]
            logits.append(tower((weights * experts).sum(dim=1)))
        return torch.cat(logits, dim=1)
