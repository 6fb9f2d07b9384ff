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
class Batch:
    """B encoded rows.

    labels:     FloatTensor [B, T]  one column per task (empty T=0 at serving time)
    dense:      FloatTensor [B, D]  transformed dense features, then one-/multi-hot encodings
    sparse:     {feature name: JaggedIds with batch_size B}
    group_ids:  LongTensor [B] or None   request / user id for GAUC
    timestamps: LongTensor [B] or None   event time, seconds since the epoch
    targets:    FloatTensor [B, T] or None   soft training targets in [0, 1] (distillation,
                `train.distill_from`): the loss uses them instead of labels; metrics do not
    """

    labels: torch.Tensor
    dense: torch.Tensor
    sparse: dict[str, JaggedIds] = field(default_factory=dict)
    group_ids: torch.Tensor | None = None
    timestamps: torch.Tensor | None = None
    targets: torch.Tensor | None = None

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
        """The rows at `index` (LongTensor [K], any order), jagged features included."""
        sparse = {}
        rows_of = torch.arange(index.numel())
        for name, ids in self.sparse.items():
            lengths = ids.lengths()[index]
            starts = ids.offsets[:-1][index]
            rows = torch.repeat_interleave(rows_of, lengths)
            within = torch.arange(int(lengths.sum())) - (torch.cumsum(lengths, 0) - lengths)[rows]
            positions = starts[rows] + within
            weights = ids.weights[positions] if ids.weights is not None else None
            sparse[name] = JaggedIds.from_lengths(ids.values[positions], lengths, weights)

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
        )
