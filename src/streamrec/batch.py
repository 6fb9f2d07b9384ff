"""Batch and JaggedIds: the tensors every later stage (tables, models, serving) consumes.

`JaggedIds` is a small KeyedJaggedTensor for one sparse feature: the ids of row b are
`values[offsets[b]:offsets[b+1]]`, with optional per-id `weights`. `Batch` bundles the labels,
dense features and one JaggedIds per sparse feature for B rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch


@dataclass
class JaggedIds:
    """Variable-length int64 fids per row.

    values:  LongTensor [N]     fids of all rows, row after row
    offsets: LongTensor [B+1]   offsets[0] == 0, non-decreasing, offsets[-1] == N
    weights: FloatTensor [N] or None   per-id weights (multi-valued weighted features)
    """

    values: torch.Tensor
    offsets: torch.Tensor
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.values.dtype != torch.int64 or self.offsets.dtype != torch.int64:
            raise TypeError("JaggedIds values and offsets must be int64")
        if self.weights is not None and self.weights.shape != self.values.shape:
            raise ValueError("weights must have one entry per value")

    @property
    def batch_size(self) -> int:
        return int(self.offsets.numel()) - 1

    def lengths(self) -> torch.Tensor:
        """LongTensor [B]: number of ids in each row."""
        return self.offsets[1:] - self.offsets[:-1]

    def row_ids(self) -> torch.Tensor:
        """LongTensor [N]: the row each value belongs to."""
        return torch.repeat_interleave(torch.arange(self.batch_size), self.lengths())

    @classmethod
    def from_lengths(
        cls, values: torch.Tensor, lengths: torch.Tensor, weights: torch.Tensor | None = None
    ) -> JaggedIds:
        offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        return cls(values, offsets, weights)

    def slice(self, start: int, stop: int) -> JaggedIds:
        """Rows [start, stop) as a new JaggedIds with offsets rebased to 0."""
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        w = self.weights[lo:hi] if self.weights is not None else None
        return JaggedIds(self.values[lo:hi], self.offsets[start : stop + 1] - lo, w)

    @staticmethod
    def concat(parts: Sequence[JaggedIds]) -> JaggedIds:
        if not parts:
            raise ValueError("concat needs at least one JaggedIds")
        values = torch.cat([p.values for p in parts])
        lengths = torch.cat([p.lengths() for p in parts])
        has_w = [p.weights is not None for p in parts]
        if any(has_w) and not all(has_w):
            raise ValueError("cannot concatenate weighted and unweighted JaggedIds")
        weights = torch.cat([p.weights for p in parts]) if all(has_w) else None  # type: ignore[misc]
        return JaggedIds.from_lengths(values, lengths, weights)

    def truncate_last(self, max_length: int) -> JaggedIds:
        """Keep only the last `max_length` ids of each row (most recent, for sequences)."""
        lengths = self.lengths()
        if lengths.numel() == 0 or int(lengths.max()) <= max_length:
            return self
        keep_len = lengths.clamp(max=max_length)
        starts = self.offsets[1:] - keep_len
        new_offsets = torch.zeros_like(self.offsets)
        torch.cumsum(keep_len, 0, out=new_offsets[1:])
        rows = torch.repeat_interleave(torch.arange(self.batch_size), keep_len)
        idx = starts[rows] + (torch.arange(int(new_offsets[-1])) - new_offsets[:-1][rows])
        w = self.weights[idx] if self.weights is not None else None
        return JaggedIds(self.values[idx], new_offsets, w)

    def take(self, index: torch.Tensor) -> JaggedIds:
        """The rows at `index` (LongTensor [K], any order, repeats allowed)."""
        lengths = self.lengths()[index]
        starts = self.offsets[:-1][index]
        rows = torch.repeat_interleave(torch.arange(index.numel()), lengths)
        within = torch.arange(int(lengths.sum())) - (torch.cumsum(lengths, 0) - lengths)[rows]
        positions = starts[rows] + within
        weights = self.weights[positions] if self.weights is not None else None
        return JaggedIds.from_lengths(self.values[positions], lengths, weights)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> JaggedIds:
        w = self.weights.to(device, non_blocking=non_blocking) if self.weights is not None else None
        return JaggedIds(
            self.values.to(device, non_blocking=non_blocking),
            self.offsets.to(device, non_blocking=non_blocking),
            w,
        )

    def pin_memory(self) -> JaggedIds:
        w = self.weights.pin_memory() if self.weights is not None else None
        return JaggedIds(self.values.pin_memory(), self.offsets.pin_memory(), w)

    def to_arrow(self) -> pa.Array:
        """→ Arrow list<int64> (or, with weights, struct{ids, weights} of lists)."""
        offsets = pa.array(self.offsets.numpy().astype(np.int32))
        ids = pa.ListArray.from_arrays(offsets, pa.array(self.values.numpy()))
        if self.weights is None:
            return ids
        weights = pa.ListArray.from_arrays(offsets, pa.array(self.weights.numpy()))
        return pa.StructArray.from_arrays([ids, weights], names=["ids", "weights"])

    @classmethod
    def from_arrow(cls, arr: pa.Array) -> JaggedIds:
        """Inverse of `to_arrow` (null lists become empty rows)."""
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        weights = None
        if pa.types.is_struct(arr.type):
            weights_arr = arr.field("weights")
            arr = arr.field("ids")
            weights = torch.from_numpy(
                np.array(weights_arr.flatten().to_numpy(zero_copy_only=False), np.float32)
            )
        lengths = np.asarray(arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False))
        values = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
        return cls.from_lengths(
            torch.from_numpy(values.copy()), torch.from_numpy(lengths.astype(np.int64)), weights
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JaggedIds):
            return NotImplemented
        same_w = (self.weights is None and other.weights is None) or (
            self.weights is not None
            and other.weights is not None
            and torch.equal(self.weights, other.weights)
        )
        return (
            torch.equal(self.values, other.values)
            and torch.equal(self.offsets, other.offsets)
            and same_w
        )


@dataclass
class RequestContext:
    """A batch's rows grouped by the request they answer (laid out request after request),
    and which of its inputs every row of a request shares (its user, its context). A server
    scores many candidates per request: a model that knows which inputs are the request's
    passes them through the layers that see only them once per request, then broadcasts the
    result to the request's rows (request-level sharing; XDL, YouTube DNN). `Batch.sparse` and
    `Batch.dense` still hold every row's values, so code that ignores the context computes the
    same scores.

    index:         LongTensor [B]     the request of each row, 0‥R−1, non-decreasing
    first:         LongTensor [R]     each request's first row
    features:      the id features (`Batch.sparse` keys) equal on every row of a request
    dense_columns: LongTensor [C]     the columns of `Batch.dense` constant within a request
    dense:         FloatTensor [R, C] those columns' values, one row a request
    """

    index: torch.Tensor
    first: torch.Tensor
    features: frozenset[str]
    dense_columns: torch.Tensor
    dense: torch.Tensor

    @property
    def num_requests(self) -> int:
        return int(self.first.shape[0])

    @classmethod
    def of(
        cls,
        dense: torch.Tensor,
        sizes: Sequence[int],
        features: Sequence[str],
        dense_columns: Sequence[int],
    ) -> RequestContext:
        """The context of B = Σ sizes rows (`dense` [B, D]) laid out request after request
        (`sizes`: each request's row count); `features` and `dense_columns` must hold one value
        per request (a server broadcasts its context)."""
        counts = torch.as_tensor(list(sizes), dtype=torch.int64)
        if counts.numel() == 0 or int(counts.min()) < 1:
            raise ValueError("every request of a request context needs at least one row")
        if int(counts.sum()) != dense.shape[0]:
            raise ValueError(f"request sizes sum to {int(counts.sum())}, not {dense.shape[0]}")
        first = torch.cumsum(counts, 0) - counts
        columns = torch.as_tensor(list(dense_columns), dtype=torch.int64)
        return cls(
            torch.repeat_interleave(torch.arange(counts.numel()), counts),
            first,
            frozenset(features),
            columns,
            dense.index_select(0, first).index_select(1, columns),
        )

    @staticmethod
    def concat(parts: Sequence[RequestContext | None]) -> RequestContext | None:
        """The context of concatenated batches; None unless every part has one and they
        share the same features (a batch mixing them is scored without sharing)."""
        first = parts[0]
        if first is None or any(
            p is None
            or p.features != first.features
            or not torch.equal(p.dense_columns, first.dense_columns)
            for p in parts
        ):
            return None
        index, firsts, requests, rows = [], [], 0, 0
        for p in parts:
            assert p is not None
            index.append(p.index + requests)
            firsts.append(p.first + rows)
            requests += p.num_requests
            rows += p.index.shape[0]
        return RequestContext(
            torch.cat(index),
            torch.cat(firsts),
            first.features,
            first.dense_columns,
            torch.cat([p.dense for p in parts]),  # type: ignore[union-attr]
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RequestContext:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return RequestContext(
            move(self.index), move(self.first), self.features, move(self.dense_columns),
            move(self.dense),
        )


@dataclass
class Batch:
    """B encoded rows.

    labels:     FloatTensor [B, T]  one column per task (empty T=0 at serving time)
    dense:      FloatTensor [B, D]  transformed dense features, then one-/multi-hot encodings
    sparse:     {feature name: JaggedIds with batch_size B}
    group_ids:  LongTensor [B] or None   request / user id for GAUC
    timestamps: LongTensor [B] or None   event time, seconds since the epoch
    targets:    FloatTensor [B, T] or None   soft training targets in [0, 1] (distillation,
                `train.distill_from`): the loss uses them instead of labels; metrics do not
    context:    RequestContext or None   rows grouped by request, with what each request's
                rows share (serving); models may compute the shared part once per request
    """

    labels: torch.Tensor
    dense: torch.Tensor
    sparse: dict[str, JaggedIds] = field(default_factory=dict)
    group_ids: torch.Tensor | None = None
    timestamps: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    context: RequestContext | None = None

    def __post_init__(self) -> None:
        if self.context is not None and self.context.index.shape[0] != self.dense.shape[0]:
            raise ValueError(
                f"request context covers {self.context.index.shape[0]} rows, "
                f"the batch has {self.dense.shape[0]}"
            )

    @property
    def size(self) -> int:
        return int(self.dense.shape[0])

    def __len__(self) -> int:
        return self.size

    def _map_optional(self, t: torch.Tensor | None, fn) -> torch.Tensor | None:
        return None if t is None else fn(t)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(
            move(self.labels),
            move(self.dense),
            {k: v.to(device, non_blocking) for k, v in self.sparse.items()},
            self._map_optional(self.group_ids, move),
            self._map_optional(self.timestamps, move),
            self._map_optional(self.targets, move),
            None if self.context is None else self.context.to(device, non_blocking),
        )

    def pin_memory(self) -> Batch:
        def pin(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory()

        return Batch(
            pin(self.labels),
            pin(self.dense),
            {k: v.pin_memory() for k, v in self.sparse.items()},
            self._map_optional(self.group_ids, pin),
            self._map_optional(self.timestamps, pin),
            self._map_optional(self.targets, pin),
        )

    def slice(self, start: int, stop: int) -> Batch:
        def cut(t: torch.Tensor) -> torch.Tensor:
            return t[start:stop]

        return Batch(
            cut(self.labels),
            cut(self.dense),
            {k: v.slice(start, stop) for k, v in self.sparse.items()},
            self._map_optional(self.group_ids, cut),
            self._map_optional(self.timestamps, cut),
            self._map_optional(self.targets, cut),
        )

    def take(self, index: torch.Tensor) -> Batch:
        """The rows at `index` (LongTensor [K], any order), jagged features included. The
        result has no request context: its rows need not keep their requests together."""
        sparse = {name: ids.take(index) for name, ids in self.sparse.items()}

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[index]

        return Batch(
            pick(self.labels),
            pick(self.dense),
            sparse,
            self._map_optional(self.group_ids, pick),
            self._map_optional(self.timestamps, pick),
            self._map_optional(self.targets, pick),
        )

    @staticmethod
    def concat(parts: Sequence[Batch]) -> Batch:
        if not parts:
            raise ValueError("concat needs at least one Batch")
        first = parts[0]

        def cat_optional(name: str) -> torch.Tensor | None:
            items = [getattr(p, name) for p in parts]
            return None if items[0] is None else torch.cat(items)

        return Batch(
            torch.cat([p.labels for p in parts]),
            torch.cat([p.dense for p in parts]),
            {k: JaggedIds.concat([p.sparse[k] for p in parts]) for k in first.sparse},
            cat_optional("group_ids"),
            cat_optional("timestamps"),
            cat_optional("targets"),
            RequestContext.concat([p.context for p in parts]),
        )
