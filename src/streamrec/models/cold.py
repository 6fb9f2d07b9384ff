"""COLD (Wang et al. 2020, "COLD: Towards the Next Generation of Pre-Ranking System"): the
pre-ranking stage between retrieval and ranking, a small fully connected network over a few
cheap features, with a Squeeze-and-Excitation gate that learns how much each feature matters.

Pre-ranking scores ~1,000 retrieved items per request so the ranker scores only ~100; it must
cost a fraction of the ranker per item. COLD's recipe, as built here:

* COLD's SE block: each feature group g (a pooled embedding, or the dense block as one group)
  gets a gate s_g = sigmoid(w_g · e_g + b_g) computed from its own values, scales them by it,
  and an MLP maps the gated concatenation to the logits (no ReLU inside the gate: nothing to
  die, and one small matmul for all groups);
* the gates' means are the features' learned importance (`gate_means`; `streamrec eval`
  reports them as `feature_importance`): train once with many features, keep the top ones in
  the pre-ranker's schema, train again — fewer lookups, a smaller MLP;
* FSCD's cost awareness (Ma et al. 2021): `gate_penalty` × Σ_f cost_f · mean gate_f joins the
  loss (`regularization`), so an expensive feature must earn its place; `feature_costs` maps
  feature → relative cost (default 1 each; e.g. a long history list costs more than an id).
  The penalty is also what makes the gates mean something: without one, nothing pushes a
  useless feature's gate shut (the MLP can ignore it at any gate), and on a test where one
  feature predicts the label and one is noise the two gates end equal (0.59 / 0.59); at the
  default 0.005 they part (0.55 / 0.35), at 0.02 clearly (0.50 / 0.11).
"""

from __future__ import annotations

import torch
from torch import nn

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.models.base import RankingModel
from streamrec.models.layers import MLP
from streamrec.schema import Schema

DENSE_GROUP = "<dense>"  # the dense features' block, gated as one group


class COLD(RankingModel):
    def __init__(
        self,
        schema: Schema,
        tables: dict[str, TableConfig],
        hidden: tuple[int, ...] = (128, 64),
        dropout: float = 0.0,
        gate_penalty: float = 0.005,
        feature_costs: dict[str, float] | None = None,
    ) -> None:
        super().__init__(schema, tables)
        self.groups = list(self.features) + ([DENSE_GROUP] if self.dense_width else [])
        if not self.groups:
            raise ValueError("COLD needs at least one feature")
        unknown = set(feature_costs or {}) - set(self.groups)
        if unknown:
            raise ValueError(f"feature_costs names features the schema lacks: {sorted(unknown)}")
        widths = list(self.embedding_dims) + ([self.dense_width] if self.dense_width else [])
        width = sum(widths)
        # membership [width, groups]: column g sums the values of group g
        group_of = torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(widths))
        self.register_buffer(
            "membership", nn.functional.one_hot(group_of, len(widths)).float(), persistent=False
        )
        self.gate_weight = nn.Parameter(torch.zeros(width))  # w_g, all groups concatenated
        self.gate_bias = nn.Parameter(torch.zeros(len(widths)))  # b_g: every gate starts at ½
        self.register_buffer("group_of", group_of, persistent=False)
        costs = [float((feature_costs or {}).get(g, 1.0)) for g in self.groups]
        self.register_buffer("costs", torch.tensor(costs), persistent=False)
        self.gate_penalty = gate_penalty
        self.mlp = MLP(width, hidden, out=self.num_tasks, dropout=dropout)
        self._gates: torch.Tensor | None = None  # [B, groups] of the last forward

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.flat_embeddings(self.embed(batch))  # [B, Σ dims], features in group order
        if self.dense_width:
            x = torch.cat([x, batch.dense], dim=1)
        gates = torch.sigmoid((x * self.gate_weight) @ self.membership + self.gate_bias)  # [B, G]
        self._gates = gates
        return self.mlp(x * gates.index_select(1, self.group_of))

    def regularization(self) -> torch.Tensor | None:
        """FSCD's cost-weighted gate penalty on the last forward's gates (None when off)."""
        if not self.gate_penalty or self._gates is None:
            return None
        return self.gate_penalty * (self._gates.mean(dim=0) * self.costs).sum()

    @torch.no_grad()
    def gate_means(self, batch: Batch) -> torch.Tensor:
        """[groups]: the mean gate of each feature group over `batch` (eval mode)."""
        self.forward(batch)
        return self._gates.mean(dim=0)
