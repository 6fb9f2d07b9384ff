"""Blocks shared by the models: MLPs, the first-order (linear) term over sparse ids, FM."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.embedding.collection import EmbeddingCollection
from streamrec.embedding.table import DynamicTable
from streamrec.schema import Schema


class MLP(nn.Sequential):
    """Linear → ReLU (→ Dropout) per hidden size; `out` adds a final Linear without activation."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out: int | None = None,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        for h in hidden:
            layers.append(nn.Linear(in_dim, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        if out is not None:
            layers.append(nn.Linear(in_dim, out))
            in_dim = out
        super().__init__(*layers)
        self.out_dim = in_dim


def linear_schema(schema: Schema) -> Schema:
    """The same embedding features, each reading a dim-1 table '<table>@linear' (FM / LR / wide
    first-order weights: one scalar per id)."""
    copy = schema.model_copy(deep=True)
    for f in copy.embeddings:
        f.table = f"{f.table_name}@linear"
        f.pooling = "sum"
    return copy


class LinearTerm(nn.Module):
    """Σ over features and ids of a per-id scalar weight, + a linear map of the dense input.
    → [B, num_tasks]."""

    def __init__(
        self,
        schema: Schema,
        tables: dict[str, TableConfig],
        num_tasks: int,
        lr: float | None = None,
    ) -> None:
        """`lr`: the per-id weights' learning rate (default: the table's). One-hot weights see
        one id per row, so they often want a larger rate than the embeddings."""
        super().__init__()
        lin = linear_schema(schema)
        own = {}
        for name, cfg in tables.items():
            linear = {"dim": 1, "init_scale": 0.0} | ({"lr": lr} if lr is not None else {})
            settings = cfg.model_copy(update=linear)
            own[f"{name}@linear"] = DynamicTable.from_config(settings, name=f"{name}@linear")
        self.ids = EmbeddingCollection(lin, own) if schema.embeddings else None
        self.dense = nn.Linear(schema.dense_width, num_tasks) if schema.dense_width else None
        self.bias = nn.Parameter(torch.zeros(num_tasks))

    def forward(self, batch: Batch) -> torch.Tensor:
        out = self.bias.expand(batch.size, -1)
        if self.ids is not None:
            emb = self.ids(batch)
            total = sum(t.sum(dim=1) for _, t in emb.groups)  # [B, 1]
            out = out + total
        if self.dense is not None:
            out = out + self.dense(batch.dense)
        return out


def fm_interaction(stacked: torch.Tensor) -> torch.Tensor:
    """Factorisation-machine second-order term: ½ Σ_d ((Σ_f v_fd)² − Σ_f v_fd²).
    stacked [B, F, dim] → [B, 1]."""
    sum_sq = stacked.sum(dim=1).square()
    sq_sum = stacked.square().sum(dim=1)
    return 0.5 * (sum_sq - sq_sum).sum(dim=1, keepdim=True)
