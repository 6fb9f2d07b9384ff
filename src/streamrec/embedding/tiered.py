"""TieredTable: a DynamicTable that keeps within a DRAM budget, with the other rows on disk.

    t = build_table(TableConfig(dim=16, storage={"memory_budget": "4GiB", "path": "tiers"}))
    t.lookup(ids, now=ts)      # as DynamicTable; a row on disk is brought up (read-through)
    t.evict(now=ts)            # TTL over both tiers, then rows past the budget go down
    t.prefetch(next_ids)       # start reading the next batch's disk rows on another thread

The hot tier is the DynamicTable itself (hash map + chunked rows), holding at most
`budget_rows` rows after each `evict()`; the cold tier is a `RocksDBStore` (RocksDB). Every live id
is in exactly one tier, and a row moves whole — weights, optimizer state, count, last-seen and
row version — so the table behaves exactly as an in-memory one would (same rows, same optimizer
state, same admission and expiry, same deltas): `tests/embedding/test_tiered.py` checks this
over random operation sequences.

Moving down (write-back) happens only in `evict()` and `trim()`: a trainer calls evict after an
optimizer step, when no lookup's row indices are still waiting for their gradients. Victims are
the rows the table's `eviction` rule ranks lowest (LFU: count; LRU: last seen). Moving up
happens on a miss: in training (`insert=True`) with the occurrences counted and last-seen
stamped, as if the row had never left; in serving and evaluation (`insert=False`) unchanged,
the hot tier acting as a cache that `trim()` brings back to budget after each lookup.

Deltas: a row that changed and then went to disk must still reach the next delta. When a
`DeltaExporter` follows the table (`track_changes = True`), every demotion is logged (version,
fids) until the exporter has seen it, and `changed_since` reads those fids' rows from disk.

Checkpoints (`hot_state_dict` + `checkpoint_cold`): the hot tier's tensors, and a RocksDB
checkpoint of the cold tier whose SST files are hard links — a checkpoint writes the hot rows
and the memtable, not the whole disk tier. `state_dict()` (every row as tensors, like a
DynamicTable's) stays for small tables and generic tools; it reads the whole disk tier.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamrec.embedding.dedup import dedup
from streamrec.embedding.rows import ChunkedRows
from streamrec.embedding.storage import DiskStore, RocksDBStore
from streamrec.embedding.table import DynamicTable, _seconds
from streamrec.store.model_dir import StreamedTensors, sha256_file
from streamrec.table_config import TableConfig

# Bytes a hot row costs beyond weights and optimizer state: fid 8, count 4, last-seen 4,
# version 8, disk-copy flag 4, and a 12-byte hash-map slot at down to 50% load (a shard has
# just doubled) — 24.
_ROW_OVERHEAD_BYTES = 52
# `trim()` brings the hot tier to this share of its budget, so demotions come in batches.
_TRIM_TO = 0.9
# Reads of several tables' misses in one lookup run on these threads, side by side.
_READERS = ThreadPoolExecutor(2, thread_name_prefix="disk-tier-read")
# A hot row's `_on_disk` flag: 1 when the disk tier still holds an older copy of the row
# (it came up from there); removing the row must remove that copy too.
_SHADOWED_COPY = 1


def build_table(settings: TableConfig, name: str = "table") -> DynamicTable:
    """The table these settings describe: a TieredTable when they give `storage`."""
    if settings.storage is not None:
        return TieredTable.from_config(settings, name)
    return DynamicTable.from_config(settings, name)


class TieredTable(DynamicTable):
    """See the module docstring. `working_dir` overrides `storage.path / name` (a server
    loading a model gives each table a private directory)."""

    has_disk_tier = True

    @classmethod
    def from_config(
        cls, settings: TableConfig, name: str = "table", working_dir: str | Path | None = None
    ) -> TieredTable:
        if settings.storage is None:
            raise ValueError(f"table {name!r}: a TieredTable needs `storage` in its settings")
        table = cls.__new__(cls)
        table._build(settings.model_copy(), name)
        table._open_cold(Path(working_dir) if working_dir else Path(settings.storage.path) / name)
        return table

    def _open_cold(self, path: Path) -> None:
        _return_freed_memory()
        private = (path.parent / _PRIVATE_MARK).exists()
        self.budget_rows = self.settings.storage.memory_budget // self.row_bytes()
        self.cold = RocksDBStore(
            path, self.dim, self._state.width, expiry=self.ttl_seconds is not None, fresh=True
        )
        self._cold_rows = 0
        self._demoted: list[tuple[int, np.ndarray]] = []
        self.track_changes = False
        self.rows_promoted = 0  # rows brought up from disk, this process
        self.rows_demoted = 0  # rows written down to disk, this process
        self.ids_resolved = 0  # distinct ids per lookup …
        self.dram_misses = 0  # … that DRAM did not hold …
        self.disk_hits = 0  # … and of those, the ones found on disk
        self._prefetch_pool = ThreadPoolExecutor(1, thread_name_prefix=f"prefetch-{self.name}")
        self._prefetched: tuple[int, Future, int | None] | None = None
        self._reading: tuple[np.ndarray, Future] | None = None
        self._cold_generation = 0  # bumped by every cold write: a prefetch older is stale
        self._on_disk = _flags(self._weights)
        self._finalizer = weakref.finalize(
            self, _close, self.cold, self._prefetch_pool, path if private else None
        )

    @property
    def prefetches(self) -> bool:
        """Whether trainers should prefetch this table's next batch (`storage.prefetch`)."""
        mode = self.settings.storage.prefetch
        return mode == "on" or (mode == "auto" and (os.cpu_count() or 1) >= 4)

    def row_bytes(self) -> int:
        """DRAM bytes one hot row costs: weights, optimizer state, metadata and map slot."""
        return 4 * (self.dim + self._state.width) + _ROW_OVERHEAD_BYTES

    def _reserve(self, rows: int) -> None:
        super()._reserve(rows)
        self._on_disk.reserve(rows)

    def set_row_precision(self, precision: str) -> None:
        """Tiered rows stay fp32: the disk tier stores and moves whole fp32 rows."""
        if precision != "fp32":
            raise ValueError(
                f"table {self.name!r} has a disk tier, whose rows are fp32: fewer-bit rows "
                "are for in-memory tables"
            )

    def close(self) -> None:
        """Close the disk tier (a private working copy is removed)."""
        self._join_prefetch()
        self._finalizer()

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return len(self._map) + self._cold_rows

    @property
    def hot_rows(self) -> int:
        return len(self._map)

    @property
    def cold_rows(self) -> int:
        return self._cold_rows

    def memory_bytes(self) -> dict[str, int]:
        out = super().memory_bytes()
        out["disk"] = self.cold.disk_bytes()
        return out

    def hit_rate(self) -> float:
        """Share of the distinct ids of each lookup that DRAM held, since the process
        started (new ids count as misses; 1.0 before any lookup)."""
        asked = self.ids_resolved
        return 1.0 - self.dram_misses / asked if asked else 1.0

    # ------------------------------------------------------------------ moving up
    def lookup(
        self, ids: torch.Tensor, now: float | None = None, insert: bool = True
    ) -> torch.Tensor:
        self.ids_resolved += int(np.unique(ids.numpy()).shape[0])
        return super().lookup(ids, now, insert)

    def resolve(
        self,
        fids: np.ndarray,
        counts: np.ndarray | None = None,
        now: float | None = None,
        insert: bool = True,
    ) -> np.ndarray:
        self.ids_resolved += len(fids)
        return super().resolve(fids, counts, now, insert)

    def _fill_misses(
        self, fids: np.ndarray, counts: np.ndarray, now_s: int, insert: bool
    ) -> np.ndarray:
        found, stored = self._read_cold(fids)
        out = np.full(fids.shape[0], -1, np.int64)
        if found.any():
            at = np.flatnonzero(found)
            out[at] = self._promote(fids[at], stored[at], counts[at] if insert else None, now_s)
        if insert:
            new = np.flatnonzero(~found)
            if new.size:
                out[new] = self._admit(fids[new], counts[new], now_s)
        return out

    def _read_cold(self, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found [n], rows [n]) from disk, using what a prefetch already read."""
        self.dram_misses += fids.shape[0]
        found = np.zeros(fids.shape[0], bool)
        rows = np.zeros(fids.shape[0], self.cold.dtype)
        todo = np.arange(fids.shape[0])
        pre = self._take_prefetch()
        if pre is not None:
            pre_fids, pre_found, pre_rows = pre
            pos = np.searchsorted(pre_fids, fids)
            pos[pos == pre_fids.shape[0]] = 0
            known = pre_fids.shape[0] > 0
            hit = (pre_fids[pos] == fids) if known else np.zeros(fids.shape[0], bool)
            found[hit] = pre_found[pos[hit]]
            rows[hit] = pre_rows[pos[hit]]
            todo = np.flatnonzero(~hit)
        if todo.size:
            reading, self._reading = self._reading, None
            if reading is not None and reading[0] is fids and pre is None:
                f, r = reading[1].result()  # started by `begin_read`
            else:
                f, r = self.cold.get(fids[todo])
            found[todo] = f
            rows[todo] = r
        self.disk_hits += int(found.sum())
        return found, rows

    def begin_read(self, fids: np.ndarray) -> None:
        """Start reading these missing fids from disk on the shared reader threads; the
        `_fill_misses(fids, …)` that follows (same array) takes the result. A TableGroup starts
        every table's read before filling any, so the reads of several tables overlap (the
        store's reads run without the GIL: two cores read ~1.6× as fast as one)."""
        if self._prefetched is None:
            self._reading = (fids, _READERS.submit(self.cold.get, fids))

    def _promote(
        self, fids: np.ndarray, stored: np.ndarray, counts: np.ndarray | None, now_s: int
    ) -> np.ndarray:
        """Bring distinct stored rows into DRAM (no version bump: nothing changed) → rows."""
        n = fids.shape[0]
        top = int(self._alloc[1])
        reuse = min(top, n)
        first_new = int(self._alloc[0])
        rows = np.concatenate(
            [self._free[top - reuse : top][::-1], np.arange(first_new, first_new + n - reuse)]
        ).astype(np.int64)
        self._alloc[1] = top - reuse
        self._alloc[0] = first_new + n - reuse
        self._reserve(int(self._alloc[0]))
        self._map.insert(fids, rows)
        count = stored["count"].astype(np.int64)
        seen = stored["seen"]
        if counts is not None:  # training: this batch's occurrences, as a hot row gets them
            count = np.minimum(count + counts, 2**31 - 1)
            seen = np.full(n, now_s, np.uint32)
        self._weights.scatter(rows, stored["weights"])
        if self._state.width:
            self._state.scatter(rows, stored["state"])
        self._fid.scatter(rows, fids[:, None])
        self._count.scatter(rows, count.astype(np.int32)[:, None])
        self._seen.scatter(rows, np.asarray(seen, np.uint32)[:, None])
        self._row_version.scatter(rows, stored["version"][:, None])
        # The disk copy stays (deleting it cost a write per promotion); the hot row shadows it.
        self._on_disk.scatter(rows, np.full((n, 1), _SHADOWED_COPY, np.int32))
        self._cold_rows -= n
        self.rows_promoted += n
        return rows

    # ------------------------------------------------------------------ prefetch
    def prefetch(self, fids: np.ndarray) -> None:
        """Start reading, on another thread, the disk rows of the next batch's ids that DRAM
        does not hold; the next lookup takes them instead of reading disk (FBGEMM's prefetch
        pipeline). Only reads: a write to the disk tier before they are used discards them."""
        unique = np.unique(np.asarray(fids, np.int64))
        wanted = unique[self._map.find(unique) < 0]
        future = self._prefetch_pool.submit(lambda: (wanted, *self.cold.get(wanted)))
        self._prefetched = (self._cold_generation, future, None)

    def expect_prefetch(self, job: Future, index: int) -> None:
        """A TableGroup's prefetch thread is reading this table's misses: `job`'s result
        [index] is (fids sorted, found, rows). Nothing may change the hash map until it is
        done (`_join_prefetch`)."""
        self._prefetched = (self._cold_generation, job, index)

    def _join_prefetch(self) -> None:
        if self._prefetched is not None:
            self._prefetched[1].result()

    def _take_prefetch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        pending, self._prefetched = self._prefetched, None
        if pending is None:
            return None
        generation, future, index = pending
        result = future.result()
        if generation != self._cold_generation:
            return None
        return result if index is None else result[index]

    # ------------------------------------------------------------------ moving down
    def trim(self, target_rows: int | None = None) -> int:
        """Write the lowest-ranked hot rows down until at most `target_rows` (default 90% of
        the budget) stay in DRAM, when over budget. → rows demoted. Call only when no lookup's
        rows are waiting for gradients (trainers: after the optimizer step)."""
        self._join_prefetch()
        if target_rows is None:
            if len(self._map) <= self.budget_rows:
                return 0
            target_rows = int(self.budget_rows * _TRIM_TO)
        excess = len(self._map) - target_rows
        if excess <= 0:
            return 0
        live = self.live_rows()
        n = int(self._alloc[0])
        if self.eviction == "lfu":
            key = self._count.to_array(n)[live, 0]
        else:
            key = self._seen.to_array(n)[live, 0]
        victims = live[np.argpartition(key, excess - 1)[:excess]] if excess < live.size else live
        self._demote(np.sort(victims))
        return int(victims.size)

    def _demote(self, rows: np.ndarray) -> None:
        fids = self._fid.gather(rows)[:, 0].copy()
        record = np.zeros(rows.shape[0], self.cold.dtype)
        record["weights"] = self._weights.gather(rows)
        if self._state.width:
            record["state"] = self._state.gather(rows)
        record["count"] = self._count.gather(rows)[:, 0]
        record["seen"] = self._seen.gather(rows)[:, 0]
        record["version"] = self._row_version.gather(rows)[:, 0]
        self.cold.put(fids, record)  # on disk before it leaves DRAM: a kill loses nothing
        self._cold_generation += 1
        self._release(rows, fids)
        self._cold_rows += rows.shape[0]
        self.rows_demoted += rows.shape[0]
        if self.track_changes:
            self._demoted.append((self.version, fids))

    def _release(self, rows: np.ndarray, fids: np.ndarray) -> None:
        """Free hot rows without logging a deletion (the ids live on, on disk)."""
        self._on_disk.scatter(rows, np.zeros((rows.shape[0], 1), np.int32))
        self._free_rows(rows, fids)

    def evict(self, now: float | None = None) -> torch.Tensor:
        """TTL expiry over both tiers (the disk tier through its expiry index), then `trim()`
        to the budget. → the expired fids (LongTensor); demoted rows are not evicted."""
        expired_hot = super().evict(now)
        expired_cold = np.empty(0, np.int64)
        if self.ttl_seconds is not None:
            # A row is expired when now − seen > ttl, i.e. seen < now − ttl (whole seconds).
            cutoff = _seconds(now) - int(self.ttl_seconds)
            expired_cold = self.cold.expired(max(cutoff, 0))
            ttl = self.ttl_seconds
            expired_cold = expired_cold[self._map.find(expired_cold) < 0]  # hot: done above
            if expired_cold.size:
                _, rows = self.cold.get(expired_cold)
                expired_cold = expired_cold[_seconds(now) - rows["seen"].astype(np.int64) > ttl]
            if expired_cold.size:
                self.cold.delete(expired_cold)
                self._cold_rows -= expired_cold.size
                self._cold_generation += 1
                if expired_hot.numel():
                    self._deleted[-1] = (self.version, np.concatenate(
                        [self._deleted[-1][1], expired_cold]
                    ))
                else:
                    self.version += 1
                    self._deleted.append((self.version, expired_cold))
        self.trim()
        if expired_cold.size:
            return torch.cat([expired_hot, torch.from_numpy(expired_cold)])
        return expired_hot

    # ------------------------------------------------------------------ writes from outside
    def upsert(
        self,
        fids: np.ndarray,
        weights: np.ndarray,
        now: float | None = None,
        counts: np.ndarray | None = None,
    ) -> None:
        """As DynamicTable.upsert; a row on disk is brought up first, so it keeps its
        optimizer state and counts. Serving calls `trim()` after."""
        self._join_prefetch()
        self._bring_up(np.asarray(fids, np.int64), now)
        super().upsert(fids, weights, now, counts)

    def remove_rows(self, rows: np.ndarray) -> np.ndarray:
        """As DynamicTable.remove_rows; a removed row's disk copy goes too."""
        self._join_prefetch()
        if rows.size:
            shadowed = rows[self._on_disk.gather(rows)[:, 0] != 0]
            if shadowed.size:
                self.cold.delete(self._fid.gather(shadowed)[:, 0].copy())
                self._on_disk.scatter(shadowed, np.zeros((shadowed.size, 1), np.int32))
                self._cold_generation += 1
        return super().remove_rows(rows)

    def delete(self, fids: np.ndarray) -> np.ndarray:
        self._bring_up(np.asarray(fids, np.int64), None)
        self._cold_generation += 1  # a prefetched copy of a deleted row must not come back
        return super().delete(fids)

    def _bring_up(self, fids: np.ndarray, now: float | None) -> None:
        absent = fids[self._map.find(fids) < 0]
        if absent.size:
            unique, _, counts = dedup(absent)
            self._fill_misses(unique, counts, _seconds(now), False)

    # ------------------------------------------------------------------ deltas
    def changed_since(self, version: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Live rows changed after `version`, in either tier. From a version older than
        change tracking (`track_changes`, set by a DeltaExporter) only a full read of the disk
        tier can answer; `changed_since(0)` does that."""
        fids, weights = super().changed_since(version)
        parts_f, parts_w = [fids.numpy()], [weights.numpy()]
        if version <= 0:
            for f, rows in self._scan_cold():
                keep = rows["version"] > version
                parts_f.append(f[keep])
                parts_w.append(rows["weights"][keep])
        else:
            logged = [f for v, f in self._demoted if v > version]
            if logged:
                candidates = np.unique(np.concatenate(logged))
                found, rows = self.cold.get(candidates)
                hot = self._map.find(candidates) >= 0  # its disk copy is stale
                keep = found & ~hot & (rows["version"] > version)
                parts_f.append(candidates[keep])
                parts_w.append(rows["weights"][keep])
        return (
            torch.from_numpy(np.concatenate(parts_f)),
            torch.from_numpy(np.concatenate(parts_w).astype(np.float32, copy=False)),
        )

    def forget_deletions(self, up_to_version: int) -> None:
        super().forget_deletions(up_to_version)
        self._demoted = [(v, f) for v, f in self._demoted if v > up_to_version]

    def live_fids(self) -> np.ndarray:
        cold = [f for f, _ in self._scan_cold()]
        return np.concatenate([super().live_fids(), *cold])

    def _scan_cold(self):
        """The disk tier's rows that no hot row shadows, in batches (fids, rows)."""
        for f, rows in self.cold.scan():
            own = self._map.find(f) < 0
            yield f[own], rows[own]

    # ------------------------------------------------------------------ state
    def drop_optimizer_state(self) -> None:
        raise NotImplementedError(
            f"table {self.name!r} keeps rows on disk with their optimizer state; a serving "
            "export of a tiered table keeps it (the disk tier is read as stored)"
        )

    def hot_state_file(self) -> StreamedTensors:
        """`hot_state_dict` as a file written chunk by chunk from the row storage: a
        checkpoint of a DRAM tier of gigabytes costs one chunk of extra memory, not a copy."""
        n = int(self._alloc[0])
        fields: dict[str, Any] = {}
        for name, (store, dtype, flat) in self.row_fields().items():
            shape = (n,) if flat else (n, store.width)
            fields[name] = (dtype, shape, lambda store=store: store.pieces(n))
        fields["on_disk"] = (np.dtype(np.int32), (n,), lambda: self._on_disk.pieces(n))
        small = {**self.other_state(), "cold_rows": torch.tensor([self._cold_rows])}
        for name, tensor in small.items():
            array = tensor.numpy()
            fields[name] = (array.dtype, array.shape, lambda array=array: [array])
        return StreamedTensors(fields)

    def hot_state_dict(self) -> dict[str, torch.Tensor]:
        """The DRAM tier's `DynamicTable.state_dict()` plus the disk tier's row count; with
        `checkpoint_cold` it is the whole table."""
        state = super().state_dict()
        state["cold_rows"] = torch.tensor([self._cold_rows])
        state["on_disk"] = torch.from_numpy(self._on_disk.to_array(int(self._alloc[0]))[:, 0])
        return state

    def checkpoint_cold(self, target: str | Path) -> dict[str, str]:
        """A consistent copy of the disk tier at `target` (SSTs hard-linked) → the sha256 of
        each of its files. An SST never changes once written, so its checksum is computed
        once per file (keyed by inode, size and mtime) and a checkpoint hashes only the SSTs
        written since the previous one."""
        self.cold.checkpoint(target)
        sums: dict[str, str] = {}
        known = self.__dict__.setdefault("_sst_sums", {})
        for f in sorted(Path(target).iterdir()):
            st = f.stat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if f.suffix == ".sst" and key in known:
                sums[f.name] = known[key]
                continue
            sums[f.name] = sha256_file(f)
            if f.suffix == ".sst":
                known[key] = sums[f.name]
        return sums

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every row, hot and cold, as one DynamicTable state (reads the whole disk tier:
        for small tables and tools; checkpoints use `hot_state_dict` + `checkpoint_cold`)."""
        state = super().state_dict()
        cold_f, cold_r = [], []
        for f, rows in self._scan_cold():
            cold_f.append(f)
            cold_r.append(rows)
        if not cold_f:
            return state
        fids = np.concatenate(cold_f)
        rows = np.concatenate(cold_r)
        n, top, version, draws = (int(x) for x in state["counters"].tolist())
        state["weights"] = torch.cat([state["weights"], torch.from_numpy(rows["weights"])])
        if self._state.width:
            state["optimizer_state"] = torch.cat(
                [state["optimizer_state"], torch.from_numpy(rows["state"].copy())]
            )
        else:
            state["optimizer_state"] = torch.zeros(n + fids.shape[0], 0)
        state["fid"] = torch.cat([state["fid"], torch.from_numpy(fids)])
        state["count"] = torch.cat([state["count"], torch.from_numpy(rows["count"].copy())])
        state["last_seen"] = torch.cat(
            [state["last_seen"], torch.from_numpy(rows["seen"].astype(np.int64))]
        )
        state["row_version"] = torch.cat(
            [state["row_version"], torch.from_numpy(rows["version"].copy())]
        )
        state["counters"] = torch.tensor([n + fids.shape[0], top, version, draws])
        return state

    def load_state_dict(self, state: Any) -> None:
        """From a whole-table state (`state_dict()` of a tiered or in-memory table): the
        disk tier is emptied, every row loaded into DRAM, then `trim()` writes the excess
        down. From a `hot_state_dict`, use `load_tiered`."""
        if "on_disk" in _keys(state):
            raise ValueError(
                f"table {self.name!r}: this state holds only the DRAM tier; load it with its "
                "disk tier (`load_tiered`, which `load_model` calls)"
            )
        self._join_prefetch()
        self._empty_cold()
        super().load_state_dict(state)
        self._on_disk = _flags(self._weights)  # sized for the loaded rows: all hot, no copies
        self.trim()

    def saved_form(self) -> tuple[Any, Callable[[Path], dict[str, str]] | None]:
        """The DRAM tier streamed to its file, and the disk tier as a hard-linked folder."""
        return self.hot_state_file(), self.checkpoint_cold

    def load_saved(self, state: Any, disk_folder: Path | None) -> None:
        if disk_folder is None:  # saved by an in-memory table: every row comes in through DRAM
            self.load_state_dict(state)
        else:
            self.load_tiered(state, disk_folder)

    def load_tiered(self, hot_state: Any, cold_checkpoint: str | Path) -> None:
        """Restore a checkpoint: the DRAM tier from `hot_state`, and the disk tier as a
        working copy of `cold_checkpoint` (hard links; the checkpoint is never written)."""
        self._join_prefetch()
        expected = int(hot_state["cold_rows"].tolist()[0])
        on_disk = hot_state["on_disk"].numpy().astype(np.int32)
        if hasattr(hot_state, "slice"):  # a lazily read file: keep reading it lazily
            state: Any = _Without(hot_state, ("cold_rows", "on_disk"))
        else:
            state = {k: v for k, v in hot_state.items() if k not in ("cold_rows", "on_disk")}
        path = self.cold.path
        self.cold.close()
        RocksDBStore.materialise(cold_checkpoint, path)
        self.cold = RocksDBStore(
            path, self.dim, self._state.width, expiry=self.ttl_seconds is not None
        )
        self._finalizer.detach()
        private = path if (path.parent / _PRIVATE_MARK).exists() else None
        self._finalizer = weakref.finalize(self, _close, self.cold, self._prefetch_pool, private)
        DynamicTable.load_state_dict(self, state)
        self._on_disk = _flags(self._weights)
        self._on_disk.scatter(np.arange(on_disk.shape[0]), on_disk[:, None])
        self._cold_rows = expected
        self._demoted = []
        self._cold_generation += 1

    def _empty_cold(self) -> None:
        fids = [f for f, _ in self.cold.scan()]
        if fids:
            self.cold.delete(np.concatenate(fids))
        self._on_disk = _flags(self._weights)
        self._cold_rows = 0
        self._demoted = []
        self._cold_generation += 1


class _Without:
    """A lazily read tensor file seen without one of its names."""

    def __init__(self, inner: Any, hidden: tuple[str, ...]) -> None:
        self._inner, self._hidden = inner, hidden

    def __getitem__(self, name: str) -> Any:
        return self._inner[name]

    def keys(self) -> list[str]:
        return [k for k in self._inner.keys() if k not in self._hidden]

    def shape(self, name: str) -> Any:
        return self._inner.shape(name)

    def dtype(self, name: str) -> Any:
        return self._inner.dtype(name)

    def slice(self, name: str, lo: int, hi: int) -> Any:
        return self._inner.slice(name, lo, hi)


_M_MMAP_THRESHOLD = -3


@functools.cache
def _return_freed_memory() -> None:
    """A process holding a table to a memory budget should see freed memory go back to the
    system. glibc raises its mmap threshold after large frees (up to 32 MB), after which
    the temporaries of moving rows (tens of MB each) come from the heap and stay there as
    fragments — ~1 GB of RSS measured at 200M ids. A fixed 1 MB threshold keeps large
    temporaries in their own mappings, returned when freed."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _flags(weights: ChunkedRows) -> ChunkedRows:
    """A zeroed `_on_disk` column with room for every row `weights` has room for."""
    flags = ChunkedRows(1, np.int32, weights.chunk_rows)
    flags.reserve(max(1, weights.capacity))
    return flags


def _keys(state: Any) -> list[str]:
    return list(state.keys()) if hasattr(state, "keys") else list(state.names())


def _close(cold: DiskStore, pool: ThreadPoolExecutor, private: Path | None) -> None:
    pool.shutdown(wait=True)
    cold.close()
    if private is not None:
        shutil.rmtree(private, ignore_errors=True)
        leftovers = {p.name for p in private.parent.iterdir()}
        if leftovers <= {_PRIVATE_MARK}:  # the last table of a private folder: remove it
            shutil.rmtree(private.parent, ignore_errors=True)


_PRIVATE_MARK = ".streamrec-private"


def private_dir(near: str | Path) -> Path:
    """A fresh directory in `near` (same file system: hard links work) for the working copies
    of a loaded model's disk tiers, named after this process; tables opened in it remove their
    folder when closed. Folders that killed processes left behind are removed here."""
    base = Path(near)
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob(".tiers-*-*"):
        pid = old.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f".tiers-{os.getpid()}-", dir=base))
    (path / _PRIVATE_MARK).touch()
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
