"""Wide & Deep (Cheng et al. 2016): a wide linear model over ids and declared cross features
(memorisation) plus a deep MLP over embeddings (generalisation), summed into one logit.

A cross of features a and b gets one fid per pair of ids in a row (all pairs for multi-valued
features), hashed from the two fids, and a weight in its own dim-1 table `cross:a×b`.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from streamrec.batch import Batch, JaggedIds
from streamrec.config import TableConfig
from streamrec.embedding.collection import EmbeddingCollection
from streamrec.embedding.hashmap import mix64
from streamrec.embedding.table import DynamicTable
from streamrec.models.base import RankingModel
from streamrec.models.layers import MLP, LinearTerm
from streamrec.models.request_sharing import shared_embedding_mlp
from streamrec.schema import EmbeddingFeature, Schema


class WideDeep(RankingModel):
    def __init__(
        self,
        schema: Schema,
        tables: dict[str, TableConfig],
        crosses: list[list[str]] | None = None,
        hidden: tuple[int, ...] = (256, 128),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(schema, tables)
        self.linear = LinearTerm(schema, tables, self.num_tasks)
        self.crosses = [tuple(c) for c in (crosses or [])]
        known = {f.name: f for f in schema.embeddings}
        for pair in self.crosses:
            if len(pair) != 2 or not all(name in known for name in pair):
                raise ValueError(f"cross {list(pair)} must name two embedding features")
        if self.crosses:
            names = [f"cross:{a}×{b}" for a, b in self.crosses]
            cross_schema = Schema(embeddings=[EmbeddingFeature(name=n) for n in names])
            cross_tables = {}
            for n, (a, _) in zip(names, self.crosses, strict=True):
                one_weight = {"dim": 1, "init_scale": 0.0, "rare_dim": None}
                cfg = tables[known[a].table_name].model_dump() | one_weight
                cross_tables[n] = DynamicTable(**cfg, name=n)
            self.cross_ids = EmbeddingCollection(cross_schema, cross_tables)
            self.cross_names = names
        in_dim = sum(self.embedding_dims) + self.dense_width
        self.deep = MLP(in_dim, hidden, out=self.num_tasks, dropout=dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        emb = self.embed(batch)
        logit = self.linear(batch) + shared_embedding_mlp(
            self.deep, emb, self.features, self.embedding_dims, batch,
            lambda: torch.cat([self.flat_embeddings(emb), batch.dense], dim=1),
        )
        if self.crosses:
            sparse = {
                n: cross(batch.sparse[a], batch.sparse[b])
                for n, (a, b) in zip(self.cross_names, self.crosses, strict=True)
            }
            crossed = Batch(batch.labels, batch.dense, sparse, batch.group_ids, batch.timestamps)
            for _, t in self.cross_ids(crossed).groups:
                logit = logit + t.sum(dim=1)
        return logit


def cross(a: JaggedIds, b: JaggedIds) -> JaggedIds:
    """Per row, one fid for every (id of a, id of b) pair."""
    values, lengths = _cross(
        a.values.numpy(), a.offsets.numpy(), b.values.numpy(), b.offsets.numpy()
    )
    return JaggedIds.from_lengths(torch.from_numpy(values), torch.from_numpy(lengths))


@numba.njit(nogil=True, cache=True)
def _cross(av, ao, bv, bo):
    rows = ao.shape[0] - 1
    lengths = np.empty(rows, np.int64)
    total = 0
    for r in range(rows):
        lengths[r] = (ao[r + 1] - ao[r]) * (bo[r + 1] - bo[r])
        total += lengths[r]
    out = np.empty(total, np.int64)
    k = 0
    for r in range(rows):
        for i in range(ao[r], ao[r + 1]):
            for j in range(bo[r], bo[r + 1]):
                out[k] = np.int64(mix64(mix64(np.uint64(av[i])) ^ np.uint64(bv[j])))
                k += 1
    return out, lengths
