"""Two-tower retrieval model (YouTube DNN, Covington et al. 2016; Yi et al. 2019 for log-Q).

user tower: user-side features (user id, the mean-pooled history of items, context) → MLP → u
item tower: item-side features (item id, genres, …) → MLP → v           (both L2-normalised)
score(u, v) = u·v / temperature

The item table is shared by the target item and the items in the user's history. Training uses
in-batch softmax: each user's positive item is the label among the batch's items, with the
log-Q correction logit − log q(item) for the frequency at which items appear as in-batch
negatives (popular items are over-sampled as negatives otherwise); q is estimated from the
training stream itself (`models/item_frequency.py`), so the same model trains offline and online
in the one Trainer.

Positives: with no label in the schema every row is one (an interaction log); with labels (a
joined impression log: clicked or not), the rows whose first label is 1 — a shown item the user
ignored is not an item they want, and the in-batch items already supply the negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.embedding.adaptive_dim import build_tables
from streamrec.embedding.collection import EmbeddingCollection
from streamrec.models.item_frequency import ItemFrequency
from streamrec.models.layers import MLP
from streamrec.models.objective import Objective
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
        frequency_buckets: int = 1 << 17,
        frequency_half_life_steps: float = 10_000.0,
    ) -> None:
        super().__init__()
        known = {f.name for f in schema.embeddings}
        missing = (set(user_features) | set(item_features)) - known
        if missing:
            raise ValueError(f"two-tower features {sorted(missing)} are not embedding features")
        self.schema = schema
        self.user_features = list(user_features)
        self.item_features = list(item_features)
        own = build_tables(tables)
        self.embeddings = EmbeddingCollection(schema, own)
        dim = lambda fs: sum(self.embeddings.dim(f) for f in fs)  # noqa: E731
        self.user_mlp = MLP(dim(self.user_features), hidden, out=out_dim)
        self.item_mlp = MLP(dim(self.item_features), hidden, out=out_dim)
        self.temperature = temperature
        self.out_dim = out_dim
        self.item_frequency = ItemFrequency(frequency_buckets, frequency_half_life_steps)

    def towers(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embeddings(batch).pooled
        u = self.user_mlp(torch.cat([emb[f] for f in self.user_features], dim=1))
        v = self.item_mlp(torch.cat([emb[f] for f in self.item_features], dim=1))
        return F.normalize(u, dim=1), F.normalize(v, dim=1)

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        return self.towers(batch)[0]

    def item_vectors(self, batch: Batch) -> torch.Tensor:
        return self.towers(batch)[1]

    @property
    def item_ids_feature(self) -> str:
        """The feature whose value is the row's item (the first item feature)."""
        return self.item_features[0]

    def positives(self, batch: Batch) -> Batch:
        """The rows that are positives (see the module docstring) and name exactly one item (a
        row whose item is missing has nothing to learn from)."""
        keep = batch.sparse[self.item_ids_feature].lengths() == 1
        if batch.labels.shape[1]:
            keep &= batch.labels[:, 0] > 0.5
        if bool(keep.all()):
            return batch
        return batch.take(torch.nonzero(keep).flatten())

    def forward(self, batch: Batch) -> torch.Tensor:
        """In-batch softmax logits [P, P] over the batch's P positive rows: row i scores user i
        against every positive's item, log-Q corrected; the same item at another column is
        masked (−inf), so it is not a negative for itself. In training mode the rows' items
        are counted into the frequency estimate first."""
        batch = self.positives(batch)
        items = batch.sparse[self.item_ids_feature].values
        if self.training:
            self.item_frequency.observe(items)
        u, v = self.towers(batch)
        logits = u @ v.T / self.temperature - self.item_frequency.log_q(items)[None, :]
        same = items[:, None] == items[None, :]
        return logits.masked_fill(same & ~torch.eye(batch.size, dtype=torch.bool), float("-inf"))

    def objective(self, logits: torch.Tensor, batch: Batch) -> Objective:
        """Cross-entropy of each positive row's own item among the batch's (logits [P, P]).
        Fewer than two positives: no negative to tell apart, nothing to learn (0 terms: the
        Trainer takes no step)."""
        logits = logits.float()
        rows = logits.shape[0]
        if rows < 2:
            return Objective(logits.sum() * 0.0, 0)
        return Objective(F.cross_entropy(logits, torch.arange(rows)), rows)

    def load_dense_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """As for every model; a retriever saved before the frequency estimate was part of the
        model starts it empty (it fills from the first training batches)."""
        key = "item_frequency.counts"
        if key not in state:
            state = {**state, key: torch.zeros_like(self.item_frequency.counts)}
        super().load_dense_state_dict(state)
