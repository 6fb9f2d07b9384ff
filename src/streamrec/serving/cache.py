"""Prediction cache: scores of recently seen rows, keyed by (serving version, row hash).

The serving version changes with every full reload and every applied delta, so a cached score
is never served from an older model. Memory is bounded by a byte budget (LRU eviction), and
in-flight de-duplication makes concurrent requests for the same row wait for one computation
instead of repeating it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

import msgspec
import numpy as np
import xxhash

_ENTRY_OVERHEAD = 120  # bytes: key, OrderedDict node, array header (measured order of size)


def row_key(version: str, values: list[Any]) -> bytes:
    """Key of one row: the serving version and a hash of its feature values, in the model's
    input order (`CandidateRows.row_values`)."""
    return version.encode() + b"|" + xxhash.xxh3_128_digest(msgspec.json.encode(values))


class PredictionCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future] = {}

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def get(self, key: bytes) -> np.ndarray | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: bytes, value: np.ndarray) -> None:
        if not self.enabled or key in self._items:
            return
        self._items[key] = value
        self.bytes += value.nbytes + len(key) + _ENTRY_OVERHEAD
        while self.bytes > self.budget and self._items:
            old_key, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes + len(old_key) + _ENTRY_OVERHEAD

    def inflight(self, key: bytes) -> asyncio.Future | None:
        return self._inflight.get(key)

    def start(self, key: bytes) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        return future

    def finish(self, key: bytes, value: np.ndarray | None, error: BaseException | None) -> None:
        future = self._inflight.pop(key, None)
        if value is not None:
            self.put(key, value)
        if future is not None and not future.done():
            if error is not None:
                future.set_exception(error)
                future.exception()  # mark retrieved: waiting requests get it, no warning
            else:
                future.set_result(value)

    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
