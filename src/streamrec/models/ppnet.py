"""PPNet (Kuaishou's Parameter Personalized Net): a deep tower whose every hidden layer is scaled
per example by a gate computed from the user's and item's id embeddings.

    x      = [every feature's pooled embedding, dense]                      [B, D]
    g_in   = [the gate features' embeddings, stop_gradient(x)]              [B, G + D]
    h_l    = ReLU(W_l h_{l-1}) ⊙ 2·sigmoid(GateNN_l(g_in))                  [B, hidden_l]
    logits = W_out h_L                                                      [B, tasks]

Why: one shared tower serves every user the same function; the gates let an id's embedding
re-weight each layer's units for that user and item (a gate in [0, 2], 1 = unchanged) at the
cost of a small MLP per layer. The gate reads the shared input with its gradient stopped, so
the gates personalise the tower without pulling the shared embeddings towards what suits them;
only the gate features' own embeddings learn from the gates (and from the tower).

`gate_features`: the id features the gates read; default the embedding features named `*_id`
(a user and an item id in most logs), else every embedding feature.
"""

from __future__ import annotations

import torch
from torch import nn

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.models.base import RankingModel
from streamrec.schema import Schema


class PPNet(RankingModel):
    def __init__(
        self,
        schema: Schema,
        tables: dict[str, TableConfig],
        hidden: tuple[int, ...] = (256, 128),
        gate_features: tuple[str, ...] | None = None,
        gate_hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(schema, tables)
        if not hidden:
            raise ValueError("ppnet needs at least one hidden layer (hidden: [..])")
        gate = list(gate_features) if gate_features else [
            f for f in self.features if f.endswith("_id")
        ] or list(self.features)
        unknown = [f for f in gate if f not in self.features]
        if unknown:
            raise ValueError(
                f"gate_features {unknown} are not embedding features; the model has "
                f"{self.features}"
            )
        self.gate_features = gate
        in_dim = sum(self.embedding_dims) + self.dense_width
        gate_in = in_dim + sum(self.embeddings.dim(f) for f in gate)
        widths = [in_dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, hidden, strict=False))
        self.gates = nn.ModuleList(
            nn.Sequential(nn.Linear(gate_in, gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, h))
            for h in hidden
        )
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Linear(hidden[-1], self.num_tasks)

    def forward(self, batch: Batch) -> torch.Tensor:
        emb = self.embed(batch)
        x = torch.cat([self.flat_embeddings(emb), batch.dense], dim=1)
        personal = torch.cat([emb.pooled[f] for f in self.gate_features], dim=1)
        return self.tower(x, personal)

    def tower(self, x: torch.Tensor, personal: torch.Tensor) -> torch.Tensor:
        """x [B, D] (every embedding, dense), personal [B, G] (the gate features' embeddings)
        → logits [B, tasks]."""
        gate_in = torch.cat([personal, x.detach()], dim=1)
        h = x
        for layer, gate in zip(self.layers, self.gates, strict=True):
            h = self.dropout(torch.relu(layer(h)) * (2.0 * torch.sigmoid(gate(gate_in))))
        return self.head(h)
