"""DynamicTable: a collisionless embedding table that grows with new ids.

    t = DynamicTable(dim=16, optimizer="rowwise_adagrad", lr=0.05)
    rows = t.lookup(ids, now=ts)     # LongTensor [n] → FloatTensor [n, dim]; admits new ids
    t.apply_gradients(ids, grads)    # grads [n, dim]; duplicate ids are summed
    len(t); t.evict(now=...)         # live rows; expire by TTL / enforce capacity → evicted fids

Layout: a sharded numba hash map (fid → row, `hashmap.py`) and, indexed by row, chunked arrays
(`rows.py`) of weights [dim], optimizer state, and per-row metadata: fid (int64), count (int32,
0 = free row), last-seen event time (uint32 seconds), last-change version (int64). Metadata +
hash map cost ~40 bytes a row beyond weights and optimizer state (benchmarks/RESULTS.md).

A new row starts from a deterministic function of (fid, seed) — uniform in ±init_scale — so an
id gets the same initial row in every run and on every shard, and a reused row (after eviction)
starts with fresh weights and fresh optimizer state.

Versions: every mutating call bumps `t.version` and stamps the rows it wrote, so
`changed_since(v)` / `deleted_since(v)` give the delta a trainer exports for parameter sync.

Capacity is enforced by `evict()`, which trainers call every few steps; between calls a table
can exceed `capacity` by the ids admitted in those steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch

from streamrec.embedding.admission import (
    admit_draw,
    new_sketch,
    sketch_add,
    sketch_from_state,
    sketch_state,
)
from streamrec.embedding.dedup import dedup
from streamrec.embedding.hashmap import ShardedMap, map_delete, map_find, map_insert, mix64
from streamrec.embedding.optimizers import RowOptimizer, apply_rows
from streamrec.embedding.quantized_rows import ROW_PRECISIONS, QuantizedRows
from streamrec.embedding.rows import ChunkedRows
from streamrec.embedding.views import f32_2d, i32_2d, i64_2d, u32_2d
from streamrec.table_config import TableConfig

_ADMIT_ALL, _ADMIT_MIN_COUNT, _ADMIT_PROBABILITY = 0, 1, 2
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class StorageLayout:
    """Where a table's storage lives, for kernels that work on several tables at once
    (`embedding/grouped.py`): each per-row array's chunk addresses (row r in chunk r >> shift,
    at offset r & mask) and its hash map's. Valid until storage moves (`storage_clock`)."""

    slot_ptrs: np.ndarray  # the hash map's shard arrays
    caps: np.ndarray
    shard_bits: int
    weights: np.ndarray
    state: np.ndarray
    count: np.ndarray
    seen: np.ndarray
    version: np.ndarray
    state_width: int
    shift: int  # the same for every per-row array: one chunk size
    mask: int


class DynamicTable:
    """See the module docstring. Settings are the fields of `TableConfig` (table_config.py):
    `DynamicTable(dim=16, optimizer="adam", capacity=10_000)` or
    `DynamicTable.from_config(TableConfig(...), name=...)`; an unknown or invalid setting is a
    pydantic ValidationError (a ValueError) naming it."""

    def __init__(
        self,
        dim: int = 16,
        optimizer: str = "rowwise_adagrad",
        lr: float = 0.05,
        *,
        name: str = "table",
        **settings: Any,
    ) -> None:
        self._build(TableConfig(dim=dim, optimizer=optimizer, lr=lr, **settings), name)

    @classmethod
    def from_config(cls, settings: TableConfig, name: str = "table") -> DynamicTable:
        table = cls.__new__(cls)
        table._build(settings.model_copy(), name)
        return table

    def _build(self, settings: TableConfig, name: str) -> None:
        self.name = name
        self.settings = settings
        self.dim = settings.dim
        self.optimizer = RowOptimizer(settings)
        self.admit_min_count = settings.admit_min_count
        self.admit_probability = settings.admit_probability
        self.ttl_seconds = settings.ttl_seconds
        self.capacity = settings.capacity
        self.eviction = settings.eviction
        self.init_scale = settings.init_scale
        self.seed = settings.seed
        chunk_rows = settings.chunk_rows
        self._state_init = self.optimizer.initial_state(self.dim)
        self._map = ShardedMap(settings.shard_bits)
        self._weights = ChunkedRows(self.dim, np.float32, chunk_rows)
        self._state = ChunkedRows(len(self._state_init), np.float32, chunk_rows)
        self._fid = ChunkedRows(1, np.int64, chunk_rows)
        self._count = ChunkedRows(1, np.int32, chunk_rows)
        self._seen = ChunkedRows(1, np.uint32, chunk_rows)
        self._row_version = ChunkedRows(1, np.int64, chunk_rows)
        self._free = np.empty(64, np.int64)
        self._alloc = np.zeros(2, np.int64)  # [next never-used row, free-list top]
        self._draws = np.zeros(1, np.uint64)
        self._sketch = (
            new_sketch(settings.sketch_width)
            if settings.admit_min_count
            else np.zeros((1, 1), np.uint16)
        )
        self.version = 0
        self._deleted: list[tuple[int, np.ndarray]] = []
        # Ids that had no row when looked up for training, and of those the ones given a row:
        # process-local counters behind the admission-starving health rule.
        self.new_ids_seen = 0
        self.new_ids_admitted = 0
        # The frequent part of a frequency-adaptive table (adaptive_dim.py) admits an id once
        # its exact count in the rare part reaches admit_min_count — no sketch to size.
        self.promoted_from: DynamicTable | None = None

    def storage_layout(self) -> StorageLayout:
        w = self._weights
        return StorageLayout(
            self._map.slot_ptrs, self._map.caps, self._map.shard_bits, w.ptrs,
            self._state.ptrs, self._count.ptrs, self._seen.ptrs, self._row_version.ptrs,
            self._state.width, w.shift, w.mask,
        )

    # ------------------------------------------------------------------------ precision
    @property
    def row_precision(self) -> str:
        """How the weights are stored: fp32, or int16 / int8 codes with a per-row scale and
        offset (`quantized_rows.py`) in a served copy."""
        w = self._weights
        return w.precision if isinstance(w, QuantizedRows) else "fp32"

    def set_row_precision(self, precision: str) -> None:
        """Store the weights at `precision` from now on, re-encoding the rows held (chunk by
        chunk). Fewer-bit rows are for serving: such a table looks rows up, takes deltas
        (`upsert`) and saves, but refuses to train — its rows cannot take small updates."""
        if precision not in ROW_PRECISIONS:
            raise ValueError(f"row precision must be one of {ROW_PRECISIONS}, got {precision!r}")
        if precision == self.row_precision:
            return
        if self.row_precision != "fp32":
            raise ValueError(
                f"table {self.name!r} holds {self.row_precision} rows; re-encoding them as "
                f"{precision} would compound rounding: export again from the fp32 model"
            )
        n = int(self._alloc[0])
        assert isinstance(self._weights, ChunkedRows)
        self._weights = QuantizedRows.encode(self._weights, n, precision)

    def _require_trainable(self) -> None:
        if self.row_precision != "fp32":
            raise ValueError(
                f"table {self.name!r} holds {self.row_precision} rows (a serving copy from "
                "`streamrec export --rows`): it cannot train; train from the fp32 model "
                "directory it was exported from"
            )

    # ------------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return len(self._map)

    @property
    def num_rows_allocated(self) -> int:
        return int(self._alloc[0])

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held: weights, optimizer state, and everything else (map + metadata + sketch)."""
        meta = (
            self._map.nbytes()
            + self._fid.nbytes()
            + self._count.nbytes()
            + self._seen.nbytes()
            + self._row_version.nbytes()
            + self._free.nbytes
            + self._sketch.nbytes
        )
        return {
            "weights": self._weights.nbytes(),
            "optimizer_state": self._state.nbytes(),
            "overhead": meta,
        }

    # ------------------------------------------------------------------------ lookup
    def lookup(
        self, ids: torch.Tensor, now: float | None = None, insert: bool = True
    ) -> torch.Tensor:
        """ids LongTensor [n] → FloatTensor [n, dim] (a copy).

        With insert=True (training), new ids that pass admission get a row and every stored id
        has its count and last-seen time updated; ids not admitted read zeros. With
        insert=False (evaluation, serving) nothing changes and unknown ids read zeros.
        """
        fids = _as_fids(ids)
        if not insert:
            rows = self._map.find(fids)
            if self.has_disk_tier and (rows < 0).any():
                at = np.flatnonzero(rows < 0)
                unique, inverse, counts = dedup(fids[at])
                rows[at] = self._fill_misses(unique, counts, _seconds(now), False)[inverse]
            return torch.from_numpy(self._weights.gather(rows))
        self._require_trainable()
        now_s = _seconds(now)
        rows = self._map.find(fids)  # parallel probe, then a parallel gather:
        out = self._weights.gather(rows)  # two passes beat one fused loop here (measured)
        c = self._count
        misses = _touch_each(rows, now_s, c.ptrs, self._seen.ptrs, c.shift, c.mask)
        if misses:
            at = np.flatnonzero(rows < 0)
            unique, inverse, counts = dedup(fids[at])
            new_rows = self._fill_misses(unique, counts, now_s, True)[inverse]
            out[at] = self._weights.gather(new_rows)
        return torch.from_numpy(out)

    def resolve(
        self,
        fids: np.ndarray,
        counts: np.ndarray | None = None,
        now: float | None = None,
        insert: bool = True,
    ) -> np.ndarray:
        """fids int64 [n] → rows int64 [n] (−1: not stored).

        With insert=True the fids must be distinct (see `dedup`) and `counts` [n] (default 1
        each) says how often each occurred, for admission and LFU counts."""
        fids = _as_fids(fids)
        rows = self._map.find(fids)
        counts = np.ones(fids.shape[0], np.int64) if counts is None else counts
        now_s = _seconds(now)
        if not insert:
            if self.has_disk_tier and (rows < 0).any():
                missing = np.flatnonzero(rows < 0)
                rows[missing] = self._fill_misses(fids[missing], counts[missing], now_s, False)
            return rows
        c, s = self._count, self._seen
        _touch(rows, counts, now_s, c.ptrs, s.ptrs, c.shift, c.mask)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            rows[missing] = self._fill_misses(fids[missing], counts[missing], now_s, True)
        return rows

    # A table with rows below DRAM (`TieredTable`) finds its misses there first.
    has_disk_tier = False

    def _fill_misses(
        self, fids: np.ndarray, counts: np.ndarray, now_s: int, insert: bool
    ) -> np.ndarray:
        """Rows for distinct fids the hash map did not hold → int64 [n] (−1: none). Here:
        admission when training; a tiered table first brings stored rows up from disk."""
        if not insert:
            return np.full(fids.shape[0], -1, np.int64)
        return self._admit(fids, counts, now_s)

    def _admit(
        self, fids: np.ndarray, counts: np.ndarray, now_s: int, rule: bool = True
    ) -> np.ndarray:
        """Rows for distinct fids not in the map → int64 [n] (−1: not admitted by the
        table's admission rule; rule=False: every fid gets a row, as a delta's rows do)."""
        self.new_ids_seen += fids.shape[0]
        mode = (
            _ADMIT_MIN_COUNT
            if self.admit_min_count and rule
            else _ADMIT_PROBABILITY
            if self.admit_probability and rule
            else _ADMIT_ALL
        )
        chosen = None
        if self.promoted_from is not None and rule:
            chosen = np.flatnonzero(
                self.promoted_from.counts_of(fids) >= (self.admit_min_count or 1)
            )
        elif mode != _ADMIT_ALL:
            # Decide first, then make room for the admitted alone: a table that admits 1% of
            # 20M ids must not reserve rows and map slots for the other 99%.
            chosen = np.flatnonzero(_admission_pass(
                fids, counts, mode, self.admit_min_count or 0,
                float(self.admit_probability or 1.0), self._sketch, self._draws,
            ))
        if chosen is not None:
            all_fids, fids, counts = fids, fids[chosen], counts[chosen]
        self._map.reserve(fids)
        self._reserve(int(self._alloc[0]) + fids.shape[0])
        self.version += 1
        out = np.empty(fids.shape[0], np.int64)
        m = self._map
        quantized = isinstance(self._weights, QuantizedRows)
        _admit_kernel(
            fids,
            counts,
            now_s,
            m.slot_ptrs,
            m.caps,
            m.sizes,
            m.shard_bits,
            self._weights.ptrs,
            self._state.ptrs,
            self._fid.ptrs,
            self._count.ptrs,
            self._seen.ptrs,
            self._row_version.ptrs,
            self._weights.shift,
            self._weights.mask,
            0 if quantized else self.dim,  # the kernel's fp32 initial row: not for codes
            self._state._stored_width,
            self._state_init,
            np.float32(self.init_scale),
            np.uint64(self.seed & (2**64 - 1)),
            self.version,
            self._free,
            self._alloc,
            out,
        )
        if quantized:  # a served copy admits only in `upsert`, which writes the rows next
            self._weights.clear(out[out >= 0])
        self.new_ids_admitted += len(out)
        if chosen is None:
            return out
        rows = np.full(all_fids.shape[0], -1, np.int64)
        rows[chosen] = out
        return rows

    def _reserve(self, rows: int) -> None:
        for store in (
            self._weights,
            self._state,
            self._fid,
            self._count,
            self._seen,
            self._row_version,
        ):
            store.reserve(rows)

    # ------------------------------------------------------------------------ updates
    def apply_gradients(self, ids: torch.Tensor, grads: torch.Tensor) -> None:
        """Apply the row optimizer; grads [n, dim]; duplicate ids have their grads summed.
        Ids without a row (never admitted, or evicted) are ignored."""
        fids = _as_fids(ids)
        if grads.shape != (fids.shape[0], self.dim):
            raise ValueError(
                f"grads must be [{fids.shape[0]}, {self.dim}], got {tuple(grads.shape)}"
            )
        unique, inverse, _ = dedup(fids)
        g = torch.zeros(unique.shape[0], self.dim, dtype=torch.float32)
        g.index_add_(0, torch.from_numpy(inverse), grads.detach().float().cpu())
        rows = self._map.find(unique)
        keep = rows >= 0
        self.apply_row_gradients(rows[keep], g[torch.from_numpy(keep)])

    def apply_row_gradients(self, rows: np.ndarray, grads: torch.Tensor) -> None:
        """rows int64 [U] (distinct, stored) and grads [U, dim]: one optimizer step on them."""
        self._require_trainable()
        if rows.shape[0] == 0:
            return
        self.version += 1
        g = np.ascontiguousarray(grads.detach().cpu().float().numpy())
        apply_rows(
            self.optimizer.code,
            self.optimizer.hyperparameters()[None, :],
            np.zeros(rows.shape[0], np.int64),
            rows,
            g,
            self._weights.ptrs[None, :],
            self._state.ptrs[None, :],
            self._row_version.ptrs[None, :],
            np.array([self.version], np.int64),
            self.dim,
            self._state.width,
            self._weights.shift,
            self._weights.mask,
        )

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), dim] weights of rows (−1 reads zeros)."""
        return self._weights.gather(rows)

    # ------------------------------------------------------------------------ eviction
    def evict(self, now: float | None = None) -> torch.Tensor:
        """Expire rows unseen for more than ttl_seconds (event time), then evict by LFU/LRU down
        to `capacity`. Returns the evicted fids (LongTensor)."""
        n = int(self._alloc[0])
        count = self._count.to_array(n)[:, 0]
        live = count > 0
        victims = np.empty(0, np.int64)
        if self.ttl_seconds is not None:
            seen = self._seen.to_array(n)[:, 0].astype(np.int64)
            expired = live & (_seconds(now) - seen > self.ttl_seconds)
            victims = np.flatnonzero(expired)
            live &= ~expired
        if self.capacity is not None:
            excess = int(live.sum()) - self.capacity
            if excess > 0:
                candidates = np.flatnonzero(live)
                if self.eviction == "lfu":
                    key = count[candidates]
                else:
                    key = self._seen.to_array(n)[candidates, 0]
                # Ties broken by row index so eviction is deterministic.
                order = np.lexsort((candidates, key))[:excess]
                victims = np.concatenate([victims, candidates[order]])
        return torch.from_numpy(self.remove_rows(victims))

    def remove_rows(self, rows: np.ndarray) -> np.ndarray:
        """Free rows (distinct, live) → their fids; they are logged as deleted."""
        if rows.size == 0:
            return np.empty(0, np.int64)
        self.version += 1
        fids = self._fid.gather(rows)[:, 0].copy()
        self._free_rows(rows, fids)
        self._deleted.append((self.version, fids))
        return fids

    def _free_rows(self, rows: np.ndarray, fids: np.ndarray) -> None:
        """Unmap these rows' fids and put the rows on the free list (no version, no log)."""
        top = int(self._alloc[1])
        if self._free.shape[0] < top + rows.size:
            grown = np.empty(max(2 * self._free.shape[0], top + rows.size), np.int64)
            grown[:top] = self._free[:top]
            self._free = grown
        m = self._map
        _release_kernel(
            rows,
            fids,
            m.slot_ptrs,
            m.caps,
            m.sizes,
            m.shard_bits,
            self._count.ptrs,
            self._count.shift,
            self._count.mask,
            self._free,
            self._alloc,
        )

    def upsert(
        self,
        fids: np.ndarray,
        weights: np.ndarray,
        now: float | None = None,
        counts: np.ndarray | None = None,
    ) -> None:
        """Set the weights of these fids, inserting the absent ones without admission (applying
        a delta at serving time). fids distinct int64 [n], weights float32 [n, dim]; counts
        [n], when given: how often training has seen each id (`counts_of`), so a server's
        uncertainty follows the trainer's."""
        fids = _as_fids(fids)
        rows = self._map.find(fids)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            rows[missing] = self._admit(
                fids[missing], np.ones(missing.size, np.int64), _seconds(now), rule=False
            )
        self.version += 1
        self._weights.scatter(rows, np.ascontiguousarray(weights, np.float32))
        self._row_version.scatter(rows, np.full((rows.shape[0], 1), self.version, np.int64))
        if counts is not None:
            self._count.scatter(rows, np.asarray(counts, np.int32).reshape(-1, 1))

    def counts_of(self, fids: np.ndarray) -> np.ndarray:
        """int64 [n]: how many times training has seen each id (0: not stored). Nothing is
        admitted or touched."""
        rows = self.resolve(fids, insert=False)
        return self._count.gather(rows)[:, 0].astype(np.int64)

    def delete(self, fids: np.ndarray) -> np.ndarray:
        """Remove these fids if stored; returns the ones that were."""
        rows = self._map.find(_as_fids(fids))
        return self.remove_rows(np.unique(rows[rows >= 0]))

    # ------------------------------------------------------------------------ deltas
    def live_rows(self) -> np.ndarray:
        n = int(self._alloc[0])
        return np.flatnonzero(self._count.to_array(n)[:, 0] > 0)

    def live_fids(self) -> np.ndarray:
        """int64 [len(self)]: the fids stored now."""
        return self._fid.gather(self.live_rows())[:, 0].copy()

    def changed_since(self, version: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(fids [k], weights [k, dim]) of live rows inserted or updated after `version`."""
        n = int(self._alloc[0])
        row_version = self._row_version.to_array(n)[:, 0]
        rows = np.flatnonzero((row_version > version) & (self._count.to_array(n)[:, 0] > 0))
        fids = self._fid.gather(rows)[:, 0].copy()
        return torch.from_numpy(fids), torch.from_numpy(self._weights.gather(rows))

    def deleted_since(self, version: int) -> torch.Tensor:
        """Fids removed after `version` (a fid may since have been re-admitted)."""
        parts = [f for v, f in self._deleted if v > version]
        return torch.from_numpy(np.concatenate(parts) if parts else np.empty(0, np.int64))

    def forget_deletions(self, up_to_version: int) -> None:
        """Drop the deletion log up to a version every consumer has seen (bounds memory)."""
        self._deleted = [(v, f) for v, f in self._deleted if v > up_to_version]

    # ------------------------------------------------------------------------ state
    def drop_optimizer_state(self) -> None:
        """Serving never updates rows: switch to plain SGD, which keeps no per-row state, and
        free the optimizer state (row-wise Adagrad 4 B/row, Adam 8·dim + 4 B/row)."""
        self.settings = self.settings.model_copy(update={"optimizer": "sgd"})
        self.optimizer = RowOptimizer(self.settings)
        self._state_init = self.optimizer.initial_state(self.dim)
        self._state = ChunkedRows(0, np.float32, self._weights.chunk_rows)
        self._state.reserve(self._weights.capacity)

    def saved_form(self) -> tuple[Any, Callable[[Path], dict[str, str]] | None]:
        """How a model directory stores this table: (its tensor file's content, a writer of
        its disk-tier folder — None: the table has none). `load_saved` reads it back."""
        return self.state_dict(), None

    def load_saved(self, state: Any, disk_folder: Path | None) -> None:
        """Restore what `saved_form` stored (`disk_folder`: the checked disk-tier folder, or
        None)."""
        if disk_folder is not None:
            raise ValueError(
                f"table {self.name!r} was saved with a disk tier, but its settings have no "
                "storage: add `storage:` to the table's config"
            )
        self.load_state_dict(state)

    def drop_admission_state(self) -> None:
        """Serving never admits an id: free the count-min sketch (4 × sketch_width counters,
        8 MB by default, whatever the table's size). A table loaded from such a copy for
        training again starts its admission counts afresh."""
        self._sketch = np.zeros((1, 1), np.uint16)

    def row_fields(self) -> dict[str, tuple[Any, np.dtype, bool]]:
        """`state_dict`'s per-row arrays: name → (storage, dtype written, whether it is one
        column written as [n] rather than [n, width]). Fewer-bit rows are written as they are
        held: codes as `weights`, their per-row (scale, offset) as `weight_params`."""
        w = self._weights
        weights: dict[str, tuple[Any, np.dtype, bool]] = (
            {name: (part, part.dtype, False) for name, part in w.saved_parts().items()}
            if isinstance(w, QuantizedRows)
            else {"weights": (w, np.dtype(np.float32), False)}
        )
        return {
            **weights,
            "optimizer_state": (self._state, np.dtype(np.float32), False),
            "fid": (self._fid, np.dtype(np.int64), True),
            "count": (self._count, np.dtype(np.int32), True),
            "last_seen": (self._seen, np.dtype(np.int64), True),
            "row_version": (self._row_version, np.dtype(np.int64), True),
        }

    def other_state(self) -> dict[str, torch.Tensor]:
        """`state_dict`'s arrays that are not per row: free list, sketch, counters, the
        deletion log."""
        n = int(self._alloc[0])
        top = int(self._alloc[1])
        deleted_versions = np.concatenate(
            [np.full(f.shape[0], v, np.int64) for v, f in self._deleted] or [np.empty(0, np.int64)]
        )
        deleted_fids = np.concatenate([f for _, f in self._deleted] or [np.empty(0, np.int64)])
        return {
            "free_rows": torch.from_numpy(self._free[:top].copy()),
            **sketch_state(self._sketch),
            "counters": torch.tensor([n, top, self.version, int(self._draws[0].view(np.int64))]),
            "deleted_fids": torch.from_numpy(deleted_fids),
            "deleted_versions": torch.from_numpy(deleted_versions),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue bit-exactly: weights, optimizer state, metadata, free
        list, sketch and counters. Plain tensors (safetensors-ready, no pickle)."""
        n = int(self._alloc[0])
        out = {}
        for name, (store, dtype, flat) in self.row_fields().items():
            rows = store.to_array(n)
            rows = rows[:, 0] if flat else rows
            out[name] = torch.from_numpy(np.ascontiguousarray(rows.astype(dtype, copy=False)))
        return {**out, **self.other_state()}

    def load_state_dict(self, state: Any) -> None:
        """Restore from `state_dict()` output — a dict of tensors, or a lazily read file (any
        mapping with `shape(name)` and `slice(name, lo, hi)`, e.g. `store.open_tensors`), in
        which case every per-row array is copied chunk by chunk, never whole: loading a large
        table next to a served one (hot reload) costs one table's memory plus one chunk."""
        fresh = DynamicTable.from_config(self.settings, self.name)
        n, top, version, draws = (int(x) for x in state["counters"].tolist())
        lazy = hasattr(state, "slice")
        fresh.set_row_precision(_saved_precision(state, lazy, self.name))
        shape = tuple(state.shape("weights")) if lazy else tuple(state["weights"].shape)
        if shape != (n, self.dim):
            raise ValueError(
                f"table {self.name!r}: weights shape {shape} does not match {n} rows of "
                f"dim {self.dim}"
            )

        def rows(name: str, dtype: np.dtype):
            if lazy:
                return lambda lo, hi: state.slice(name, lo, hi).numpy().astype(dtype, copy=False)
            full = state[name].numpy()
            return lambda lo, hi: full[lo:hi].astype(dtype, copy=False)

        fresh._reserve(max(n, 1))
        for name, (store, _, _) in fresh.row_fields().items():
            store.load_rows(rows(name, store.dtype), n)
        fresh._index_live_rows(n)
        fresh._free = np.empty(max(64, top), np.int64)
        fresh._free[:top] = state["free_rows"].numpy()
        fresh._alloc[:] = (n, top)
        fresh._draws[0] = np.int64(draws).view(np.uint64)
        sketch = sketch_from_state(state)
        if fresh.admit_min_count and sketch.shape != fresh._sketch.shape:  # a serving copy's
            sketch = fresh._sketch  # dropped sketch: admission counts start afresh
        fresh._sketch = sketch
        fresh.version = version
        dv = state["deleted_versions"].numpy()
        df = state["deleted_fids"].numpy()
        fresh._deleted = [(int(v), df[dv == v].copy()) for v in np.unique(dv)]
        fresh.promoted_from = self.promoted_from
        self.__dict__.update(fresh.__dict__)

    def _index_live_rows(self, n: int) -> None:
        """Rebuild the hash map from the loaded fid and count columns (count > 0 = live),
        chunk by chunk: the map is sized once for all live rows, then filled."""
        size = self._fid.chunk_rows

        def live_chunks():
            for k in range((n + size - 1) // size):
                lo = k * size
                hi = min(n, lo + size)
                live = np.flatnonzero(self._count.chunks[k][: hi - lo, 0] > 0)
                yield self._fid.chunks[k][live, 0], live + lo

        need = np.zeros(self._map.caps.shape[0], np.int64)
        for fids, _ in live_chunks():
            need += self._map.shard_counts(fids)
        self._map.reserve_counts(need)
        for fids, live in live_chunks():
            self._map.insert(np.ascontiguousarray(fids), live.astype(np.int64))


def _saved_precision(state: Any, lazy: bool, name: str) -> str:
    """The row precision a saved table's file holds: its weights' dtype says it (uint8 / uint16
    codes come with `weight_params`)."""
    dtype = state.dtype("weights") if lazy else state["weights"].dtype
    precision = {torch.float32: "fp32", torch.uint16: "int16", torch.uint8: "int8"}.get(dtype)
    if precision is None:
        raise ValueError(f"table {name!r}: weights of dtype {dtype} are not a row precision")
    keys = state.keys()
    if (precision != "fp32") != ("weight_params" in keys):
        raise ValueError(
            f"table {name!r}: {precision} weights " + (
                "without their per-row scale and offset (`weight_params`)"
                if precision != "fp32" else "with a stray `weight_params`"
            )
        )
    if precision != "fp32":
        shape = tuple(state.shape("weight_params") if lazy else state["weight_params"].shape)
        rows = tuple(state.shape("weights") if lazy else state["weights"].shape)[:1]
        if shape != (*rows, 2):
            raise ValueError(
                f"table {name!r}: `weight_params` is {shape}, not one (scale, offset) pair for "
                f"each of the {rows[0] if rows else 0} rows"
            )
    return precision


# ---------------------------------------------------------------------------- kernels
def _as_fids(ids: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        if ids.dtype != torch.int64:
            raise TypeError(f"ids must be int64 (LongTensor), got {ids.dtype}")
        return np.ascontiguousarray(ids.detach().cpu().numpy())
    return np.ascontiguousarray(ids, dtype=np.int64)


def _seconds(now: float | None) -> int:
    return int(time.time() if now is None else now)


@numba.njit(nogil=True, cache=True)
def _touch_each(rows, now, count_ptrs, seen_ptrs, shift, mask):
    """Serial write pass of `lookup`: one count per occurrence (rows may repeat); → misses."""
    n_chunk = mask + 1
    misses = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0:
            misses += 1
            continue
        c = i32_2d(count_ptrs[r >> shift], n_chunk, 1)
        o = r & mask
        c[o, 0] = min(np.int64(c[o, 0]) + 1, _INT32_MAX)
        u32_2d(seen_ptrs[r >> shift], n_chunk, 1)[o, 0] = now
    return misses


@numba.njit(nogil=True, cache=True)
def _touch(rows, counts, now, count_ptrs, seen_ptrs, shift, mask):
    """count += occurrences, last_seen = now, for stored rows (one table's ids: the grouped
    path, `grouped._resolve_table`, does this per table in parallel). Serial: a prange body
    here would lose its stores — numba's parfor pass takes `carray` views made inside it for
    dead local arrays; parallel writers call a never-inlined kernel instead."""
    for i in range(rows.shape[0]):
        r = rows[i]
        if r >= 0:
            c = i32_2d(count_ptrs[r >> shift], mask + 1, 1)
            o = r & mask
            c[o, 0] = min(np.int64(c[o, 0]) + counts[i], _INT32_MAX)
            u32_2d(seen_ptrs[r >> shift], mask + 1, 1)[o, 0] = now


@numba.njit(nogil=True, cache=True)
def _init_row(out_row, fid, seed, scale):
    """Deterministic uniform(±scale) row from (fid, seed): a splitmix64 stream."""
    state = mix64(np.uint64(fid) ^ seed)
    for j in range(out_row.shape[0]):
        state += np.uint64(0x9E3779B97F4A7C15)
        u = (mix64(state) >> np.uint64(40)) * (1.0 / 16777216.0)
        out_row[j] = np.float32((2.0 * u - 1.0) * scale)


@numba.njit(nogil=True, cache=True)
def _admission_pass(fids, counts, mode, min_count, probability, sketch, draws):
    """bool [n]: which of these distinct, unmapped fids the admission rule takes, in order —
    count-min sketch counts reaching min_count (mode 1), or seeded draws (mode 2); the sketch
    and the draw counter advance as the fids are judged."""
    taken = np.zeros(fids.shape[0], np.bool_)
    for i in range(fids.shape[0]):
        if mode == 1:
            taken[i] = sketch_add(sketch, fids[i], counts[i]) >= min_count
        else:
            draws[0] += np.uint64(1)
            taken[i] = admit_draw(fids[i], draws[0], counts[i], probability)
    return taken


@numba.njit(nogil=True, cache=True)
def _admit_kernel(
    fids,
    counts,
    now,
    slot_ptrs,
    caps,
    sizes,
    shard_bits,
    w_ptrs,
    s_ptrs,
    fid_ptrs,
    count_ptrs,
    seen_ptrs,
    ver_ptrs,
    shift,
    mask,
    dim,
    state_width,
    state_init,
    scale,
    seed,
    version,
    free,
    alloc,
    out,
):
    """Give each fid a row (the free list first), initialised from (fid, seed); the caller
    ran the admission rule and made room."""
    n_chunk = mask + 1
    for i in range(fids.shape[0]):
        fid = fids[i]
        c = counts[i]
        r = map_find(slot_ptrs, caps, shard_bits, fid)
        if r >= 0:  # a duplicate fid that this call already inserted
            cc = i32_2d(count_ptrs[r >> shift], n_chunk, 1)
            cc[r & mask, 0] = min(np.int64(cc[r & mask, 0]) + c, _INT32_MAX)
            out[i] = r
            continue
        if alloc[1] > 0:
            alloc[1] -= 1
            r = free[alloc[1]]
        else:
            r = alloc[0]
            alloc[0] += 1
        map_insert(slot_ptrs, caps, sizes, shard_bits, fid, r)
        k = r >> shift
        o = r & mask
        _init_row(f32_2d(w_ptrs[k], n_chunk, dim)[o], fid, seed, scale)
        s_row = f32_2d(s_ptrs[k], n_chunk, state_width)[o]
        for j in range(state_init.shape[0]):
            s_row[j] = state_init[j]
        i64_2d(fid_ptrs[k], n_chunk, 1)[o, 0] = fid
        i32_2d(count_ptrs[k], n_chunk, 1)[o, 0] = min(c, _INT32_MAX)
        u32_2d(seen_ptrs[k], n_chunk, 1)[o, 0] = now
        i64_2d(ver_ptrs[k], n_chunk, 1)[o, 0] = version
        out[i] = r


@numba.njit(nogil=True, cache=True)
def _release_kernel(
    rows,
    fids,
    slot_ptrs,
    caps,
    sizes,
    shard_bits,
    count_ptrs,
    shift,
    mask,
    free,
    alloc,
):
    for i in range(rows.shape[0]):
        map_delete(slot_ptrs, caps, sizes, shard_bits, fids[i])
        r = rows[i]
        i32_2d(count_ptrs[r >> shift], mask + 1, 1)[r & mask, 0] = 0
        free[alloc[1]] = r
        alloc[1] += 1
