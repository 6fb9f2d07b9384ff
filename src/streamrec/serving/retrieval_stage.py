"""The retrieval stage of POST /v1/recommend: user features → user tower → the nearest items
of the faiss index (N = retrieval.candidates, minus `exclude`) → those items' catalog rows.

The app composes it with the ranking stage (`serving/app.py`): the ranker scores the N items
with the user as context and each item's catalog features as the candidate, and the top k by
score are returned. Retrieval itself (`streamrec.retrieval`) knows nothing of the server.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
import torch

from streamrec.json_records import INT64
from streamrec.retrieval.impression_set import RETRIEVAL_SCORE
from streamrec.retrieval.model_dir import find_retrieval_dir, load_retrieval_model
from streamrec.serving.request import (
    RequestError,
    TypedBodyReader,
    feature_struct,
    given_features,
    rows_table,
)


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


class RetrievalStage:
    USER_VECTORS = 100_000  # distinct users' vectors kept (~130 B each at dim 32)

    def __init__(self, directory: Path) -> None:
        self._vectors: OrderedDict[bytes, np.ndarray] = OrderedDict()
        loaded = load_retrieval_model(directory)
        self.model = loaded.model
        self.schema = loaded.config.schema
        self.kinds = loaded.kinds
        self.retriever = loaded.retriever
        self.catalog = loaded.catalog
        self.candidates = loaded.config.retrieval.candidates
        self.version = loaded.version
        self.path = loaded.path
        self.recommend_reader = TypedBodyReader(recommend_body_type(self.kinds), "recommend")
        self.items_reader = TypedBodyReader(items_body_type(self.kinds), "items")

    @classmethod
    def load(cls, path: str | Path) -> RetrievalStage:
        """The retrieval stage in `path` (a run or model directory); FileNotFoundError if it
        holds no retrieval model."""
        directory = find_retrieval_dir(path)
        if directory is None:
            raise FileNotFoundError(f"{path}: no retrieval model (retrieval/index.faiss)")
        return cls(directory)

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
            "items": self.retriever.size,
            "index": self.retriever.params.index_type,
            "candidates": self.candidates,
            "user_features": self.model.user_features,
            "path": str(self.path),
        }

    def user_vector(self, user: dict[str, Any]) -> np.ndarray:
        """float32 [1, dim]; RequestError (422) for an unknown feature or a wrong type.

        Vectors are kept per distinct feature values (`USER_VECTORS` most recent): the user
        tower is the largest per-request cost of retrieval (~1 ms: encoding one row is many
        small Arrow and torch calls), and a returning user whose features have not changed
        gets the same vector. The stage's model never changes while it serves, so an entry
        never goes stale."""
        key = _encode_sorted(user)
        vector = self._vectors.pop(key, None)
        if vector is None:
            vector = self._user_vector(user)
        self._vectors[key] = vector
        if len(self._vectors) > self.USER_VECTORS:
            self._vectors.popitem(last=False)
        return vector

    @torch.inference_mode()
    def _user_vector(self, user: dict[str, Any]) -> np.ndarray:
        kinds = self.kinds
        for name in user:
            if name not in kinds:
                raise RequestError(
                    422, f"unknown user feature {name!r}; the retriever reads {sorted(kinds)}"
                )
        table = rows_table(user, [{}], kinds)
        return self.model.user_vectors(self.schema.encode(table, with_labels=False)).numpy()

    def retrieve(
        self, request: RecommendRequest, n: int | None = None
    ) -> tuple[list[int], np.ndarray]:
        """The ids of the nearest max(n or retrieval.candidates, k) items, nearest first, and
        their similarity scores (float32)."""
        ids, scores = self.retriever.search(
            self.user_vector(request.user),
            max(n or self.candidates, request.k),
            exclude=[request.exclude],
        )
        found = ids[0] >= 0
        return [int(i) for i in ids[0][found]], scores[0][found]

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
        with torch.inference_mode():
            vectors = self.model.item_vectors(self.schema.encode(table, with_labels=False))
        ids = np.array([r["item_id"] for r in rows], np.int64)
        self.retriever.add(ids, vectors.numpy())
        for r in rows:
            self.catalog[int(r["item_id"])] = r
