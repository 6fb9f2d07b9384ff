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
In backward, W's gradient [U, dim] is kept beside the collection (`row_gradients`, through a
tensor hook) — no row changes during backward. The optimizer step (`SparseOptimizer`) applies
it with each table's row optimizer, after clipping and a finiteness check, so only the unique
rows of the batch are touched; dense parameters are left to torch.optim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from streamrec.batch import Batch, RequestContext
from streamrec.embedding.adaptive_dim import FREQUENT
from streamrec.embedding.grouped import TableGroup
from streamrec.embedding.lookup import RowGradient, RowLookup
from streamrec.embedding.pooling import FeaturePooling
from streamrec.embedding.table import DynamicTable
from streamrec.schema import EmbeddingFeature, Schema
from streamrec.thread_flag import ThreadFlag


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


class RequestEmbedded:
    """The pooled embeddings of the features a batch's requests share (`RequestContext`),
    once per request — what a model passes through the layers that see only them. Made on
    first access (a model that does not share pays nothing).

    index: LongTensor [B]  the request of each row
    """

    def __init__(
        self, index: torch.Tensor, first: torch.Tensor, features: frozenset[str], embedded: Embedded
    ) -> None:
        self.index = index
        self.first = first  # [R]: each request's first row
        self._features = features
        self._embedded = embedded
        self._rows: dict[int, torch.Tensor] = {}  # group → its rows at `first` [R, F, dim]

    @property
    def num_requests(self) -> int:
        return int(self.first.shape[0])

    def __contains__(self, feature: str) -> bool:
        return feature in self._features

    def pooled(self, feature: str) -> torch.Tensor:
        """[R, dim]: a shared feature's pooled embedding, once per request."""
        if feature not in self._features:
            raise KeyError(f"{feature!r} is not shared by the batch's requests")
        for g, (names, tensor) in enumerate(self._embedded.groups):
            if feature in names:
                if g not in self._rows:
                    self._rows[g] = tensor.index_select(0, self.first)
                return self._rows[g][:, names.index(feature)]
        raise KeyError(feature)


@dataclass
class Embedded:
    """The embeddings of one batch.

    pooled:    {feature: [B, dim]} (views into `groups`)
    groups:    [(feature names, [B, F, dim])] — each group's features stacked, as one tensor
    sequences: {feature: ([B, L, dim], mask bool [B, L])} for features with `max_length`
    context:   the batch's request context, if it has one; `requests` then gives the shared
               features once per request (`pooled` and `groups` hold them on every row too)
    """

    pooled: PooledViews = field(default_factory=PooledViews)
    groups: list[tuple[list[str], torch.Tensor]] = field(default_factory=list)
    sequences: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    context: RequestContext | None = None
    _requests: RequestEmbedded | None = field(default=None, repr=False)

    @property
    def requests(self) -> RequestEmbedded | None:
        """The features the batch's requests share, once per request (None without a request
        context). Their ids were looked up with the batch's: the lookup de-duplicates, so a
        request's user is probed and read once however many rows repeat it — only the dense
        layers above need the context to do their part once per request."""
        if self.context is None:
            return None
        if self._requests is None:
            shared = frozenset(f for f in self.pooled if f in self.context.features)
            self._requests = RequestEmbedded(
                self.context.index, self.context.first, shared, self
            )
        return self._requests

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


_dense_only = ThreadFlag()


def tables_left_out() -> AbstractContextManager[None]:
    """Within this block (on this thread), `state_dict()` / `load_state_dict()` of a model skip
    its tables: the model directory stores them apart, chunk by chunk, and a copy of every
    row just to drop it would cost a table's memory."""
    return _dense_only.raised()


@dataclass
class _GroupPlan:
    lookup: RowLookup
    features: list[str]  # in fid order: table after table, then the table's features
    table_index: np.ndarray  # int64 [F]: each feature's table (index in the group)
    pooling: FeaturePooling
    part: str  # "whole"; or a frequency-adaptive table's "rare" / "frequent" part


def _part(name: str, tables: Mapping[str, DynamicTable]) -> str:
    if name.endswith(FREQUENT) and name[: -len(FREQUENT)] in tables:
        return "frequent"
    return "rare" if name + FREQUENT in tables else "whole"


class EmbeddingCollection(nn.Module):
    def __init__(self, schema: Schema, tables: dict[str, DynamicTable]) -> None:
        super().__init__()
        missing = set(schema.tables()) - set(tables)
        if missing:
            raise ValueError(f"no DynamicTable given for tables {sorted(missing)}")
        self.tables = tables
        self.features: dict[str, EmbeddingFeature] = {f.name: f for f in schema.embeddings}
        feature_lists = dict(schema.tables())
        # A frequency-adaptive table (adaptive_dim.py) comes as NAME and NAME@frequent: each
        # feature f of NAME is also looked up in NAME@frequent, as feature `f@frequent` reading
        # f's ids, and forward concatenates the two.
        self._frequent: dict[str, str] = {}  # feature → its frequent part's feature
        self._source: dict[str, str] = {}  # a frequent part's feature → the column it reads
        for name in list(feature_lists):
            if _part(name, tables) != "rare":
                continue
            feature_lists[name + FREQUENT] = []
            for f in feature_lists[name]:
                shadow = f + FREQUENT
                self.features[shadow] = self.features[f].model_copy(
                    update={"name": shadow, "table": name + FREQUENT}
                )
                self._frequent[f], self._source[shadow] = shadow, f
                feature_lists[name + FREQUENT].append(shadow)
        by_key: dict[tuple, list[str]] = {}
        for name in feature_lists:
            key = (tables[name].settings.group_key(), _part(name, tables))
            by_key.setdefault(key, []).append(name)
        self._plans = []
        for (_, part), names in by_key.items():
            features = [f for n in names for f in feature_lists[n]]
            self._plans.append(
                _GroupPlan(
                    TableGroup([tables[n] for n in names]),
                    features,
                    np.array([names.index(self.features[f].table_name) for f in features]),
                    FeaturePooling([self.features[f] for f in features]),
                    part,
                )
            )
        self.now: float | None = None  # event time for admission / expiry; set by the trainer
        self.row_gradients: list[RowGradient] = []  # left by backward, applied by the step

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

    def apply_row_gradients(self) -> None:
        """One row-optimizer step from the gradients backward left (then forgets them). Several
        backward passes (accumulated micro-batches) are summed per row first where the lookup
        can merge them (a local group); a sharded one applies them in turn."""
        pending: dict[int, list[RowGradient]] = {}
        for g in self.row_gradients:
            pending.setdefault(id(g.lookup), []).append(g)
        self.row_gradients = []
        for grads in pending.values():
            lookup = grads[0].lookup
            merged = (
                lookup.merge([g.handle for g in grads], [g.grad for g in grads])
                if len(grads) > 1
                else None
            )
            if merged is not None:
                lookup.apply_gradients(*merged)
                continue
            for g in grads:
                lookup.apply_gradients(g.handle, g.grad)

    @property
    def has_disk_tier(self) -> bool:
        return any(t.has_disk_tier for t in self.tables.values())

    @property
    def prefetches(self) -> bool:
        """Whether a trainer should call `prefetch` with each next batch (`storage.prefetch`
        of some tiered table)."""
        return any(t.has_disk_tier and t.prefetches for t in self.tables.values())

    def prefetch(self, batch: Batch) -> None:
        """Start reading from disk, on the tiered tables' prefetch threads, the rows of
        `batch`'s ids that DRAM does not hold (`TieredTable.prefetch`). A trainer calls it with
        the next batch right after this batch's lookup, so the read overlaps the step."""
        for plan in self._plans:
            tables = plan.lookup.tables
            if not any(t.has_disk_tier for t in tables):
                continue
            _, fids, segments = self._group_ids(plan, batch)
            plan.lookup.prefetch(fids, segments)

    def wait_prefetch(self) -> None:
        """Return once no prefetch thread reads the tables (before they change outside a
        lookup: eviction, deltas)."""
        for plan in self._plans:
            plan.lookup.wait_prefetch()

    def _group_ids(
        self, plan: _GroupPlan, batch: Batch
    ) -> tuple[list[Any], np.ndarray, np.ndarray]:
        """(the group's features' id lists on the CPU, their fids table after table, the
        table boundaries: table i's fids are fids[segments[i]:segments[i + 1]])."""
        columns = [batch.sparse[self._source.get(f, f)] for f in plan.features]
        parts = [c.to("cpu") if c.values.is_cuda else c for c in columns]
        fids = torch.cat([p.values for p in parts]).numpy()
        sizes = np.bincount(plan.table_index, [p.values.shape[0] for p in parts])
        segments = np.zeros(len(plan.lookup.tables) + 1, np.int64)
        np.cumsum(sizes.astype(np.int64), out=segments[1:])
        return parts, fids, segments

    def dim(self, feature: str) -> int:
        """The width of a feature's embedding (both parts of a frequency-adaptive table)."""
        width = self.tables[self.features[feature].table_name].dim
        if feature in self._frequent:
            width += self.tables[self.features[self._frequent[feature]].table_name].dim
        return width

    @property
    def feature_order(self) -> list[str]:
        """Embedding features in the order the groups stack them (use with `stacked`)."""
        return [f for plan in self._plans if plan.part != "frequent" for f in plan.features]

    # `state_dict()` holds every table as tensors, under `tables.<name>.<field>` (fids, weights,
    # optimizer state, metadata: `DynamicTable.state_dict`), so torch.save / torch.load
    # (weights_only=True) round-trip a whole model.
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if _dense_only:
            return
        for name, table in self.tables.items():
            for key, tensor in table.state_dict().items():
                destination[f"{prefix}tables.{name}.{key}"] = tensor

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        ours = f"{prefix}tables."
        unexpected_keys[:] = [k for k in unexpected_keys if not k.startswith(ours)]
        if _dense_only:
            return
        for name, table in self.tables.items():
            fields = f"{prefix}tables.{name}."
            state = {k[len(fields) :]: v for k, v in state_dict.items() if k.startswith(fields)}
            if not state:
                missing_keys.append(f"{fields}*")
                continue
            try:
                table.load_state_dict(state)
            except (KeyError, ValueError) as e:
                error_msgs.append(f"table {name!r}: {e}")

    def forward(self, batch: Batch) -> Embedded:
        out = Embedded()
        device = batch.dense.device
        now = self.now
        if now is None and batch.timestamps is not None and batch.timestamps.numel():
            now = float(batch.timestamps.max())
        for plan in self._plans:
            self._forward_group(plan, batch, now, device, out)
        out.context = batch.context
        return self._joined(out) if self._frequent else out

    def _joined(self, parts: Embedded) -> Embedded:
        """Each frequency-adaptive feature as [B, dim] (a sequence as [B, L, dim]): its rare
        part's rows, then its frequent part's (zeros for an id not promoted yet)."""
        out = Embedded()
        for f, (rows, mask) in parts.sequences.items():
            if f in self._source:
                continue
            if f in self._frequent:
                rows = torch.cat([rows, parts.sequences[self._frequent[f]][0]], dim=2)
            out.sequences[f] = (rows, mask)
        frequent = {tuple(names): tensor for (names, tensor), plan in
                    zip(parts.groups, self._plans, strict=True) if plan.part == "frequent"}
        for (names, tensor), plan in zip(parts.groups, self._plans, strict=True):
            if plan.part == "frequent":
                continue
            if plan.part == "rare":
                shadows = [self._frequent[f] for f in names]
                rest = frequent.get(tuple(shadows))
                if rest is None:  # the parts grouped in another order
                    rest = torch.stack([parts.pooled[s] for s in shadows], dim=1)
                tensor = torch.cat([tensor, rest], dim=2)
            out.add_group(names, tensor)
        out.context = parts.context
        return out

    def _forward_group(
        self, plan: _GroupPlan, batch: Batch, now: float | None, device: torch.device, out: Embedded
    ) -> None:
        parts, fids, segments = self._group_ids(plan, batch)
        weights, inverse_np, handle = plan.lookup.lookup(fids, segments, now, self.training)
        weights = weights.to(device)
        if self.training and torch.is_grad_enabled():
            weights.requires_grad_(True)
            weights.register_hook(self._keep_row_gradient(plan.lookup, handle))
        inverse = torch.from_numpy(inverse_np).to(device)
        pooled = plan.pooling(weights, inverse, parts, device)
        out.add_group(plan.features, pooled)
        out.sequences.update(plan.pooling.pad_sequences(weights, inverse, parts, device))

    def _keep_row_gradient(self, lookup: RowLookup, handle: Any) -> Callable[[torch.Tensor], None]:
        def keep(grad: torch.Tensor) -> None:
            self.row_gradients.append(RowGradient(lookup, handle, grad))

        return keep
