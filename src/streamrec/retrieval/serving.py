"""The retrieve → rank cascade behind POST /v1/recommend.

    {"user": {feature: value(s)}, "k": 10, "exclude": [item, …]}
    → user tower → top-N items from the faiss index (N = retrieval.candidates, minus `exclude`)
    → the ranking model scores those N with the user as context and each item's catalog
      features as the candidate → the top k by score, with both models' versions.

The retrieval model directory (written by `streamrec.train.two_tower`) holds the towers, the
index and the item catalog; it is loaded once, verified like any model directory.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from streamrec.models.persistence import load_model
from streamrec.retrieval.index import IndexParams, Retriever
from streamrec.serving.request import CandidateRows, RequestError, rows_table
from streamrec.store import CorruptModelError, find_model_dir
from streamrec.store.model_dir import read_file


class RetrievalStage:
    def __init__(self, directory: Path) -> None:
        loaded = load_model(directory)
        manifest = loaded.manifest
        self.model = loaded.model.eval()
        self.schema = loaded.config.schema
        saved = manifest.get("input_kinds", {})
        declared = self.schema.declared_kinds()  # for a model saved without kinds
        self.kinds = {
            f: saved.get(f) or declared.get(f, "string") for f in self.schema.input_columns(False)
        }
        meta = manifest["retrieval"]
        self.retriever = Retriever.from_bytes(
            read_file(directory, "retrieval/index.faiss", manifest),
            meta["dim"],
            IndexParams(**meta["index"]),
            meta.get("tombstones"),
        )
        catalog = pq.read_table(
            io.BytesIO(read_file(directory, "retrieval/catalog.parquet", manifest))
        )
        self.catalog_rows = {
            int(i): r
            for i, r in zip(catalog["item_id"].to_pylist(), catalog.to_pylist(), strict=True)
        }
        self.candidates = loaded.config.retrieval.candidates
        self.version = int(manifest.get("model_version", 0))
        self.path = directory

    def describe(self) -> dict[str, Any]:
        return {
            "model_version": self.version,
            "items": self.retriever.size,
            "index": self.retriever.params.kind,
            "candidates": self.candidates,
            "user_features": self.model.user_features,
            "path": str(self.path),
        }

    @torch.inference_mode()
    def user_vector(self, user: dict[str, Any]) -> np.ndarray:
        kinds = self.kinds
        for name in user:
            if name not in kinds:
                raise RequestError(
                    422, f"unknown user feature {name!r}; the retriever reads {sorted(kinds)}"
                )
        table = rows_table(user, [{}], kinds)  # RequestError (422) for a value of a wrong type
        return self.model.user_vectors(self.schema.encode(table, with_labels=False)).numpy()

    def add_items(self, rows: list[dict[str, Any]]) -> None:
        """Index new (or changed) items from their features, without a rebuild."""
        table = rows_table({}, rows, self.kinds)
        with torch.inference_mode():
            vectors = self.model.item_vectors(self.schema.encode(table, with_labels=False))
        ids = np.array([r["item_id"] for r in rows], np.int64)
        self.retriever.add(ids, vectors.numpy())
        for r in rows:
            self.catalog_rows[int(r["item_id"])] = r

    async def recommend(self, state: Any, body: Any) -> dict[str, Any]:
        from streamrec.serving.app import score_rows  # the ranking stage

        if not isinstance(body, dict) or not isinstance(body.get("user"), dict):
            raise RequestError(422, "the body must be {'user': {...}, 'k': n, 'exclude': [...]}")
        k = body.get("k", 10)
        exclude = body.get("exclude", [])
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
            raise RequestError(422, "'k' must be an integer in [1, 1000]")
        if not isinstance(exclude, list) or not all(isinstance(i, int) for i in exclude):
            raise RequestError(422, "'exclude' must be a list of item ids")
        user = body["user"]
        ids, _ = self.retriever.search(
            self.user_vector(user), max(self.candidates, k), exclude=[set(exclude)]
        )
        items = [int(i) for i in ids[0] if i >= 0]
        if not items:
            return {"items": [], "scores": [], "versions": self.versions(state)}
        snapshot = state.batcher.snapshot
        context = {f: v for f, v in user.items() if f in snapshot.context_features}
        candidates = [
            {
                f: self.catalog_rows[i].get(f)
                for f in snapshot.candidate_features
                if f in self.catalog_rows[i]
            }
            for i in items
        ]
        scores, _ = await score_rows(
            state, CandidateRows.from_dicts(context, candidates, snapshot.kinds)
        )
        order = np.argsort(-scores[:, 0], kind="stable")[:k]
        return {
            "items": [items[j] for j in order],
            "scores": [float(scores[j, 0]) for j in order],
            "retrieved": len(items),
            "versions": self.versions(state),
        }

    def versions(self, state: Any) -> dict[str, Any]:
        return {"retrieval": self.version, "ranking": state.batcher.snapshot.serving_version}


def load_retrieval_stage(path: str | Path | None) -> RetrievalStage | None:
    """The retrieval stage in `path` (a run or model directory), or None if there is none."""
    if path is None:
        return None
    try:
        directory = find_model_dir(path)
    except CorruptModelError:
        return None
    if not (directory / "retrieval" / "index.faiss").exists():
        return None
    return RetrievalStage(directory)
