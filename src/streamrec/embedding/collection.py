"""EmbeddingCollection: the tables of a schema as one nn.Module.

Tables with the same dim and row optimizer form a group; per group and batch, forward:
  1. concatenates the fids of every feature of the group (table after table) and hands them to
     the group's `RowLookup` (lookup.py): a local `TableGroup` resolves them in one kernel —
     de-duplicated per table (unique + inverse + counts), looked up, admitted while training,
     shared tables read once — and gathers the unique rows once → W [U, dim]; a sharded group
     (`shard_tables`, sharded.py) does the same on the ranks that own the ids;
  2. moves W to the batch's device;
  3. pools every feature of the group in one kernel over W (`pooling.py`: sum, then a per-bag
     scale for mean / sqrtn; per-id weights) → {feature: [B, dim]}; features with
     `max_length` also come back padded [B, L, dim] with a mask.
In backward, W's gradient [U, dim] goes straight to the row optimizer of every table in the
group (fused into backward through a tensor hook, via the lookup), so only the unique rows of
the batch are touched; dense parameters are left to torch.optim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from streamrec.batch import Batch
from streamrec.embedding.grouped import TableGroup
from streamrec.embedding.lookup import RowLookup
from streamrec.embedding.pooling import FeaturePooling
from streamrec.embedding.table import DynamicTable
from streamrec.schema import EmbeddingFeature, Schema


class PooledViews(Mapping[str, torch.Tensor]):
    """{feature: [B, dim]}, each a view into its group's [B, F, dim] tensor, made on access:
    a Criteo batch has 26 features, and slicing all of them costs more than models that take
    the stacked tensor ever need."""

    def __init__(self) -> None:
        self._where: dict[str, tuple[torch.Tensor, int]] = {}

    def add_group(self, names: list[str], tensor: torch.Tensor) -> None:
        for i, name in enumerate(names):
            self._where[name] = (tensor, i)

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor, i = self._where[name]
        return tensor[:, i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


@dataclass
class Embedded:
    """The embeddings of one batch.

    pooled:    {feature: [B, dim]} (views into `groups`)
    groups:    [(feature names, [B, F, dim])] — each group's features stacked, as one tensor
    sequences: {feature: ([B, L, dim], mask bool [B, L])} for features with `max_length`
    """

    pooled: PooledViews = field(default_factory=PooledViews)
    groups: list[tuple[list[str], torch.Tensor]] = field(default_factory=list)
    sequences: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def add_group(self, names: list[str], tensor: torch.Tensor) -> None:
        """Record one group's pooled features [B, len(names), dim]."""
        self.groups.append((names, tensor))
        self.pooled.add_group(names, tensor)

    def stacked(self, names: list[str]) -> torch.Tensor:
        """[B, len(names), dim] for these features — no copy when they are exactly one group's
        features in group order (what `EmbeddingCollection.feature_order` lists)."""
        for group_names, tensor in self.groups:
            if group_names == names:
                return tensor
        return torch.stack([self.pooled[n] for n in names], dim=1)


@dataclass
class _GroupPlan:
    lookup: RowLookup
    features: list[str]  # in fid order: table after table, then the table's features
    table_index: np.ndarray  # int64 [F]: each feature's table (index in the group)
    pooling: FeaturePooling


class EmbeddingCollection(nn.Module):
    def __init__(self, schema: Schema, tables: dict[str, DynamicTable]) -> None:
        super().__init__()
        missing = set(schema.tables()) - set(tables)
        if missing:
            raise ValueError(f"no DynamicTable given for tables {sorted(missing)}")
        self.tables = tables
        self.features: dict[str, EmbeddingFeature] = {f.name: f for f in schema.embeddings}
        by_key: dict[tuple, list[str]] = {}
        for name in schema.tables():
            t = tables[name]
            key = t.settings.group_key()
            by_key.setdefault(key, []).append(name)
        feature_lists = schema.tables()
        self._plans = []
        for names in by_key.values():
            features = [f for n in names for f in feature_lists[n]]
            self._plans.append(
                _GroupPlan(
                    TableGroup([tables[n] for n in names]),
                    features,
                    np.array([names.index(self.features[f].table_name) for f in features]),
                    FeaturePooling([self.features[f] for f in features]),
                )
            )
        self.now: float | None = None  # event time for admission / expiry; set by the trainer

    def replace_lookups(self, make: Callable[[list[DynamicTable]], RowLookup]) -> None:
        """Give every group of tables the lookup `make(tables)` builds (e.g. a sharded one):
        inputs, outputs and every model stay the same."""
        for plan in self._plans:
            plan.lookup = make(plan.lookup.tables)

    @property
    def lookups(self) -> list[RowLookup]:
        return [plan.lookup for plan in self._plans]

    def flush(self) -> None:
        """Apply the embedding gradients still in flight (a sharded lookup in hybrid mode)."""
        for plan in self._plans:
            plan.lookup.flush()

    def dim(self, feature: str) -> int:
        return self.tables[self.features[feature].table_name].dim

    @property
    def feature_order(self) -> list[str]:
        """Embedding features in the order the groups stack them (use with `stacked`)."""
        return [f for plan in self._plans for f in plan.features]

    def forward(self, batch: Batch) -> Embedded:
        out = Embedded()
        device = batch.dense.device
        now = self.now
        if now is None and batch.timestamps is not None and batch.timestamps.numel():
            now = float(batch.timestamps.max())
        for plan in self._plans:
            self._forward_group(plan, batch, now, device, out)
        return out

    def _forward_group(
        self, plan: _GroupPlan, batch: Batch, now: float | None, device: torch.device, out: Embedded
    ) -> None:
        parts = [
            batch.sparse[f].to("cpu") if batch.sparse[f].values.is_cuda else batch.sparse[f]
            for f in plan.features
        ]
        fids = torch.cat([p.values for p in parts]).numpy()
        sizes = np.bincount(plan.table_index, [p.values.shape[0] for p in parts])
        segments = np.zeros(len(plan.lookup.tables) + 1, np.int64)
        np.cumsum(sizes.astype(np.int64), out=segments[1:])  # table i: fids[seg[i]:seg[i + 1]]
        weights, inverse_np, handle = plan.lookup.lookup(fids, segments, now, self.training)
        weights = weights.to(device)
        if self.training and torch.is_grad_enabled():
            weights.requires_grad_(True)
            weights.register_hook(_row_update_hook(plan.lookup, handle))
        inverse = torch.from_numpy(inverse_np).to(device)
        pooled = plan.pooling(weights, inverse, parts, device)
        out.add_group(plan.features, pooled)
        out.sequences.update(plan.pooling.pad_sequences(weights, inverse, parts, device))


def _row_update_hook(lookup: RowLookup, handle: Any) -> Callable[[torch.Tensor], None]:
    def apply(grad: torch.Tensor) -> None:
        lookup.apply_gradients(handle, grad)

    return apply
