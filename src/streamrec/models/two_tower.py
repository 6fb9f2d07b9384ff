"""Two-tower retrieval model (YouTube DNN, Covington et al. 2016; Yi et al. 2019 for log-Q).

user tower: user-side features (user id, the mean-pooled history of items, context) → MLP → u
item tower: item-side features (item id, genres, …) → MLP → v           (both L2-normalised)
score(u, v) = u·v / temperature

The item table is shared by the target item and the items in the user's history. Training uses
in-batch softmax: each user's positive item is the label among the batch's items, with the
log-Q correction logit − log q(item) for the frequency at which items appear as in-batch
negatives (popular items are over-sampled as negatives otherwise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.embedding.collection import EmbeddingCollection
from streamrec.embedding.tiered import build_table
from streamrec.models.layers import MLP
from streamrec.models.with_tables import WithTables
from streamrec.schema import Schema


class TwoTower(WithTables):
    def __init__(
        self,
        schema: Schema,
        tables: dict[str, TableConfig],
        user_features: list[str],
        item_features: list[str],
        hidden: tuple[int, ...] = (128,),
        out_dim: int = 64,
        temperature: float = 0.05,
    ) -> None:
        super().__init__()
        known = {f.name for f in schema.embeddings}
        missing = (set(user_features) | set(item_features)) - known
        if missing:
            raise ValueError(f"two-tower features {sorted(missing)} are not embedding features")
        self.schema = schema
        self.user_features = list(user_features)
        self.item_features = list(item_features)
        own = {name: build_table(cfg, name=name) for name, cfg in tables.items()}
        self.embeddings = EmbeddingCollection(schema, own)
        dim = lambda fs: sum(self.embeddings.dim(f) for f in fs)  # noqa: E731
        self.user_mlp = MLP(dim(self.user_features), hidden, out=out_dim)
        self.item_mlp = MLP(dim(self.item_features), hidden, out=out_dim)
        self.temperature = temperature
        self.out_dim = out_dim

    def towers(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embeddings(batch).pooled
        u = self.user_mlp(torch.cat([emb[f] for f in self.user_features], dim=1))
        v = self.item_mlp(torch.cat([emb[f] for f in self.item_features], dim=1))
        return F.normalize(u, dim=1), F.normalize(v, dim=1)

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        return self.towers(batch)[0]

    def item_vectors(self, batch: Batch) -> torch.Tensor:
        return self.towers(batch)[1]

    def loss(self, batch: Batch, log_q: torch.Tensor | None = None) -> torch.Tensor:
        """In-batch softmax; log_q [B]: log sampling probability of each row's item."""
        u, v = self.towers(batch)
        logits = u @ v.T / self.temperature
        if log_q is not None:
            logits = logits - log_q[None, :]
        # The same item twice in a batch is not a negative for itself.
        item_ids = batch.sparse[self.item_features[0]].values
        if item_ids.numel() == batch.size:
            same = item_ids[:, None] == item_ids[None, :]
            logits = logits.masked_fill(
                same & ~torch.eye(batch.size, dtype=torch.bool), float("-inf")
            )
        return F.cross_entropy(logits, torch.arange(batch.size))
