"""DLRM (Naumov et al. 2019): a bottom MLP embeds the dense features to the embedding dim, all
pairwise dot products of [dense, sparse embeddings] feed a top MLP.

`concat_embeddings=True` also feeds the embeddings themselves to the top MLP (the variant many
DLRM ports offer): dot products alone carry first-order per-id effects only through the
bottom vector, which is a constant when there are no dense features (MovieLens ids-only).

What is computed once instead of once per row (scores as the per-row formula, to float32
rounding):
- without dense features the bottom MLP's input is a zero on every row, so its output is one
  vector, computed once and broadcast — in training too (its gradient is the rows' sum either
  way);
- with a request context (`Batch.context`) whose requests give every dense column once, the
  bottom MLP runs once per request;
- the dot products between a request's own vectors (its user's features, and the bottom
  vector when that is the request's) and the embeddings they feed in the top MLP's first layer
  are computed once per request, where that pays (`models/request_sharing.py`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.embedding.collection import Embedded
from streamrec.models.base import RankingModel
from streamrec.models.layers import MLP
from streamrec.models.pairwise_dots import all_dots, pairwise_dots
from streamrec.models.request_sharing import split_pays, split_through
from streamrec.schema import Schema


@dataclass(frozen=True)
class _SharingPlan:
    """Where a request's own vectors sit, for one set of shared features.

    nodes:             the request's vectors in the interaction (0: the bottom vector, 1 + i:
                       feature i), in order
    shared_pairs:      LongTensor [s]  flat positions in [len(nodes)²] of the dot products
                       between them (the upper triangle), in the top input's order
    own_pairs:         LongTensor [o]  flat positions in [n²] of every other dot product
    shared_columns:    LongTensor      the top input's columns computed per request, in the
                       order the shared input is built: bottom vector, dots, embeddings
    own_columns:       LongTensor      the rest, in the order the per-row input is built
    """

    nodes: tuple[int, ...]
    shared_pairs: torch.Tensor
    own_pairs: torch.Tensor
    shared_columns: torch.Tensor
    own_columns: torch.Tensor


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
        self.dim = dim
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
        embedded = self.embed(batch)
        emb = embedded.stacked(self.features)  # [B, F, dim]
        z, z_per_request = self._bottom_vector(batch, emb.shape[0])  # [B, dim], [R, dim] | None
        stacked = torch.cat([z[:, None, :], emb], dim=1)  # [B, n, dim]
        plan = self._plan_for(batch, embedded, z_per_request is not None)
        if plan is not None:
            dots = all_dots(stacked)  # [B, n·n]
            return self._top_split(plan, embedded, emb, z, z_per_request, dots)
        parts = [z, pairwise_dots(stacked, self.pair_index)]  # [B, dim], [B, pairs]
        if self.concat_embeddings:
            parts.append(emb.flatten(1))
        return self.top(torch.cat(parts, dim=1))

    def _bottom_vector(
        self, batch: Batch, rows: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The bottom MLP's output per row [B, dim], and per request [R, dim] where every row
        of a request has the same (None otherwise)."""
        context = batch.context
        if not self.dense_width:  # a zero in, one vector out, whatever the row
            one = self.bottom(batch.dense.new_zeros(1, 1))  # [1, dim]
            per_request = None if context is None else one.expand(context.num_requests, -1)
            return one.expand(rows, -1), per_request
        if context is not None and _every_column(context.dense_columns, self.dense_width):
            per_request = self.bottom(context.dense)  # [R, dim]
            return per_request.index_select(0, context.index), per_request
        return self.bottom(batch.dense), None

    def _plan_for(
        self, batch: Batch, embedded: Embedded, bottom_shared: bool
    ) -> _SharingPlan | None:
        """The split of the top MLP's first layer for this batch's request context, or None
        where there is none or it does not pay (`split_pays`)."""
        context, first = batch.context, self.top[0]
        if context is None or embedded.context is None or not isinstance(first, torch.nn.Linear):
            return None
        shared = tuple(i for i, f in enumerate(self.features) if f in context.features)
        plan = _plan(len(self.features), self.dim, shared, bottom_shared, self.concat_embeddings)
        width = int(plan.shared_columns.numel())
        return plan if split_pays(batch.size, context.num_requests, width, first) else None

    def _top_split(
        self,
        plan: _SharingPlan,
        embedded: Embedded,
        emb: torch.Tensor,
        z: torch.Tensor,
        z_per_request: torch.Tensor | None,
        dots: torch.Tensor,
    ) -> torch.Tensor:
        """The top MLP with the request's vectors, their dot products and (concatenated) its
        embeddings through the first layer once per request; the rest per row."""
        requests = embedded.requests
        assert requests is not None
        vectors = [
            z_per_request if node == 0 else requests.pooled(self.features[node - 1])
            for node in plan.nodes
        ]
        own_vectors = torch.stack(vectors, dim=1)  # [R, len(nodes), dim]
        shared_dots = all_dots(own_vectors)  # [R, len(nodes)²]
        shared = [shared_dots.index_select(1, plan.shared_pairs.to(dots.device))]
        own = [dots.index_select(1, plan.own_pairs.to(dots.device))]
        if z_per_request is not None:
            shared.insert(0, z_per_request)
        else:
            own.insert(0, z)
        if self.concat_embeddings:
            features = [node - 1 for node in plan.nodes if node]
            kept = [i for i in range(len(self.features)) if i not in features]
            if features:
                shared.append(own_vectors[:, -len(features):].flatten(1))
            if kept:
                own.append(emb[:, kept].flatten(1))
        return split_through(
            self.top, requests.index, torch.cat(shared, 1), plan.shared_columns,
            torch.cat(own, 1) if plan.own_columns.numel() else None, plan.own_columns,
        )


def _every_column(columns: torch.Tensor, width: int) -> bool:
    """Whether a context's dense columns are all `width` columns in order."""
    return columns.numel() == width and bool(
        torch.equal(columns, torch.arange(width, dtype=columns.dtype))
    )


@functools.lru_cache(maxsize=64)
def _plan(
    features: int, dim: int, shared: tuple[int, ...], bottom_shared: bool, concat: bool
) -> _SharingPlan:
    """The `_SharingPlan` of a DLRM with `features` embedding features at `dim`, whose
    requests share features `shared` (indices) and, with `bottom_shared`, the bottom vector.
    The top input is [bottom vector (dim), dots (upper triangle of n = features + 1, row
    major), embeddings (features × dim) if `concat`]."""
    n = features + 1
    nodes = ((0,) if bottom_shared else ()) + tuple(1 + i for i in shared)
    local = {node: k for k, node in enumerate(nodes)}
    shared_pairs, own_pairs, shared_dot_cols, own_dot_cols = [], [], [], []
    for p, (i, j) in enumerate(torch.triu_indices(n, n, offset=1).t().tolist()):
        if i in local and j in local:
            shared_pairs.append(local[i] * len(nodes) + local[j])
            shared_dot_cols.append(dim + p)
        else:
            own_pairs.append(i * n + j)
            own_dot_cols.append(dim + p)
    bottom = list(range(dim))
    shared_cols = (bottom if bottom_shared else []) + shared_dot_cols
    own_cols = ([] if bottom_shared else bottom) + own_dot_cols
    if concat:
        start = dim + n * (n - 1) // 2
        for i in range(features):
            block = list(range(start + i * dim, start + (i + 1) * dim))
            (shared_cols if i in shared else own_cols).extend(block)
    as_long = functools.partial(torch.tensor, dtype=torch.int64)
    return _SharingPlan(
        nodes, as_long(shared_pairs), as_long(own_pairs), as_long(shared_cols), as_long(own_cols)
    )
