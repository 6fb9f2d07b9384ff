"""A cascade request's rows, encoded without Arrow and without per-row Python.

/v1/recommend scores catalog items: every row is (the user's context) + (an item's catalog
features) + (per-request values such as `retrieval_score`). Building those rows as dicts, then
Arrow columns, then encoding them cost more than scoring them with a small model (about 2 ms
for 1,000 rows against 0.5 ms of pre-ranker inference). Here each part is encoded once:

  * an item's catalog features: once per model and catalog version, cached — the encoding
    of a catalog row does not change with deltas (they change table rows, not fids), only
    with a new model (its schema) or a changed catalog row (POST /v1/items);
  * the context: once per request, then broadcast to its rows;
  * the per-request columns (`retrieval_score`): one vectorised column encoding.

The `Batch` assembled is the one `Schema.encode` would build from the same rows (tested to
the bit), so a model scores it exactly as it scores the rows.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from streamrec.batch import Batch, JaggedIds
from streamrec.schema import Schema
from streamrec.serving.request import rows_table
from streamrec.serving.snapshot import Snapshot


class Catalog(Protocol):
    """Where items' features come from (the retrieval stage's catalog)."""

    @property
    def catalog_version(self) -> int:
        """Changes whenever a catalog row does (POST /v1/items)."""
        ...

    def catalog_rows(self, items: list[int]) -> list[dict[str, Any]]:
        """Each item's catalog row (feature → value); KeyError for an unknown item."""
        ...


class ItemEncodings:
    """One model's encoding of catalog items, cached by item id, and the assembly of a
    request's rows from it. Thread-safe: the cache only grows under a lock, and a reader
    takes the arrays it gathers from in one reference."""

    def __init__(
        self,
        schema: Schema,
        kinds: dict[str, str],
        context_features: list[str],
        candidate_features: list[str],
        per_request: tuple[str, ...] = (),
    ) -> None:
        self.schema = schema
        self.kinds = kinds
        self.context_features = list(context_features)
        self.per_request = [f for f in per_request if f in candidate_features]
        self.item_features = [f for f in candidate_features if f not in self.per_request]
        dense = {f.name for f in schema.dense}
        if unsupported := [f for f in self.per_request if f not in dense]:
            raise ValueError(f"per-request inputs must be dense features: {unsupported}")
        self.spans = schema.dense_spans()
        self._lock = threading.Lock()
        self._catalog_version: int | None = None
        self._ids = np.empty(0, np.int64)  # sorted item ids of the cached rows
        self._rows = np.empty(0, np.int64)  # row of each sorted id in `_cached`
        self._cached: Batch | None = None

    def batch(
        self,
        context: dict[str, Any],
        items: np.ndarray,
        catalog: Catalog,
        per_request: dict[str, np.ndarray] | None = None,
    ) -> Batch:
        """The encoded rows (context + each item's catalog features + `per_request` columns,
        float [len(items)] each) for `items` (int64 [n]). A context value of the wrong type is
        RequestError 422, as on the row path."""
        items = np.asarray(items, np.int64)
        n = len(items)
        cached, rows = self._rows_of(items, catalog)
        out = cached.take(torch.from_numpy(rows))
        one = self.schema.encode(
            rows_table(
                {f: v for f, v in context.items() if f in self.context_features},
                [{}],
                self.kinds,
            ),
            with_labels=False,
        )
        dense = out.dense.numpy()
        for name in self.context_features:
            if name in out.sparse:
                out.sparse[name] = _repeat(one.sparse[name], n)
            if (span := self.spans.get(name)) is not None:
                dense[:, span] = one.dense.numpy()[0, span]
        for name in self.per_request:
            values = (per_request or {}).get(name)
            column = pa.table({name: pa.array(values if values is not None else [None] * n,
                                              pa.float64())})
            if (span := self.spans.get(name)) is not None:
                dense[:, span] = self.schema.encode_dense(column, name)
        return out

    def _rows_of(self, items: np.ndarray, catalog: Catalog) -> tuple[Batch, np.ndarray]:
        """(the cache, each item's row in it), encoding the items it lacks first."""
        with self._lock:
            if catalog.catalog_version != self._catalog_version:  # a row changed: start over
                self._catalog_version = catalog.catalog_version
                self._ids = self._rows = np.empty(0, np.int64)
                self._cached = None
            pos = np.searchsorted(self._ids, items)
            known = pos < len(self._ids)
            known[known] = self._ids[pos[known]] == items[known]
            if not known.all():
                self._add(np.unique(items[~known]), catalog)
                pos = np.searchsorted(self._ids, items)
            assert self._cached is not None
            return self._cached, self._rows[pos]

    def _add(self, new_ids: np.ndarray, catalog: Catalog) -> None:
        rows = catalog.catalog_rows(new_ids.tolist())
        encoded = self.schema.encode(
            rows_table({}, [{f: r[f] for f in self.item_features if f in r} for r in rows],
                       self.kinds),
            with_labels=False,
        )
        start = 0 if self._cached is None else self._cached.size
        self._cached = encoded if self._cached is None else Batch.concat([self._cached, encoded])
        ids = np.concatenate([self._ids, new_ids])
        rows_at = np.concatenate([self._rows, np.arange(start, start + len(new_ids))])
        order = np.argsort(ids, kind="stable")
        self._ids, self._rows = ids[order], rows_at[order]

    @property
    def cached_items(self) -> int:
        return len(self._ids)


class EncodingsBySnapshot:
    """The `ItemEncodings` of whichever model serves now, made afresh when another model (a
    new `Snapshot`) is swapped in; None for a model whose per-request inputs are not dense
    features (its callers take the row path)."""

    def __init__(self, per_request: tuple[str, ...]) -> None:
        self.per_request = per_request
        self._for: Snapshot | None = None
        self._encodings: ItemEncodings | None = None

    def of(self, snapshot: Snapshot) -> ItemEncodings | None:
        if self._for is not snapshot:
            self._for = snapshot
            try:
                self._encodings = ItemEncodings(
                    snapshot.schema, snapshot.kinds, snapshot.context_features,
                    snapshot.candidate_features, self.per_request,
                )
            except ValueError:
                self._encodings = None
        return self._encodings


def _repeat(one: JaggedIds, n: int) -> JaggedIds:
    """A one-row JaggedIds as the same ids on each of n rows."""
    length = int(one.offsets[1])
    weights = one.weights.repeat(n) if one.weights is not None else None
    return JaggedIds(
        one.values.repeat(n), torch.arange(n + 1, dtype=torch.int64) * length, weights
    )
