"""The pre-ranking stage of POST /v1/recommend: between retrieval and ranking, a light model
(COLD, `models/cold.py`) scores every retrieved item and keeps the best `keep` for the ranker.

Retrieval returns K1 (~1,000) items, the ranker's cost grows with the rows it scores, and most
of those items never make the top k; a pre-ranker at a fraction of the ranker's cost per row
cuts the ranker's rows to K2 (~100). The stage is an ordinary model directory loaded as a
`Snapshot` (the same encoding and input kinds as the ranker's), called on a worker thread,
and kept fresh like the ranker: a `Watcher` applies its run's deltas and swaps in its newer
models, each change made under the stage's lock so that no scoring sees half of one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.retrieval.impression_set import RETRIEVAL_SCORE
from streamrec.serving.batcher import use_compute_threads
from streamrec.serving.item_encoding import Catalog, EncodingsBySnapshot
from streamrec.serving.request import rows_table
from streamrec.serving.snapshot import Snapshot

_thread = threading.local()  # whether this worker thread has its OpenMP settings
WARMUP_ROWS = 256  # rows kept for warming up a reloaded model
WARMUP_EVERY = 256  # encoded calls between two recordings of them


class PreRankStage:
    def __init__(self, snapshot: Snapshot, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"the pre-ranker must keep at least one item (got {keep})")
        self.snapshot = snapshot
        self.keep = keep
        self.threads = 1
        self.recent_tables: list[Any] = []  # the last rows scored: a reloaded model's warm-up
        self._lock = threading.Lock()
        self._encodings = EncodingsBySnapshot(per_request=(RETRIEVAL_SCORE,))
        self._calls = 0

    def run_control(self, op: Callable[[], object]) -> Future:
        """Run `op` (a delta, a model swap) between two scorings; → its finished future."""
        done: Future = Future()
        with self._lock:
            try:
                done.set_result(op())
            except BaseException as e:  # the watcher reads it from the future
                done.set_exception(e)
        return done

    @classmethod
    def load(cls, path: str | Path, keep: int, row_precision: str = "fp32") -> PreRankStage:
        """The pre-ranking model in `path` (a run or model directory), its rows held at
        `row_precision` (`serving.row_precision`)."""
        return cls(Snapshot.load(path).encode_rows(row_precision), keep)

    @property
    def version(self) -> str:
        return self.snapshot.serving_version

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.snapshot.config.model.name,
            "model_version": self.version,
            "keep": self.keep,
            "features": {
                "context": self.snapshot.context_features,
                "candidate": self.snapshot.candidate_features,
            },
            "path": str(self.snapshot.loaded.path),
        }

    def top(
        self,
        user: dict[str, Any],
        items: list[int],
        catalog: Catalog,
        retrieval_scores: np.ndarray | None = None,
        keep: int | None = None,
    ) -> tuple[list[int], np.ndarray]:
        """The `keep` (default: the stage's) items of `items` the pre-ranker scores highest,
        best first, and their scores. Each item's features come from `catalog` (encoded once
        per model and catalog version, `serving/item_encoding.py`), `retrieval_scores`
        (float [len(items)]) feed a model that reads `retrieval_score`. The user's features
        outside the model's context are ignored (the retriever may read more than the
        pre-ranker does); a wrong type is a 422."""
        if not getattr(_thread, "configured", False):  # a fresh asyncio worker thread
            use_compute_threads(self.threads)
            _thread.configured = True
        with self._lock:
            snap = self.snapshot
            encodings = self._encodings.of(snap)
            if encodings is not None:
                per_request = {RETRIEVAL_SCORE: retrieval_scores}
                batch = encodings.batch(user, np.asarray(items), catalog, per_request)
                scores = snap.model.predict(batch).numpy()[:, 0]
                self._calls += 1
                if self._calls % WARMUP_EVERY == 1:  # rows a reloaded model warms up on
                    few = slice(0, WARMUP_ROWS)
                    self.recent_tables = [self._rows_table(
                        snap, user, items[few], catalog,
                        None if retrieval_scores is None else retrieval_scores[few],
                    )]
            else:  # a per-request input the encodings cannot assemble: the row path
                scores = self._row_scores(snap, user, items, catalog, retrieval_scores)
        keep = min(keep or self.keep, len(items))
        best = np.argpartition(-scores, keep - 1)[:keep]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [items[i] for i in best], scores[best]

    def _row_scores(
        self,
        snap: Snapshot,
        user: dict[str, Any],
        items: list[int],
        catalog: Catalog,
        retrieval_scores: np.ndarray | None,
    ) -> np.ndarray:
        table = self._rows_table(snap, user, items, catalog, retrieval_scores)
        self.recent_tables = [table.slice(0, min(table.num_rows, WARMUP_ROWS))]
        return snap.predict(table)[:, 0]

    @staticmethod
    def _rows_table(
        snap: Snapshot,
        user: dict[str, Any],
        items: list[int],
        catalog: Catalog,
        retrieval_scores: np.ndarray | None,
    ) -> Any:
        """The rows as an Arrow table, the row path's way (a wrong type: RequestError 422)."""
        context = {f: v for f, v in user.items() if f in snap.context_features}
        rows = [
            {f: r[f] for f in snap.candidate_features if f in r}
            for r in catalog.catalog_rows(items)
        ]
        if retrieval_scores is not None and RETRIEVAL_SCORE in snap.candidate_features:
            for row, score in zip(rows, retrieval_scores.tolist(), strict=True):
                row[RETRIEVAL_SCORE] = score
        return rows_table(context, rows, snap.kinds)
