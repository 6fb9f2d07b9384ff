"""The retrieval stage of POST /v1/recommend: user features → user tower → the nearest items
of the faiss index (N = retrieval.candidates, minus `exclude`) → those items' catalog rows.

The app composes it with the ranking stage (`serving/app.py`): the ranker scores the N items
with the user as context and each item's catalog features as the candidate, and the top k by
score are returned. Retrieval itself (`streamrec.retrieval`) knows nothing of the server.

The stage learns from deltas (an online run of the retriever, `retrieval_watcher.py`) without a
moment of mixed state: the user tower and the index must come from the same model — a user
vector of new weights searched in an index of old ones is a silently wrong answer. So deltas
go to a second copy of the towers (the shadow, made on the first delta: the retriever's memory
doubles while it learns), the catalog is re-embedded and indexed with it, and the towers, the
index and the user-vector cache are swapped together, where requests run; the retired copy
then catches up and becomes the next shadow.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
import torch

from streamrec.json_records import INT64
from streamrec.models.persistence import load_model
from streamrec.models.two_tower import TwoTower
from streamrec.retrieval.impression_set import RETRIEVAL_SCORE
from streamrec.retrieval.index import Retriever
from streamrec.retrieval.model_dir import find_retrieval_dir, load_retrieval_model
from streamrec.serving.delta_apply import apply_delta
from streamrec.serving.request import (
    RequestError,
    TypedBodyReader,
    feature_struct,
    given_features,
    rows_table,
)
from streamrec.store.delta import Delta


def recommend_body_type(kinds: dict[str, str]) -> type:
    """POST /v1/recommend for a retriever reading `kinds`: the user's features (as the user
    tower reads them, each typed by its kind), how many items to return, and items never to
    return."""
    return msgspec.defstruct(
        "RecommendBody",
        [
            ("user", feature_struct("User", kinds, msgspec.UNSET)),
            ("k", Annotated[int, msgspec.Meta(ge=1, le=1000)], 10),
            ("exclude", list[INT64], msgspec.field(default_factory=list)),
            ("debug", bool, False),  # each stage's item count and seconds in the answer
            ("value", Annotated[float, msgspec.Meta(ge=0)] | None, None),  # compute allocation
            ("request_id", str | None, None),  # echoed; clicks and feedback name it
        ],
        forbid_unknown_fields=True,
    )


def items_body_type(kinds: dict[str, str]) -> type:
    """POST /v1/items: new or changed items (an `item_id` and any of the item tower's
    features), indexed without a rebuild."""
    item = feature_struct("IndexedItem", kinds, msgspec.UNSET, required=("item_id",))
    return msgspec.defstruct(
        "ItemsBody",
        [("items", Annotated[list[item], msgspec.Meta(min_length=1)])],
        forbid_unknown_fields=True,
    )


@dataclass
class RecommendRequest:
    """A checked /v1/recommend body."""

    user: dict[str, Any]
    k: int
    exclude: set[int]
    debug: bool = False
    value: float | None = None  # declared by the caller; else the server estimates it
    request_id: str | None = None


_encode_sorted = msgspec.json.Encoder(order="sorted").encode


@dataclass
class ServedTowers:
    """What one retrieval answer reads, swapped as one: the towers, the index of the catalog
    embedded with them, and the user vectors computed with them (distinct users' features →
    float32 [1, dim], most recent last)."""

    model: TwoTower
    retriever: Retriever
    delta_version: int = 0
    vectors: OrderedDict[bytes, np.ndarray] = field(default_factory=OrderedDict)


class RetrievalStage:
    USER_VECTORS = 100_000  # distinct users' vectors kept (~130 B each at dim 32)
    INDEX_CHUNK_ROWS = 512  # catalog rows embedded per item-tower call when re-indexing (the
    # server lets requests run between chunks: a chunk holds the GIL ~2 ms)

    def __init__(self, directory: Path) -> None:
        loaded = load_retrieval_model(directory)
        for table in loaded.model.dynamic_tables().values():
            table.drop_admission_state()  # serving never admits an id (deltas upsert rows)
        self._live = ServedTowers(loaded.model, loaded.retriever)
        self._shadow: TwoTower | None = None  # made on the first delta
        self._update_lock = threading.Lock()  # one writer: deltas, added items
        self.schema = loaded.config.schema
        self.kinds = loaded.kinds
        self.catalog = loaded.catalog
        self.catalog_version = 0
        self.candidates = loaded.config.retrieval.candidates
        self.version = loaded.version
        self.path = loaded.path
        self._user_features = frozenset(loaded.model.user_features)
        self.deltas_applied = 0
        self.last_reindex: dict[str, float] | None = None  # seconds and items of the last one
        self.recommend_reader = TypedBodyReader(recommend_body_type(self.kinds), "recommend")
        self.items_reader = TypedBodyReader(items_body_type(self.kinds), "items")

    @property
    def model(self) -> TwoTower:
        return self._live.model

    @property
    def retriever(self) -> Retriever:
        return self._live.retriever

    @property
    def user_features(self) -> frozenset[str]:
        """The request features the user tower reads."""
        return self._user_features

    def logged_item_features(
        self, ranker_features: list[str], others: list[str] | tuple[str, ...] = ()
    ) -> list[str]:
        """The item features an impression record holds: the ranker's candidate features, the
        item tower's and `others` (a pre-ranker's) — `ranker_features` itself when it already
        has them all."""
        wanted = [*self.model.item_features, *others]
        missing = list(dict.fromkeys(f for f in wanted if f not in ranker_features))
        return ranker_features + missing if missing else ranker_features

    @property
    def delta_version(self) -> int:
        return self._live.delta_version

    @property
    def serving_version(self) -> str:
        """"model.delta", as the ranker's: what the impression log records."""
        return f"{self.version}.{self._live.delta_version}"

    @classmethod
    def load(cls, path: str | Path) -> RetrievalStage:
        """The retrieval stage in `path` (a run or model directory); FileNotFoundError if it
        holds no retrieval model."""
        directory = find_retrieval_dir(path)
        if directory is None:
            raise FileNotFoundError(f"{path}: no retrieval model (retrieval/index.faiss)")
        return cls(directory)

    # ------------------------------------------------------------------ learning from deltas
    def apply_deltas(
        self,
        deltas: list[Delta],
        swap: Callable[[Callable[[], None]], None],
        pause: Callable[[], None] = lambda: None,
    ) -> None:
        """Serve `deltas` (in version order, all for this model): applied to the shadow towers,
        the catalog re-indexed with them, then `swap(fn)` runs `fn` where requests run (the
        server's event loop) to put towers, index and an empty user-vector cache in service at
        once. A delta that does not fit raises (the caller quarantines it); the shadow, maybe
        half-changed, is dropped and made afresh from the served towers next time. `pause()` is
        called between chunks of the re-index (the server's: give requests the GIL)."""
        if not deltas:
            return
        with self._update_lock:
            shadow = self._shadow or self._copy_of_served()
            self._shadow = None
            for delta in deltas:
                apply_delta(shadow, delta)
            started = time.perf_counter()
            fresh = ServedTowers(
                shadow.eval(), self._index_catalog(shadow, pause), deltas[-1].manifest.version
            )
            indexed = time.perf_counter()
            retired = self._live

            def put_in_service() -> None:
                self._live = fresh

            swap(put_in_service)
            for delta in deltas:  # no request reads it any more
                apply_delta(retired.model, delta)
            self._shadow = retired.model
            self.deltas_applied += len(deltas)
            self.last_reindex = {
                "seconds": indexed - started,
                "items": float(fresh.retriever.size),
                "deltas": float(len(deltas)),
            }

    def _copy_of_served(self) -> TwoTower:
        """A second, independent copy of the served towers (tables, weights, item counts)."""
        copy = load_model(self.path).model
        copy.load_state_dict(self._live.model.state_dict())
        for table in copy.dynamic_tables().values():
            table.drop_admission_state()
        return copy.eval()

    @torch.inference_mode()
    def _index_catalog(self, model: TwoTower, pause: Callable[[], None]) -> Retriever:
        """Every catalog item embedded by `model`'s item tower, in an index like the served one."""
        ids = np.fromiter(self.catalog.keys(), np.int64, len(self.catalog))
        rows = list(self.catalog.values())
        parts = []
        for start in range(0, len(rows), self.INDEX_CHUNK_ROWS):
            table = rows_table({}, rows[start : start + self.INDEX_CHUNK_ROWS], self.kinds)
            parts.append(model.item_vectors(self.schema.encode(table, with_labels=False)).numpy())
            pause()
        served = self._live.retriever
        retriever = Retriever(served.dim, served.params)
        retriever.build(ids, np.concatenate(parts) if parts else np.zeros((0, served.dim)))
        return retriever

    def read_recommend(self, body: bytes, max_bytes: int) -> RecommendRequest:
        """A /v1/recommend body, checked; RequestError (413 / 422) naming what is wrong."""
        checked = self.recommend_reader.read(body, max_bytes)
        return RecommendRequest(
            given_features(checked.user, self.kinds),
            checked.k,
            set(checked.exclude),
            checked.debug,
            checked.value,
            checked.request_id,
        )

    def read_items(self, body: bytes, max_bytes: int) -> list[dict[str, Any]]:
        """The item rows of a /v1/items body (each an `item_id` and the features given)."""
        checked = self.items_reader.read(body, max_bytes)
        return [given_features(item, self.kinds) for item in checked.items]

    def describe(self) -> dict[str, Any]:
        return {
            "model_version": self.version,
            "delta_version": self.delta_version,
            "deltas_applied": self.deltas_applied,
            "last_reindex": self.last_reindex,
            "items": self.retriever.size,
            "index": self.retriever.params.index_type,
            "candidates": self.candidates,
            "user_features": self.model.user_features,
            "path": str(self.path),
        }

    def user_vector(
        self, user: dict[str, Any], towers: ServedTowers | None = None
    ) -> np.ndarray:
        """float32 [1, dim]; RequestError (422) for an unknown feature or a wrong type.

        Vectors are kept per distinct feature values (`USER_VECTORS` most recent) with the
        towers that computed them: the user tower is the largest per-request cost of retrieval
        (~1 ms: encoding one row is many small Arrow and torch calls), and a returning user
        whose features have not changed gets the same vector — until a delta swaps in new
        towers, which start with an empty cache."""
        towers = towers or self._live
        key = _encode_sorted(user)
        vector = towers.vectors.pop(key, None)
        if vector is None:
            vector = self._user_vector(towers.model, user)
        towers.vectors[key] = vector
        if len(towers.vectors) > self.USER_VECTORS:
            towers.vectors.popitem(last=False)
        return vector

    @torch.inference_mode()
    def _user_vector(self, model: TwoTower, user: dict[str, Any]) -> np.ndarray:
        kinds = self.kinds
        for name in user:
            if name not in kinds:
                raise RequestError(
                    422, f"unknown user feature {name!r}; the retriever reads {sorted(kinds)}"
                )
        table = rows_table(user, [{}], kinds)
        return model.user_vectors(self.schema.encode(table, with_labels=False)).numpy()

    def retrieve(
        self, request: RecommendRequest, n: int | None = None
    ) -> tuple[list[int], np.ndarray]:
        """The ids of the nearest max(n or retrieval.candidates, k) items, nearest first, and
        their similarity scores (float32)."""
        towers = self._live  # one model for the vector and the index, whatever swaps
        ids, scores = towers.retriever.search(
            self.user_vector(request.user, towers),
            max(n or self.candidates, request.k),
            exclude=[request.exclude],
        )
        found = ids[0] >= 0
        return ids[0][found].tolist(), scores[0][found]

    def catalog_rows(self, items: list[int]) -> list[dict[str, Any]]:
        """Each item's catalog row (the `Catalog` that `serving/item_encoding.py` reads)."""
        return [self.catalog[i] for i in items]

    def item_rows(
        self, items: list[int], features: list[str], scores: dict[int, float] | None = None
    ) -> list[dict[str, Any]]:
        """Each item's catalog values of `features` (those it has) — and, when a model reads
        `retrieval_score` (`retrieval/impression_set.py`), the item's score in `scores`."""
        rows = [self.catalog[i] for i in items]
        out = [{f: row[f] for f in features if f in row} for row in rows]
        if scores is not None and RETRIEVAL_SCORE in features:
            for item, row in zip(items, out, strict=True):
                row[RETRIEVAL_SCORE] = scores[item]
        return out

    def add_items(self, rows: list[dict[str, Any]]) -> None:
        """Index new (or changed) items from their features, without a rebuild."""
        table = rows_table({}, rows, self.kinds)
        with self._update_lock:  # the catalog a re-index reads, the towers it swaps
            towers = self._live
            with torch.inference_mode():
                vectors = towers.model.item_vectors(self.schema.encode(table, with_labels=False))
            ids = np.array([r["item_id"] for r in rows], np.int64)
            towers.retriever.add(ids, vectors.numpy())
            for r in rows:
                self.catalog[int(r["item_id"])] = r
            self.catalog_version += 1  # cached encodings of catalog rows start over
