"""TableGroup: several DynamicTables of one dim and one row optimizer, served by single kernels.

A Criteo model has 26 tables. Calling each table in turn costs ~26 × (a few numba and torch
calls) of Python overhead per batch — more than the lookups themselves. A group does the work of
all its tables in four calls per batch, the way TorchRec's fused TBE does:

  1. `dedup_resolve`  one pass over all fids: de-duplicate per table (a (table, fid) hash),
                      probe each table's hash map, count occurrences, stamp last-seen;
  2. admission of the misses, per table (rare once a model is warm);
  3. `gather`         the unique rows of all tables → W [U, dim];
  4. backward leaves the rows' gradients beside the group; the optimizer step
     (`SparseOptimizer.step`) runs `optimizers.apply_rows` over all tables' unique rows.

The kernels see each table's storage through its address arrays, stacked into [T, …] arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import torch

from streamrec.embedding.dedup import dedup_range
from streamrec.embedding.hashmap import map_find, map_prefetch
from streamrec.embedding.lookup import RowLookup
from streamrec.embedding.optimizers import apply_rows
from streamrec.embedding.quantized_rows import gather_quantized
from streamrec.embedding.table import DynamicTable, StorageLayout, _seconds
from streamrec.embedding.views import (
    PREFETCH_AHEAD,
    f32_2d,
    i32_2d,
    prefetch,
    prefetch_span,
    storage_clock,
    u32_2d,
)

_INT32_MAX = 2**31 - 1


@dataclass
class Resolved:
    """The unique ids of one batch across a group's tables.

    tables [U] int64    which table (index in the group) each unique id belongs to
    fids   [U] int64    the unique fids
    rows   [U] int64    their rows (−1: not stored, reads zeros, gets no update)
    inverse [n] int64   position in the unique list of every input id
    """

    tables: np.ndarray
    fids: np.ndarray
    rows: np.ndarray
    inverse: np.ndarray


def _stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    width = max(a.shape[0] for a in arrays)
    out = np.zeros((len(arrays), width), np.int64)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return out


class TableGroup(RowLookup):
    def __init__(self, tables: Sequence[DynamicTable]) -> None:
        if not tables:
            raise ValueError("a TableGroup needs at least one table")
        first = tables[0]
        for t in tables:
            if t.settings.group_key() != first.settings.group_key():
                raise ValueError(
                    "tables in a group need one dim, optimizer, shard_bits and chunk_rows"
                )
        self.tables = list(tables)
        self.has_disk_tier = any(t.has_disk_tier for t in tables)
        self._prefetch_pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self.dim = first.dim
        self._hp = np.stack([t.optimizer.hyperparameters() for t in tables])
        self._layout_clock = -1
        self.ids_looked_up = 0  # out of training: ids looked up …
        self.ids_unknown = 0  # … and those without a row
        self._layout: dict[str, np.ndarray] = {}
        self._first: StorageLayout | None = None
        self._precision = "fp32"  # the tables' row precision (set by layout(); or "mixed")

    def layout(self) -> dict[str, np.ndarray]:
        """Every table's storage addresses stacked [T, …]; rebuilt only after storage moved."""
        clock = storage_clock()
        if clock != self._layout_clock:
            ts = [t.storage_layout() for t in self.tables]
            self._layout = {
                "slots": _stack([t.slot_ptrs for t in ts]),
                "caps": _stack([t.caps for t in ts]),
                "weights": _stack([t.weights for t in ts]),
                "state": _stack([t.state for t in ts]),
                "count": _stack([t.count for t in ts]),
                "seen": _stack([t.seen for t in ts]),
                "version": _stack([t.version for t in ts]),
            }
            precisions = {t.row_precision for t in self.tables}
            self._precision = precisions.pop() if len(precisions) == 1 else "mixed"
            self._first = ts[0]  # shard bits, chunk size and state width: alike in a group
            self._layout_clock = clock
        return self._layout

    def resolve(
        self, fids: np.ndarray, segments: np.ndarray, now: float | None, insert: bool
    ) -> Resolved:
        """fids [n] laid out table after table: table i's ids are fids[segments[i]:segments[i+1]].
        With insert=True counts and last-seen are updated and misses go through admission."""
        now_s = _seconds(now)
        self.wait_prefetch()
        lay = self.layout()
        if insert and self._precision != "fp32":
            for table in self.tables:
                table._require_trainable()
        first = self._first
        assert first is not None  # set by layout()
        tabs, ufids, rows, counts, inverse = _dedup_resolve(
            fids,
            segments,
            lay["slots"],
            lay["caps"],
            first.shard_bits,
            lay["count"],
            lay["seen"],
            first.shift,
            first.mask,
            now_s,
            insert,
        )
        if self.has_disk_tier:  # hit-rate denominators: distinct ids per table
            per_table = np.bincount(tabs, minlength=len(self.tables))
            for i, table in enumerate(self.tables):
                if table.has_disk_tier:
                    table.ids_resolved += int(per_table[i])
        if insert or self.has_disk_tier:
            missing = rows < 0
            if missing.any():
                todo = []
                for i in np.unique(tabs[missing]):
                    at = np.flatnonzero(missing & (tabs == i))
                    todo.append((i, at, ufids[at]))
                for i, _, wanted in todo:  # disk reads of all tables at once
                    if self.tables[i].has_disk_tier:
                        self.tables[i].begin_read(wanted)
                for i, at, wanted in todo:
                    rows[at] = self.tables[i]._fill_misses(wanted, counts[at], now_s, insert)
        return Resolved(tabs, ufids, rows, inverse)

    def prefetch(self, fids: np.ndarray, segments: np.ndarray) -> None:
        """Tiered tables: read from disk, on a background thread, the rows of these ids (laid
        out as for `lookup`) that DRAM does not hold, while this step computes. The thread
        only reads (it probes the hash maps and the disk tiers); `resolve` and `wait_prefetch`
        wait for it before anything changes a map."""
        tiered = [i for i, t in enumerate(self.tables) if t.has_disk_tier]
        if not tiered:
            return
        self.wait_prefetch()
        if self._prefetch_pool is None:
            self._prefetch_pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        lay = self.layout()
        job = self._prefetch_pool.submit(
            _read_misses, fids, segments, lay["slots"], lay["caps"],
            self.tables[0]._map.shard_bits, {i: self.tables[i].cold for i in tiered},
        )
        self._pending = job
        for i in tiered:
            self.tables[i].expect_prefetch(job, i)

    def wait_prefetch(self) -> None:
        """Return once no prefetch is reading the tables (before anything changes a map)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def lookup(
        self, fids: np.ndarray, segments: np.ndarray, now: float | None, insert: bool
    ) -> tuple[torch.Tensor, np.ndarray, Resolved]:
        """`RowLookup.lookup` (lookup.py) from this process's tables. Out of training, counts
        the ids looked up and those with no row (`ids_looked_up`, `ids_unknown`: the
        server's unknown-id rate)."""
        resolved = self.resolve(fids, segments, now, insert)
        if not insert:
            self.ids_looked_up += resolved.inverse.shape[0]
            self.ids_unknown += int(np.count_nonzero(resolved.rows[resolved.inverse] < 0))
        weights = self.gather(resolved)
        if not insert and self.has_disk_tier:
            # Serving and evaluation: rows read up from disk made DRAM a cache; bring it back
            # to budget now that this batch's rows are copied out (no gradient will come).
            for table in self.tables:
                if table.has_disk_tier:
                    table.trim()
        return weights, resolved.inverse, resolved

    def flush(self) -> None:
        """Nothing is ever in flight: gradients are applied when the step hands them over."""

    def merge(
        self, handles: list[Resolved], grads: list[torch.Tensor]
    ) -> tuple[Resolved, torch.Tensor]:
        """Several lookups' gradients (accumulated micro-batches) as one: each stored row once,
        with its gradients summed. → (a handle for `apply_gradients`, grads [U', dim])."""
        tables = np.concatenate([h.tables for h in handles])
        rows = np.concatenate([h.rows for h in handles])
        grad = torch.cat([g.detach().cpu().float() for g in grads])
        stored = np.flatnonzero(rows >= 0)
        key = (tables[stored] << 32) | rows[stored]  # rows < 2^31 per table
        unique, inverse = np.unique(key, return_inverse=True)
        summed = torch.zeros(unique.shape[0], grad.shape[1])
        summed.index_add_(0, torch.from_numpy(inverse), grad[torch.from_numpy(stored)])
        merged = Resolved(unique >> 32, np.empty(0, np.int64), unique & 0xFFFFFFFF, inverse)
        return merged, summed

    def gather(self, resolved: Resolved) -> torch.Tensor:
        """FloatTensor [U, dim]: the rows of the unique ids (zeros where not stored); a served
        copy's fewer-bit rows are de-quantised here, only the rows asked for."""
        out = torch.empty(resolved.rows.shape[0], self.dim)
        lay = self.layout()
        w = self.tables[0]._weights
        if self._precision == "mixed":
            for i, table in enumerate(self.tables):
                at = np.flatnonzero(resolved.tables == i)
                out[torch.from_numpy(at)] = torch.from_numpy(table.gather_rows(resolved.rows[at]))
            return out
        if self._precision != "fp32":
            gather_quantized(
                self._precision, resolved.tables, resolved.rows, lay["weights"], w.shift,
                w.mask, self.dim, out.numpy(),
            )
            return out
        _gather(
            resolved.tables,
            resolved.rows,
            lay["weights"],
            w.shift,
            w.mask,
            self.dim,
            out.numpy(),
        )
        return out

    def apply_gradients(self, resolved: Resolved, grads: torch.Tensor) -> None:
        """One row-optimizer step for every stored unique row; grads [U, dim]."""
        if self.layout() and self._precision != "fp32":
            for table in self.tables:
                table._require_trainable()
        stored = np.flatnonzero(resolved.rows >= 0)
        if stored.size == 0:
            return
        g = grads.detach().cpu().float().numpy()
        tabs, rows = resolved.tables, resolved.rows
        if stored.size < rows.shape[0]:
            g, tabs, rows = g[stored], tabs[stored], rows[stored]
        g = np.ascontiguousarray(g)
        for t in self.tables:
            t.version += 1
        lay = self.layout()
        first = self._first
        assert first is not None  # set by layout()
        versions = np.array([t.version for t in self.tables], np.int64)
        apply_rows(  # parallel inside; rows are distinct per table
            self.tables[0].optimizer.code,
            self._hp,
            tabs,
            rows,
            g,
            lay["weights"],
            lay["state"],
            lay["version"],
            versions,
            self.dim,
            first.state_width,
            first.shift,
            first.mask,
        )


@numba.njit(nogil=True, parallel=True, cache=True)
def _dedup_resolve(
    fids,
    segments,
    slot_ptrs,
    caps,
    shard_bits,
    count_ptrs,
    seen_ptrs,
    shift,
    mask,
    now,
    insert,
):
    """Tables are independent, so each thread takes whole tables: it de-duplicates their ids,
    probes their maps and (insert=True) adds the occurrence counts and last-seen time — no two
    threads ever write one table's rows. → (tables, fids, rows, counts [U], inverse [n])."""
    n = fids.shape[0]
    n_tables = segments.shape[0] - 1
    local_fid = np.empty(n, np.int64)  # table t's unique fids at segments[t] + k
    local_row = np.empty(n, np.int64)
    local_count = np.empty(n, np.int64)
    local_inverse = np.empty(n, np.int64)
    n_unique = np.zeros(n_tables, np.int64)
    for t in numba.prange(n_tables):
        # fmt: off
        n_unique[t] = _resolve_table(fids, segments[t], segments[t + 1], slot_ptrs[t], caps[t],
                                     shard_bits, count_ptrs[t], seen_ptrs[t], shift, mask, now,
                                     insert, local_fid, local_row, local_count, local_inverse)
        # fmt: on
    base = np.zeros(n_tables + 1, np.int64)
    for t in range(n_tables):
        base[t + 1] = base[t] + n_unique[t]
    total = base[n_tables]
    tabs = np.empty(total, np.int64)
    ufids = np.empty(total, np.int64)
    rows = np.empty(total, np.int64)
    counts = np.empty(total, np.int64)
    inverse = np.empty(n, np.int64)
    for t in numba.prange(n_tables):
        lo = segments[t]
        for k in range(n_unique[t]):
            g = base[t] + k
            tabs[g] = t
            ufids[g] = local_fid[lo + k]
            rows[g] = local_row[lo + k]
            counts[g] = local_count[lo + k]
        for i in range(lo, segments[t + 1]):
            inverse[i] = base[t] + local_inverse[i]
    return tabs, ufids, rows, counts, inverse


@numba.njit(nogil=True, inline="never", cache=True)
# fmt: off
def _resolve_table(fids, lo, hi, slot_ptrs, caps, shard_bits, count_ptrs, seen_ptrs, shift, mask,
                   now, insert, local_fid, local_row, local_count, local_inverse):
    # fmt: on
    """One table's part of `_dedup_resolve` → its number of unique fids. Never inlined: the
    count / last-seen stores go through `carray` views, which numba's parfor pass would drop
    as dead code inside a prange body, but cannot see into a call."""
    u = dedup_range(fids, lo, hi, local_fid, local_inverse, local_count)
    n_chunk = mask + 1
    end = lo + u
    for k in range(lo, end):
        if k + PREFETCH_AHEAD < end:
            map_prefetch(slot_ptrs, caps, shard_bits, local_fid[k + PREFETCH_AHEAD])
        local_row[k] = map_find(slot_ptrs, caps, shard_bits, local_fid[k])
    if not insert:
        return u
    for k in range(lo, end):  # a second loop: every row address is known, loads overlap
        if k + PREFETCH_AHEAD < end and local_row[k + PREFETCH_AHEAD] >= 0:
            ra = local_row[k + PREFETCH_AHEAD]
            prefetch(count_ptrs[ra >> shift] + (ra & mask) * 4)
            prefetch(seen_ptrs[ra >> shift] + (ra & mask) * 4)
        r = local_row[k]
        if r >= 0:
            c = i32_2d(count_ptrs[r >> shift], n_chunk, 1)
            o = r & mask
            c[o, 0] = min(np.int64(c[o, 0]) + local_count[k], _INT32_MAX)
            u32_2d(seen_ptrs[r >> shift], n_chunk, 1)[o, 0] = now
    return u


@numba.njit(nogil=True, parallel=True, cache=True)
def _gather(tabs, rows, w_ptrs, shift, mask, dim, out):
    n_chunk = mask + 1
    n = rows.shape[0]
    for i in numba.prange(n):
        if i + PREFETCH_AHEAD < n and rows[i + PREFETCH_AHEAD] >= 0:
            ra = rows[i + PREFETCH_AHEAD]
            prefetch_span(
                w_ptrs[tabs[i + PREFETCH_AHEAD], ra >> shift] + (ra & mask) * dim * 4, dim * 4
            )
        r = rows[i]
        if r < 0:
            for j in range(dim):
                out[i, j] = 0.0
        else:
            src = f32_2d(w_ptrs[tabs[i], r >> shift], n_chunk, dim)
            o = r & mask
            for j in range(dim):
                out[i, j] = src[o, j]


def _read_misses(fids, segments, slot_ptrs, caps, shard_bits, stores: dict[int, Any]) -> dict:
    """The prefetch thread's work: per tiered table i, its distinct ids DRAM lacks and what
    its disk tier holds for them → {i: (fids sorted [k], found [k], rows [k])}."""
    out = {}
    for i, store in stores.items():
        missing = np.unique(_misses(fids, segments[i], segments[i + 1], slot_ptrs[i], caps[i],
                                    shard_bits))
        found, rows = store.get(missing)
        out[i] = (missing, found, rows)
    return out


@numba.njit(nogil=True, cache=True)
def _misses(fids, lo, hi, slot_ptrs, caps, shard_bits):
    """fids[lo:hi] that the map does not hold (with repeats). Serial, without the GIL: it
    runs beside the training step on the prefetch thread."""
    out = np.empty(hi - lo, np.int64)
    k = 0
    for i in range(lo, hi):
        if map_find(slot_ptrs, caps, shard_bits, fids[i]) < 0:
            out[k] = fids[i]
            k += 1
    return out[:k]
