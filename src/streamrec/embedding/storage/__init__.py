"""Disk tiers of tables larger than memory: one file per backend behind one small interface.

`DiskStore` is what a `TieredTable` (embedding/tiered.py) needs from the store below DRAM:
batched reads and writes of packed rows keyed by fid, expiry by last-seen time, a full scan,
and checkpoints that share files with the working store. RocksDB (`rocksdb.py`) is the one
backend: `benchmarks/cold_store.py` measured LMDB and an append-only log of our own beside it
and why they lost is in docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from streamrec.embedding.storage.rocksdb import RocksDBStore, row_dtype


class DiskStore(Protocol):
    path: Path
    dtype: np.dtype  # the packed row (`row_dtype`)

    def get(self, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """fids int64 [n] → (found bool [n], rows [n]; zeros where not found). Thread-safe."""
        ...

    def put(self, fids: np.ndarray, rows: np.ndarray) -> None:
        """Insert or replace rows under fids, atomically."""
        ...

    def delete(self, fids: np.ndarray) -> None: ...

    def expired(self, before: int) -> np.ndarray:
        """Fids whose stored row was last seen before `before` (event seconds)."""
        ...

    def scan(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored row in batches: (fids [k], rows [k])."""
        ...

    def disk_bytes(self) -> int: ...

    def checkpoint(self, target: str | Path) -> None:
        """A consistent copy at `target`, sharing (hard-linking) immutable files."""
        ...

    def close(self) -> None: ...


__all__ = ["DiskStore", "RocksDBStore", "row_dtype"]
