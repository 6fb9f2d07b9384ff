"""RocksDBStore: the disk tier of a `TieredTable` — fid → one packed row, in RocksDB.

Why RocksDB (`benchmarks/cold_store.py`, docs/architecture.md): of the three stores measured on
this box for 76-byte rows, RocksDB keeps ~90 bytes on disk per row and no memory per row;
LMDB's B+tree took ~280 bytes per row under random inserts (half-full pages) and reads through
mmap, whose pages count in the process's RSS; our own append-only log was fastest but needs an
in-memory fid → offset index of ~25 bytes per row, 5 GB at 200M ids — the memory the tier
exists to save.

A row (the `row_dtype` record, little-endian, packed):

    weights  float32 [dim]        the embedding
    state    float32 [width]      the row optimizer's state (width 0 for SGD)
    count    int32                occurrences (LFU); never 0 for a stored row
    seen     uint32               last-seen event time, seconds
    version  int64                the table version that last changed the row (deltas)

Keys are the fid as 8 big-endian bytes. With a TTL, a second column family `expiry` holds
(seen: 4 big-endian bytes, fid: 8) for every row written, so expiring the rows unseen since
time T is a range scan from the start to T — never a scan of the whole store. An expiry entry
whose row has since been promoted or rewritten with a newer `seen` is stale and skipped.

Every live id of a tiered table is in exactly one tier: a promoted row is deleted here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rocksdict

_BATCH_ITER = 65_536


def row_dtype(dim: int, state_width: int) -> np.dtype:
    fields = [("weights", "<f4", (dim,))]
    if state_width:
        fields.append(("state", "<f4", (state_width,)))
    fields += [("count", "<i4"), ("seen", "<u4"), ("version", "<i8")]
    return np.dtype(fields)


def fid_keys(fids: np.ndarray) -> list[bytes]:
    """int64 [n] → n 8-byte big-endian keys (one C-level conversion, no Python loop)."""
    return np.ascontiguousarray(fids, ">i8").view("V8").tolist()


def _expiry_keys(seen: np.ndarray, fids: np.ndarray) -> list[bytes]:
    packed = np.empty(fids.shape[0], np.dtype([("seen", ">u4"), ("fid", ">i8")]))
    packed["seen"] = seen
    packed["fid"] = fids
    return packed.view("V12").tolist()


# RocksDB's memory, shared by every store of the process (26 tables are 26 stores): one block
# cache (data blocks, index and bloom filters) and one cap on memtables. Both are bounded, so a
# tiered model's memory is its tables' budgets plus these, whatever the size of the disk tier.
BLOCK_CACHE_BYTES = 256 << 20
MEMTABLE_BYTES = 256 << 20
_shared: dict[str, object] = {}


def _memory() -> tuple[rocksdict.Cache, rocksdict.WriteBufferManager]:
    if not _shared:
        _shared["cache"] = rocksdict.Cache(BLOCK_CACHE_BYTES)
        _shared["memtables"] = rocksdict.WriteBufferManager(MEMTABLE_BYTES, False)
    return _shared["cache"], _shared["memtables"]  # type: ignore[return-value]


def _options(create: bool) -> rocksdict.Options:
    cache, memtables = _memory()
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_bloom_filter(10, False)  # ~1% false positives: a new id rarely costs a disk read
    table.set_cache_index_and_filter_blocks(True)  # their memory counts in the cache's bound
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    opts = rocksdict.Options(raw_mode=True)
    opts.set_block_based_table_factory(table)
    opts.set_write_buffer_manager(memtables)
    opts.set_write_buffer_size(32 << 20)
    opts.set_max_write_buffer_number(2)
    opts.create_if_missing(create)
    opts.create_missing_column_families(True)
    # Embeddings are noise to a compressor; metadata is 16 of 84 bytes. Measured: LZ4 saved
    # < 3% on disk and cost reads.
    opts.set_compression_type(rocksdict.DBCompressionType.none())
    opts.set_max_open_files(512)
    opts.set_paranoid_checks(True)  # block checksums are verified on every read
    opts.set_level_compaction_dynamic_level_bytes(True)  # ~1.1× space amplification
    return opts


class RocksDBStore:
    """fid-keyed packed rows on disk (see the module docstring). Not thread-safe for writes;
    `get` may run on a prefetch thread while nothing writes."""

    def __init__(
        self, path: str | Path, dim: int, state_width: int, *, expiry: bool, fresh: bool = False
    ) -> None:
        """Open the store at `path`. fresh=True empties it first: a table's working directory
        is scratch (its checkpoints are the durable copies), and rows left there by an earlier
        process must not come back as live ids."""
        self.path = Path(path)
        self.dtype = row_dtype(dim, state_width)
        self.row_bytes = self.dtype.itemsize
        self.expiry = expiry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()
        if fresh and any(self.path.glob("*.sst")) or fresh and any(self.path.glob("*.log")):
            self._db.close()
            shutil.rmtree(self.path)
            self._db = self._open()
        self._expiry = self._db.get_column_family("expiry") if expiry else None
        self._missing = bytes(self.row_bytes)  # count 0: "not stored"
        # No write-ahead log: the working folder is scratch — after a crash a table restarts
        # from its last checkpoint, which `checkpoint` makes consistent by flushing first.
        self._write = rocksdict.WriteOptions()
        self._write.disable_wal = True
        self._write.memtable_insert_hint_per_batch = True

    def _open(self) -> rocksdict.Rdict:
        columns = {"expiry": _options(True)} if self.expiry else None
        try:
            return rocksdict.Rdict(str(self.path), _options(True), column_families=columns)
        except Exception as e:  # rocksdict raises plain Exceptions with RocksDB's message
            raise OSError(
                f"{self.path}: cannot open the table's disk tier ({e}). Another process may "
                "hold it (a trainer and a server each need their own `storage.path`), or the "
                "directory is not a RocksDB store."
            ) from None


    # ------------------------------------------------------------------ rows
    def get(self, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """fids int64 [n] → (found bool [n], rows `row_dtype` [n]; zeros where not found)."""
        if fids.shape[0] == 0:
            return np.zeros(0, bool), np.zeros(0, self.dtype)
        order = np.argsort(fids.view(np.uint64))  # sorted keys: ~2× faster (measured)
        got = self._db.get(fid_keys(fids[order]), default=self._missing)
        rows = np.empty(fids.shape[0], self.dtype)
        rows[order] = np.frombuffer(b"".join(got), self.dtype)
        return rows["count"] != 0, rows

    def put(self, fids: np.ndarray, rows: np.ndarray) -> None:
        """Write (insert or replace) rows `row_dtype` [n] under fids [n] in one atomic batch."""
        if fids.shape[0] == 0:
            return
        # In key order: a memtable takes sorted keys ~17× faster than random ones (measured,
        # 600k rows: 0.08 s vs 1.4 s).
        order = np.argsort(fids.view(np.uint64), kind="stable")
        fids, rows = fids[order], rows[order]
        batch = rocksdict.WriteBatch(raw_mode=True)
        values = np.ascontiguousarray(rows, self.dtype).view(f"V{self.row_bytes}").tolist()
        for key, value in zip(fid_keys(fids), values, strict=True):
            batch.put(key, value)
        if self._expiry is not None:
            batch.set_default_column_family(self._db.get_column_family_handle("expiry"))
            by_time = np.lexsort((fids.view(np.uint64), rows["seen"]))
            for key in _expiry_keys(rows["seen"][by_time], fids[by_time]):
                batch.put(key, b"")
        self._db.write(batch, self._write)

    def delete(self, fids: np.ndarray) -> None:
        """Remove these fids (absent ones are ignored); their expiry entries go stale."""
        if fids.shape[0] == 0:
            return
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key in fid_keys(np.sort(fids.view(np.uint64)).view(np.int64)):
            batch.delete(key)
        self._db.write(batch, self._write)

    def expired(self, before: int) -> np.ndarray:
        """Fids whose stored row was last seen before `before` (event seconds), and drop the
        expiry entries scanned (stale ones included). The rows themselves stay until
        `delete`."""
        if self._expiry is None:
            return np.empty(0, np.int64)
        end = int(before).to_bytes(4, "big")
        it = self._expiry.iter()
        it.seek_to_first()
        keys: list[bytes] = []
        while it.valid():
            key = it.key()
            if key[:4] >= end:
                break
            keys.append(key)
            it.next()
        del it
        if not keys:
            return np.empty(0, np.int64)
        packed = np.frombuffer(b"".join(keys), np.dtype([("seen", ">u4"), ("fid", ">i8")]))
        fids = packed["fid"].astype(np.int64)
        found, rows = self.get(fids)
        # A fid's entry is current only if its stored row still carries that `seen`.
        current = found & (rows["seen"] == packed["seen"])
        self._expiry.delete_range(keys[0], keys[-1] + b"\x00")
        return np.unique(fids[current])

    def scan(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored row, in fid-key order, in batches: (fids int64 [k], rows [k])."""
        it = self._db.iter()
        it.seek_to_first()
        keys: list[bytes] = []
        values: list[bytes] = []
        while it.valid():
            keys.append(it.key())
            values.append(it.value())
            if len(keys) == _BATCH_ITER:
                yield self._decode(keys, values)
                keys, values = [], []
            it.next()
        del it
        if keys:
            yield self._decode(keys, values)

    def _decode(self, keys: list[bytes], values: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        fids = np.frombuffer(b"".join(keys), ">i8").astype(np.int64)
        return fids, np.frombuffer(b"".join(values), self.dtype).copy()

    # ------------------------------------------------------------------ files
    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def checkpoint(self, target: str | Path) -> None:
        """A consistent copy of the store at `target` (must not exist): SST files are
        hard-linked, not copied, so a checkpoint costs the memtable's flush plus small files,
        whatever the store's size."""
        self._db.flush()
        rocksdict.Checkpoint(self._db).create_checkpoint(str(target))

    def close(self) -> None:
        if getattr(self, "_db", None) is not None:
            self._expiry = None
            self._db.close()
            self._db = None

    @staticmethod
    def materialise(source: str | Path, target: str | Path) -> None:
        """Make `target` a private working copy of the checkpoint at `source`: SST files are
        immutable in RocksDB and hard-linked (copied across file systems); the rest (MANIFEST,
        OPTIONS, CURRENT, logs), which a writer rewrites, is copied. The checkpoint itself is
        never opened for writing."""
        source, target = Path(source), Path(target)
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for f in source.iterdir():
            if f.suffix == ".sst":
                try:
                    os.link(f, target / f.name)
                    continue
                except OSError:
                    pass
            shutil.copy2(f, target / f.name)
