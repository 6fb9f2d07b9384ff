"""A cascade request's rows, encoded without Arrow and without per-row Python.

/v1/recommend scores catalog items: every row is (the user's context) + (an item's catalog
features) + (per-request values such as `retrieval_score`). Building those rows as dicts, then
Arrow columns, then encoding them cost more than scoring them with a small model (about 2 ms
for 1,000 rows against 0.5 ms of pre-ranker inference). Here each part is encoded once:

  * an item's catalog features: once per model and catalog version, cached — the encoding
    of a catalog row does not change with deltas (they change table rows, not fids), only
    with a new model (its schema) or a changed catalog row (POST /v1/items);
  * the context: once per request, then broadcast to its rows — and kept for the last
    4,096 distinct contexts (a returning user's requests repeat theirs);
  * the per-request columns (`retrieval_score`): one vectorised column encoding.

The `Batch` assembled is the one `Schema.encode` would build from the same rows (tested to
the bit), so a model scores it exactly as it scores the rows. Memory: one encoded row per
catalog item a request has asked for, per model — the size of the catalog's own dicts or
less (float32 dense columns and int64 ids).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import numpy as np
import pyarrow as pa
import torch

from streamrec.batch import Batch, JaggedIds, RequestContext
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


@dataclass
class _Ids:
    """One sparse feature's ids of the cached items, row after row (numpy: a gather of a few
    hundred rows costs microseconds, where torch's per-op dispatch costs tens)."""

    values: np.ndarray  # int64 [N]
    offsets: np.ndarray  # int64 [rows + 1]
    weights: np.ndarray | None  # float32 [N]

    @classmethod
    def of(cls, ids: JaggedIds) -> _Ids:
        weights = None if ids.weights is None else ids.weights.numpy()
        return cls(ids.values.numpy(), ids.offsets.numpy(), weights)

    def append(self, more: _Ids) -> _Ids:
        weights = None
        if self.weights is not None and more.weights is not None:
            weights = np.concatenate([self.weights, more.weights])
        return _Ids(
            np.concatenate([self.values, more.values]),
            np.concatenate([self.offsets, more.offsets[1:] + self.offsets[-1]]),
            weights,
        )

    def take(self, rows: np.ndarray) -> JaggedIds:
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if offsets[-1] == len(rows) and (lengths == 1).all():  # one id a row: a plain gather
            at = starts
        else:
            at = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - starts, lengths)
        weights = None if self.weights is None else torch.from_numpy(self.weights[at])
        return JaggedIds(torch.from_numpy(self.values[at]), torch.from_numpy(offsets), weights)


@dataclass
class _Encoded:
    """The cached items' encodings: `Batch.dense` rows and each sparse feature's ids."""

    dense: np.ndarray  # float32 [rows, D]
    sparse: dict[str, _Ids]

    @classmethod
    def of(cls, batch: Batch) -> _Encoded:
        return cls(batch.dense.numpy(), {k: _Ids.of(v) for k, v in batch.sparse.items()})

    def append(self, more: _Encoded) -> _Encoded:
        return _Encoded(
            np.concatenate([self.dense, more.dense]),
            {k: v.append(more.sparse[k]) for k, v in self.sparse.items()},
        )


class ItemEncodings:
    """One model's encoding of catalog items, cached by item id, and the assembly of a
    request's rows from it. Thread-safe: the cache only changes under a lock, and a reader
    takes the arrays it gathers from in one reference."""

    CONTEXTS = 4096  # distinct contexts whose encodings are kept (a user's requests repeat it)
    FEATURE_VALUES = 65_536  # encoded context values kept, feature by feature

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
        self._context_kinds = {f: kinds[f] for f in self.context_features if f in kinds}
        self.per_request = [f for f in per_request if f in candidate_features]
        self.item_features = [f for f in candidate_features if f not in self.per_request]
        dense = {f.name: f for f in schema.dense}
        if unsupported := [f for f in self.per_request if f not in dense]:
            raise ValueError(f"per-request inputs must be dense features: {unsupported}")
        self._per_request_fill = {f: dense[f].fill for f in self.per_request}
        self.spans = schema.dense_spans()
        self._lock = threading.Lock()
        self._catalog_version: int | None = None
        self._ids = np.empty(0, np.int64)  # sorted item ids of the cached rows
        self._rows = np.empty(0, np.int64)  # row of each sorted id in `_cached`
        self._cached: _Encoded | None = None
        self._contexts: OrderedDict[bytes, tuple[dict, dict]] = OrderedDict()
        # Each model input the context holds → the request columns its encoding reads (an id
        # feature's weights too), and one encoded value per (input, values) seen lately.
        self._context_inputs: dict[str, tuple[str, ...]] = {}
        for f in (*schema.dense, *schema.encodings):
            if f.name in self._context_kinds:
                self._context_inputs[f.name] = (f.name,)
        for f in schema.embeddings:
            if f.name in self._context_kinds:
                self._context_inputs[f.name] = (f.name, *([f.weights] if f.weights else []))
        self._feature_codes: OrderedDict[bytes, np.ndarray | JaggedIds] = OrderedDict()

    def batch(
        self,
        context: dict[str, Any],
        items: np.ndarray,
        catalog: Catalog,
        per_request: dict[str, np.ndarray | None] | None = None,
    ) -> Batch:
        """The encoded rows (context + each item's catalog features + `per_request` columns,
        float [len(items)] each) for `items` (int64 [n]). A context value of the wrong type is
        RequestError 422, as on the row path."""
        items = np.asarray(items, np.int64)
        n = len(items)
        cached, rows = self._rows_of(items, catalog)
        context_dense, context_sparse = self._context(context)
        dense = cached.dense[rows]
        for name, block in context_dense.items():
            dense[:, self.spans[name]] = block[0]
        for name in self.per_request:
            values = (per_request or {}).get(name)
            if values is None:  # as a row without the value: the feature's missing value
                column = pa.table({name: pa.nulls(n, pa.float64())})
            else:
                column = pa.table({name: np.asarray(values, np.float64)})
            dense[:, self.spans[name]] = self.schema.encode_dense(column, name)
        sparse = {
            name: _repeat(context_sparse[name], n) if name in context_sparse else ids.take(rows)
            for name, ids in cached.sparse.items()
        }
        columns = [c for name in context_dense for c in range(self.spans[name].start,
                                                               self.spans[name].stop)]
        dense_t = torch.from_numpy(dense)
        context = None
        if n:  # one request: its context once, for a model to share (`Batch.context`)
            context = RequestContext(
                torch.zeros(n, dtype=torch.int64),
                torch.zeros(1, dtype=torch.int64),
                frozenset(name for name in context_sparse if name in sparse),
                torch.tensor(columns, dtype=torch.int64),
                dense_t[:1, columns],
            )
        return Batch(torch.zeros((n, 0), dtype=torch.float32), dense_t, sparse, context=context)

    def _context(self, context: dict[str, Any]) -> tuple[dict, dict]:
        """The context's encodings (dense blocks [1, w], ids of one row), from a small cache
        keyed by its values."""
        values = {f: v for f, v in context.items() if f in self._context_kinds}
        key = _encode_key(values)
        with self._lock:
            hit = self._contexts.get(key)
            if hit is not None:
                self._contexts.move_to_end(key)
                return hit
        encoded = self._context_by_feature(values)
        with self._lock:
            self._contexts[key] = encoded
            if len(self._contexts) > self.CONTEXTS:
                self._contexts.popitem(last=False)
        return encoded

    def _context_by_feature(self, values: dict[str, Any]) -> tuple[dict, dict]:
        """A context not seen before, encoded feature by feature: a new user's age, gender or
        occupation was met before (each kept for `FEATURE_VALUES` values), so only the
        features with a new value (its id, mostly) go through Arrow — ~40 µs a feature."""
        dense: dict[str, np.ndarray] = {}
        sparse: dict[str, JaggedIds] = {}
        new: list[str] = []
        keys = {}
        with self._lock:
            for feature, inputs in self._context_inputs.items():
                keys[feature] = _encode_key([feature, *(values.get(c) for c in inputs)])
                hit = self._feature_codes.get(keys[feature])
                if hit is None:
                    new.append(feature)
                    continue
                self._feature_codes.move_to_end(keys[feature])
                (dense if isinstance(hit, np.ndarray) else sparse)[feature] = hit
        if not new:
            return dense, sparse
        columns = {c for f in new for c in self._context_inputs[f]}
        kinds = {c: k for c, k in self._context_kinds.items() if c in columns}
        one = rows_table({c: v for c, v in values.items() if c in columns}, [{}], kinds)
        more_dense, more_sparse = self.schema.encode_features(one, set(new))  # a wrong type: 422
        dense.update(more_dense)
        sparse.update(more_sparse)
        with self._lock:
            for feature in new:
                self._feature_codes[keys[feature]] = (
                    more_dense[feature] if feature in more_dense else more_sparse[feature]
                )
            while len(self._feature_codes) > self.FEATURE_VALUES:
                self._feature_codes.popitem(last=False)
        return dense, sparse

    def _rows_of(self, items: np.ndarray, catalog: Catalog) -> tuple[_Encoded, np.ndarray]:
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
        encoded = _Encoded.of(
            self.schema.encode(
                rows_table(
                    {}, [{f: r[f] for f in self.item_features if f in r} for r in rows],
                    self.kinds,
                ),
                with_labels=False,
            )
        )
        start = 0 if self._cached is None else len(self._cached.dense)
        self._cached = encoded if self._cached is None else self._cached.append(encoded)
        ids = np.concatenate([self._ids, new_ids])
        rows_at = np.concatenate([self._rows, np.arange(start, start + len(new_ids))])
        order = np.argsort(ids, kind="stable")
        self._ids, self._rows = ids[order], rows_at[order]

    @property
    def cached_items(self) -> int:
        return len(self._ids)


_encode_key = msgspec.msgpack.Encoder(order="deterministic").encode


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
    values = np.tile(one.values.numpy(), n)
    weights = None if one.weights is None else torch.from_numpy(np.tile(one.weights.numpy(), n))
    offsets = np.arange(n + 1, dtype=np.int64) * length
    return JaggedIds(torch.from_numpy(values), torch.from_numpy(offsets), weights)
