"""TableGroup: several DynamicTables of one dim and one row optimizer, served by single kernels.

A Criteo model has 26 tables. Calling each table in turn costs ~26 × (a few numba and torch
calls) of Python overhead per batch — more than the lookups themselves. A group does the work of
all its tables in four calls per batch, the way TorchRec's fused TBE does:

  1. `dedup_resolve`  one pass over all fids: de-duplicate per table (a (table, fid) hash),
                      probe each table's hash map, count occurrences, stamp last-seen;
  2. admission of the misses, per table (rare once a model is warm);
  3. `gather`         the unique rows of all tables → W [U, dim];
  4. in backward, `optimizers.apply_rows` updates all tables' unique rows in place.

The kernels see each table's storage through its address arrays, stacked into [T, …] arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import torch

from streamrec.embedding.dedup import dedup_range
from streamrec.embedding.hashmap import map_find
from streamrec.embedding.optimizers import apply_rows
from streamrec.embedding.table import DynamicTable, _seconds
from streamrec.embedding.views import f32_2d, i32_2d, u32_2d

_INT32_MAX = 2**31 - 1
_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamrec-rows")


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


class TableGroup:
    def __init__(self, tables: Sequence[DynamicTable]) -> None:
        if not tables:
            raise ValueError("a TableGroup needs at least one table")
        first = tables[0]
        for t in tables:
            if (t.dim, t.optimizer.name, t._map.shard_bits, t._weights.chunk_rows) != (
                first.dim,
                first.optimizer.name,
                first._map.shard_bits,
                first._weights.chunk_rows,
            ):
                raise ValueError(
                    "tables in a group need one dim, optimizer, shard_bits and chunk_rows"
                )
        self.tables = list(tables)
        self.dim = first.dim
        self._hp = np.stack([t.optimizer.hyperparameters() for t in tables])
        self._layout_key: tuple[int, ...] | None = None
        self._layout: dict[str, np.ndarray] = {}

    def layout(self) -> dict[str, np.ndarray]:
        """Every table's storage addresses stacked [T, …]; rebuilt only after storage moved."""
        key = tuple(t.layout_generation for t in self.tables)
        if key != self._layout_key:
            ts = self.tables
            self._layout = {
                "keys": _stack([t._map.key_ptrs for t in ts]),
                "rows": _stack([t._map.row_ptrs for t in ts]),
                "caps": _stack([t._map.caps for t in ts]),
                "weights": _stack([t._weights.ptrs for t in ts]),
                "state": _stack([t._state.ptrs for t in ts]),
                "count": _stack([t._count.ptrs for t in ts]),
                "seen": _stack([t._seen.ptrs for t in ts]),
                "version": _stack([t._row_version.ptrs for t in ts]),
            }
            self._layout_key = key
        return self._layout

    def resolve(
        self, fids: np.ndarray, segments: np.ndarray, now: float | None, insert: bool
    ) -> Resolved:
        """fids [n] laid out table after table: table i's ids are fids[segments[i]:segments[i+1]].
        With insert=True counts and last-seen are updated and misses go through admission."""
        now_s = _seconds(now)
        lay = self.layout()
        first = self.tables[0]
        tabs, ufids, rows, counts, inverse = _dedup_resolve(
            fids,
            segments,
            lay["keys"],
            lay["rows"],
            lay["caps"],
            first._map.shard_bits,
            lay["count"],
            lay["seen"],
            first._count.shift,
            first._count.mask,
            now_s,
            insert,
        )
        if insert:
            missing = rows < 0
            if missing.any():
                for i in np.unique(tabs[missing]):
                    at = np.flatnonzero(missing & (tabs == i))
                    rows[at] = self.tables[i]._admit(ufids[at], counts[at], now_s)
        return Resolved(tabs, ufids, rows, inverse)

    def gather(self, resolved: Resolved) -> torch.Tensor:
        """FloatTensor [U, dim]: the rows of the unique ids (zeros where not stored)."""
        out = torch.empty(resolved.rows.shape[0], self.dim)
        w = self.tables[0]._weights
        _gather(
            resolved.tables,
            resolved.rows,
            self.layout()["weights"],
            w.shift,
            w.mask,
            self.dim,
            out.numpy(),
        )
        return out

    def apply_gradients(self, resolved: Resolved, grads: torch.Tensor) -> None:
        """One row-optimizer step for every stored unique row; grads [U, dim]."""
        stored = np.flatnonzero(resolved.rows >= 0)
        if stored.size == 0:
            return
        g = grads.detach().cpu().float().numpy()
        g = np.ascontiguousarray(g[stored] if stored.size < g.shape[0] else g)
        for t in self.tables:
            t.version += 1
        first = self.tables[0]
        lay = self.layout()
        versions = np.array([t.version for t in self.tables], np.int64)
        tabs, rows = resolved.tables[stored], resolved.rows[stored]

        def run(part: slice) -> None:
            apply_rows(
                first.optimizer.code,
                self._hp,
                tabs[part],
                rows[part],
                g[part],
                lay["weights"],
                lay["state"],
                lay["version"],
                versions,
                self.dim,
                first._state.width,
                first._weights.shift,
                first._weights.mask,
            )

        # The kernel is nogil and the rows are distinct: two threads split them safely.
        half = rows.shape[0] // 2
        if half >= 4096:
            future = _POOL.submit(run, slice(half, None))
            run(slice(0, half))
            future.result()
        else:
            run(slice(None))


@numba.njit(nogil=True, parallel=True, cache=True)
def _dedup_resolve(
    fids,
    segments,
    key_ptrs,
    map_row_ptrs,
    caps,
    shard_bits,
    count_ptrs,  # noqa: ANN001, ANN202, PLR0913
    seen_ptrs,
    shift,
    mask,
    now,
    insert,
):
    n = fids.shape[0]
    n_tables = segments.shape[0] - 1
    local_fid = np.empty(n, np.int64)  # table t's unique fids at segments[t] + k
    local_row = np.empty(n, np.int64)
    local_count = np.zeros(n, np.int64)
    local_inverse = np.empty(n, np.int64)
    n_unique = np.zeros(n_tables, np.int64)
    for t in numba.prange(n_tables):  # tables are independent: one per thread
        lo, hi = segments[t], segments[t + 1]
        u = dedup_range(fids, lo, hi, local_fid, local_inverse, local_count)
        for k in range(u):
            local_row[lo + k] = map_find(
                key_ptrs[t], map_row_ptrs[t], caps[t], shard_bits, local_fid[lo + k]
            )
        n_unique[t] = u
    base = np.zeros(n_tables + 1, np.int64)
    for t in range(n_tables):
        base[t + 1] = base[t] + n_unique[t]
    total = base[n_tables]
    tabs = np.empty(total, np.int64)
    ufids = np.empty(total, np.int64)
    rows = np.empty(total, np.int64)
    counts = np.empty(total, np.int64)
    inverse = np.empty(n, np.int64)
    for t in range(n_tables):
        lo = segments[t]
        for k in range(n_unique[t]):
            g = base[t] + k
            tabs[g] = t
            ufids[g] = local_fid[lo + k]
            rows[g] = local_row[lo + k]
            counts[g] = local_count[lo + k]
        for i in range(lo, segments[t + 1]):
            inverse[i] = base[t] + local_inverse[i]
    if insert:  # serial: stores through carray views must not run under prange
        n_chunk = mask + 1
        for g in range(total):
            r = rows[g]
            if r >= 0:
                t = tabs[g]
                c = i32_2d(count_ptrs[t, r >> shift], n_chunk, 1)
                o = r & mask
                c[o, 0] = min(np.int64(c[o, 0]) + counts[g], _INT32_MAX)
                u32_2d(seen_ptrs[t, r >> shift], n_chunk, 1)[o, 0] = now
    return tabs, ufids, rows, counts, inverse


@numba.njit(nogil=True, parallel=True, cache=True)
def _gather(tabs, rows, w_ptrs, shift, mask, dim, out):  # noqa: ANN001, ANN202
    n_chunk = mask + 1
    for i in numba.prange(rows.shape[0]):
        r = rows[i]
        if r < 0:
            for j in range(dim):
                out[i, j] = 0.0
        else:
            src = f32_2d(w_ptrs[tabs[i], r >> shift], n_chunk, dim)
            o = r & mask
            for j in range(dim):
                out[i, j] = src[o, j]
