"""Batch id de-duplication: fids [n] → unique fids, inverse [n], occurrence counts.

A hash-based single pass (O(n), numba, no sort), keeping first-occurrence order so results are
deterministic. Each batch's ids are deduplicated once per table, before lookup: rows are gathered
and optimizer steps applied once per unique id.
"""

from __future__ import annotations

import numba
import numpy as np

from streamrec.embedding.hashmap import fid_hash


@numba.njit(nogil=True, inline="always", cache=True)
def dedup_range(fids, lo, hi, unique, inverse, counts):  # noqa: ANN001, ANN201
    """De-duplicate fids[lo:hi] into unique[lo:lo+u] (first-occurrence order), counts[lo:lo+u]
    and inverse[lo:hi] (index within the range's uniques); returns u."""
    cap = 16
    while cap < 2 * (hi - lo):
        cap *= 2
    mask = np.uint64(cap - 1)
    slot_key = np.empty(cap, np.int64)
    slot_idx = np.full(cap, -1, np.int64)
    u = 0
    for i in range(lo, hi):
        f = fids[i]
        j = fid_hash(f) & mask
        while True:
            k = slot_idx[j]
            if k < 0:
                k = u
                slot_idx[j] = k
                slot_key[j] = f
                unique[lo + k] = f
                counts[lo + k] = 0
                u += 1
                break
            if slot_key[j] == f:
                break
            j = (j + np.uint64(1)) & mask
        inverse[i] = k
        counts[lo + k] += 1
    return u


@numba.njit(nogil=True, cache=True)
def _dedup(fids):  # noqa: ANN001, ANN202
    n = fids.shape[0]
    unique = np.empty(n, np.int64)
    counts = np.empty(n, np.int64)
    inverse = np.empty(n, np.int64)
    u = dedup_range(fids, 0, n, unique, inverse, counts)
    return unique[:u].copy(), inverse, counts[:u].copy()


def dedup(fids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """→ (unique int64 [U], inverse int64 [n] with fids == unique[inverse], counts int64 [U])."""
    return _dedup(np.ascontiguousarray(fids, dtype=np.int64))
