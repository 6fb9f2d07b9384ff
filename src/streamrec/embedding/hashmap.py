"""fid → row: a numba open-addressing hash map that grows without stopping the world.

The map is split into 2^shard_bits shards chosen by the top bits of a 64-bit mix of the fid;
each shard is a linear-probing table that doubles on its own when an insert would pass its load
limit. A slot is 12 packed bytes — the fid as two int32 words (low, high), then the row (int32,
−1 = empty) — so a probe reads one cache line, not one for the key and one for the row. Load
limits are staggered between 0.55 and 0.8 across shards, so shards double in different
batches: growing a 10M-entry map rehashes ~40k entries at a time, never all of them. Deletion
uses backward shifting (no tombstones), so probe lengths stay short under churn (eviction).

Kernels receive the shards as arrays of addresses (see `views.py`); growth happens on the
Python side in `ShardedMap.reserve`, before an insert kernel runs, because numba-allocated
arrays would not outlive the kernel.
"""

from __future__ import annotations

import numba
import numpy as np

from streamrec.embedding.views import address, i32_1d, prefetch, storage_moved
from streamrec.fid import avalanche

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@numba.njit(inline="always")
def mix64(x: np.uint64) -> np.uint64:
    """splitmix64's finaliser: a bijective, well-spread 64-bit mix."""
    return avalanche(x, 30, _M1, 27, _M2, 31)


@numba.njit(inline="always")
def fid_hash(fid: np.int64) -> np.uint64:
    return mix64(np.uint64(fid) + _GOLDEN)


@numba.njit(inline="always")
def shard_of(h: np.uint64, shard_bits: int) -> np.int64:
    return np.int64(h >> np.uint64(64 - shard_bits))


_LOW32 = np.int64(0xFFFFFFFF)


@numba.njit(inline="always")
def _key(v, i):
    """The fid in slot i of a shard viewed as int32 words [3·cap]."""
    return (np.int64(v[3 * i + 1]) << 32) | (np.int64(v[3 * i]) & _LOW32)


@numba.njit(inline="always")
def _row(v, i):
    return np.int64(v[3 * i + 2])


@numba.njit(inline="always")
def _set(v, i, fid, row) -> None:
    v[3 * i] = np.int32(np.uint32(fid & _LOW32))
    v[3 * i + 1] = np.int32(fid >> 32)
    v[3 * i + 2] = row


@numba.njit(inline="always")
def _shard_slots(slot_ptrs, caps, s):
    return i32_1d(slot_ptrs[s], 3 * caps[s])


@numba.njit(inline="always")
def _home(slot_ptrs, caps, shard_bits, fid):
    """(the slots of fid's shard, the shard's slot mask, fid's home slot, the shard)."""
    h = fid_hash(fid)
    s = shard_of(h, shard_bits)
    return _shard_slots(slot_ptrs, caps, s), np.uint64(caps[s] - 1), h & np.uint64(caps[s] - 1), s


@numba.njit(nogil=True, inline="always", cache=True)
def map_find(slot_ptrs, caps, shard_bits: int, fid: np.int64) -> np.int64:
    """Row of `fid`, or −1 when absent."""
    v, mask, i, s = _home(slot_ptrs, caps, shard_bits, fid)
    while True:
        r = _row(v, i)
        if r < 0:
            return np.int64(-1)
        if _key(v, i) == fid:
            return r
        i = (i + np.uint64(1)) & mask


@numba.njit(nogil=True, inline="always", cache=True)
def map_prefetch(slot_ptrs, caps, shard_bits: int, fid: np.int64) -> None:
    """Start loading the cache line of `fid`'s home slot (see `views.prefetch`)."""
    h = fid_hash(fid)
    s = shard_of(h, shard_bits)
    prefetch(slot_ptrs[s] + np.int64(h & np.uint64(caps[s] - 1)) * 12)


@numba.njit(nogil=True, cache=True)
def map_insert(slot_ptrs, caps, sizes, shard_bits: int, fid: np.int64, row: int) -> None:
    """Insert a fid known to be absent, into a shard `reserve` made room in."""
    v, mask, i, s = _home(slot_ptrs, caps, shard_bits, fid)
    while _row(v, i) >= 0:
        i = (i + np.uint64(1)) & mask
    _set(v, i, fid, row)
    sizes[s] += 1


@numba.njit(nogil=True, cache=True)
def map_delete(slot_ptrs, caps, sizes, shard_bits: int, fid: np.int64) -> np.int64:
    """Remove `fid`; returns its row (−1 if absent). Backward-shift deletion, no tombstones."""
    v, mask, i, s = _home(slot_ptrs, caps, shard_bits, fid)
    while True:
        if _row(v, i) < 0:
            return np.int64(-1)
        if _key(v, i) == fid:
            break
        i = (i + np.uint64(1)) & mask
    found = _row(v, i)
    j = i
    while True:
        j = (j + np.uint64(1)) & mask
        if _row(v, j) < 0:
            break
        home = fid_hash(_key(v, j)) & mask
        # The entry at j may move back to the hole at i unless its home lies in (i, j].
        if i <= j:
            movable = home <= i or home > j
        else:
            movable = home <= i and home > j
        if movable:
            _set(v, i, _key(v, j), _row(v, j))
            i = j
    v[3 * i + 2] = -1
    sizes[s] -= 1
    return found


class ShardedMap:
    """Owner of the shard arrays; the kernels above do the probing.

    Memory: 12 bytes per slot (packed int64 fid + int32 row) at 27–80% load.
    """

    def __init__(self, shard_bits: int = 8, initial_slots: int = 16) -> None:
        if not 1 <= shard_bits <= 16:
            raise ValueError("shard_bits must be in [1, 16]")
        n = 1 << shard_bits
        self.shard_bits = shard_bits
        # Shards start as rows of one block (a shard that grows gets its own array): a map is
        # built with one allocation, not n — models are loaded beside a serving one.
        block = np.full((n, 3 * initial_slots), -1, np.int32)
        self.slots = list(block)  # shard s: int32 [3·caps[s]]
        self.slot_ptrs = address(block) + np.arange(n, dtype=np.int64) * block.strides[0]
        self.caps = np.full(n, initial_slots, np.int64)
        self.sizes = np.zeros(n, np.int64)
        # Staggered load limits: shards cross them in different batches.
        self.max_load = 0.55 + 0.25 * ((np.arange(n) * 37) % n) / max(n - 1, 1)
        storage_moved()

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def nbytes(self) -> int:
        return int(self.caps.sum()) * 12

    def shard_counts(self, fids: np.ndarray) -> np.ndarray:
        """How many of `fids` fall in each shard → int64 [n_shards]."""
        return _shard_counts(fids, self.shard_bits, self.caps.shape[0])

    def reserve(self, fids: np.ndarray) -> None:
        """Grow every shard that could pass its load limit if all of `fids` were inserted."""
        self.reserve_counts(self.shard_counts(fids))

    def reserve_counts(self, need: np.ndarray) -> None:
        """Grow every shard s that could pass its load limit after need[s] more inserts."""
        for s in np.flatnonzero(self.sizes + need > self.max_load * self.caps):
            cap = int(self.caps[s])
            while self.sizes[s] + need[s] > self.max_load[s] * cap:
                cap *= 2
            slots = np.full(3 * cap, -1, np.int32)
            _rehash(self.slots[s], slots)
            self.slots[s] = slots
            self.slot_ptrs[s] = address(slots)
            self.caps[s] = cap
            storage_moved()

    def find(self, fids: np.ndarray) -> np.ndarray:
        out = np.empty(fids.shape[0], np.int64)
        _find_many(self.slot_ptrs, self.caps, self.shard_bits, fids, out)
        return out

    def insert(self, fids: np.ndarray, rows: np.ndarray) -> None:
        """Insert absent fids (distinct) with their rows."""
        self.reserve(fids)
        _insert_many(self.slot_ptrs, self.caps, self.sizes, self.shard_bits, fids, rows)

    def delete(self, fids: np.ndarray) -> np.ndarray:
        out = np.empty(fids.shape[0], np.int64)
        _delete_many(self.slot_ptrs, self.caps, self.sizes, self.shard_bits, fids, out)
        return out


@numba.njit(nogil=True, cache=True)
def _shard_counts(fids, shard_bits, n_shards):
    counts = np.zeros(n_shards, np.int64)
    for i in range(fids.shape[0]):
        counts[shard_of(fid_hash(fids[i]), shard_bits)] += 1
    return counts


@numba.njit(nogil=True, cache=True)
def _rehash(old, new):
    mask = np.uint64(new.shape[0] // 3 - 1)
    for j in range(old.shape[0] // 3):
        if _row(old, j) >= 0:
            fid = _key(old, j)
            i = fid_hash(fid) & mask
            while _row(new, i) >= 0:
                i = (i + np.uint64(1)) & mask
            _set(new, i, fid, _row(old, j))


@numba.njit(nogil=True, parallel=True, cache=True)
def _find_many(slot_ptrs, caps, shard_bits, fids, out):
    for i in numba.prange(fids.shape[0]):
        out[i] = map_find(slot_ptrs, caps, shard_bits, fids[i])


@numba.njit(nogil=True, cache=True)
def _insert_many(slot_ptrs, caps, sizes, shard_bits, fids, new_rows):
    for i in range(fids.shape[0]):
        map_insert(slot_ptrs, caps, sizes, shard_bits, fids[i], new_rows[i])


@numba.njit(nogil=True, cache=True)
def _delete_many(slot_ptrs, caps, sizes, shard_bits, fids, out):
    for i in range(fids.shape[0]):
        out[i] = map_delete(slot_ptrs, caps, sizes, shard_bits, fids[i])
