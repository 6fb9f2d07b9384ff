"""DCN-v2 (Wang et al. 2021): explicit feature crosses x_{l+1} = x0 ⊙ (W x_l + b) + x_l,
stacked with (or beside) a deep MLP."""

from __future__ import annotations

import torch
from torch import nn

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.models.base import RankingModel
from streamrec.models.layers import MLP
from streamrec.schema import Schema


class CrossNetwork(nn.Module):
    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class DCNv2(RankingModel):
    def __init__(
        self,
        schema: Schema,
        tables: dict[str, TableConfig],
        cross_layers: int = 2,
        hidden: tuple[int, ...] = (256, 128),
        dropout: float = 0.0,
        structure: str = "stacked",
    ) -> None:
        super().__init__(schema, tables)
        if structure not in ("stacked", "parallel"):
            raise ValueError("structure must be 'stacked' or 'parallel'")
        self.structure = structure
        in_dim = sum(self.embedding_dims) + self.dense_width
        self.cross = CrossNetwork(in_dim, cross_layers)
        self.deep = MLP(in_dim, hidden, dropout=dropout)
        head_in = self.deep.out_dim + (in_dim if structure == "parallel" else 0)
        self.head = nn.Linear(head_in, self.num_tasks)

    def forward(self, batch: Batch) -> torch.Tensor:
        x0 = torch.cat([self.flat_embeddings(self.embed(batch)), batch.dense], dim=1)
        crossed = self.cross(x0)
        if self.structure == "stacked":
            return self.head(self.deep(crossed))
        return self.head(torch.cat([crossed, self.deep(x0)], dim=1))
