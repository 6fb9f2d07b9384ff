"""Which embedded key-value store holds the cold tier of a tiered table (issue 20).

Three candidates for rows of 76 bytes (dim 16: weights 64 + row-wise Adagrad 4 + count 4 +
last-seen 4) keyed by an 8-byte fid, written and read in batches the way `TieredTable` does:

- RocksDB (`rocksdict`): an LSM tree; reads go through pread into its own bounded block cache;
- LMDB (`lmdb`): a copy-on-write B+tree read through mmap;
- our own log: rows appended to one file, fid → offset in an in-memory hash map
  (`ShardedMap`), reads by pread of each row.

For each: write N rows in batches of 50k, then read batches of 50k ids drawn Zipf(1.05) (90%
present), and report rows/s both ways, bytes on disk per row, and the memory the store keeps
per row (the log's index; the other two keep none that grows with N).

    python benchmarks/cold_store.py --rows 4000000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROW_BYTES = 76
BATCH = 50_000


def _keys(fids: np.ndarray) -> list[bytes]:
    return fids.astype(">i8").view("V8").tolist()


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Rocks:
    name = "rocksdb (rocksdict)"

    def __init__(self, path: Path) -> None:
        import rocksdict

        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_compression_type(rocksdict.DBCompressionType.none())
        self.db = rocksdict.Rdict(str(path), opts)
        self.missing = bytes(ROW_BYTES)

    def write(self, fids: np.ndarray, rows: np.ndarray) -> None:
        import rocksdict

        batch = rocksdict.WriteBatch(raw_mode=True)
        for k, v in zip(_keys(fids), rows.view(f"V{ROW_BYTES}").ravel().tolist(), strict=True):
            batch.put(k, v)
        self.db.write(batch)

    def read(self, fids: np.ndarray) -> np.ndarray:
        got = self.db.get(_keys(fids), default=self.missing)
        return np.frombuffer(b"".join(got), np.uint8).reshape(-1, ROW_BYTES)

    def finish(self) -> None:
        self.db.flush()
        self.db.compact_range(None, None)

    def close(self) -> None:
        self.db.close()


class Lmdb:
    name = "lmdb"

    def __init__(self, path: Path) -> None:
        import lmdb

        self.env = lmdb.open(str(path), map_size=1 << 40, writemap=False, sync=False)
        self.missing = bytes(ROW_BYTES)

    def write(self, fids: np.ndarray, rows: np.ndarray) -> None:
        items = list(zip(_keys(fids), rows.view(f"V{ROW_BYTES}").ravel().tolist(), strict=True))
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti(items)

    def read(self, fids: np.ndarray) -> np.ndarray:
        with self.env.begin() as txn:
            got = txn.cursor().getmulti(_keys(fids))
        found = dict(got)
        return np.frombuffer(
            b"".join(found.get(k, self.missing) for k in _keys(fids)), np.uint8
        ).reshape(-1, ROW_BYTES)

    def finish(self) -> None:
        self.env.sync()

    def close(self) -> None:
        self.env.close()


class OwnLog:
    name = "own log + in-memory index"

    def __init__(self, path: Path) -> None:
        from streamrec.embedding.hashmap import ShardedMap

        path.mkdir()
        self.file = open(path / "rows.log", "w+b")
        self.index = ShardedMap(12)
        self.n = 0

    def write(self, fids: np.ndarray, rows: np.ndarray) -> None:
        self.file.seek(0, os.SEEK_END)
        self.file.write(rows.tobytes())
        self.index.insert(fids, np.arange(self.n, self.n + fids.shape[0], dtype=np.int64))
        self.n += fids.shape[0]

    def read(self, fids: np.ndarray) -> np.ndarray:
        at = self.index.find(fids)
        out = np.zeros((fids.shape[0], ROW_BYTES), np.uint8)
        mm = np.memmap(self.file.name, np.uint8, "r", shape=(self.n, ROW_BYTES))
        ok = at >= 0
        out[ok] = mm[at[ok]]
        return out

    def finish(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def index_bytes(self) -> int:
        return self.index.nbytes()


def measure(store_cls, n_rows: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    fids = rng.permutation(np.arange(1, 2 * n_rows, 2, dtype=np.int64) * 7919)[:n_rows]
    tmp = Path(tempfile.mkdtemp(prefix="cold_store_"))
    try:
        store = store_cls(tmp / "db")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        for lo in range(0, n_rows, BATCH):
            part = fids[lo : lo + BATCH]
            rows = rng.integers(0, 255, (part.shape[0], ROW_BYTES), dtype=np.uint8)
            store.write(part, rows)
        store.finish()
        write_s = time.perf_counter() - t
        ranks = np.minimum(rng.zipf(1.05, 20 * BATCH), n_rows) - 1
        queries = np.where(rng.random(ranks.shape[0]) < 0.9, fids[ranks], -fids[ranks] - 1)
        t = time.perf_counter()
        for lo in range(0, queries.shape[0], BATCH):
            store.read(queries[lo : lo + BATCH])
        read_s = time.perf_counter() - t
        out = {
            "store": store_cls.name,
            "rows": n_rows,
            "write_rows_per_s": n_rows / write_s,
            "read_rows_per_s": queries.shape[0] / read_s,
            "disk_bytes_per_row": _du(tmp / "db") / n_rows,
            "memory_bytes_per_row": (
                store.index_bytes() / n_rows if hasattr(store, "index_bytes") else 0.0
            ),
            "max_rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0)
            / 1024,
        }
        store.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(cls, args.rows, seed=0) for cls in (Rocks, Lmdb, OwnLog)]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    header = ("write rows/s", "read rows/s", "disk B/row", "mem B/row")
    print(f"{'store':28} {header[0]:>13} {header[1]:>12} {header[2]:>11} {header[3]:>10}")
    for r in results:
        print(
            f"{r['store']:28} {r['write_rows_per_s']:13,.0f} {r['read_rows_per_s']:12,.0f} "
            f"{r['disk_bytes_per_row']:11.1f} {r['memory_bytes_per_row']:10.1f}"
        )


if __name__ == "__main__":
    main()
