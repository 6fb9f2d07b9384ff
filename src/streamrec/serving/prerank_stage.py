"""The pre-ranking stage of POST /v1/recommend: between retrieval and ranking, a light model
(COLD, `models/cold.py`) scores every retrieved item and keeps the best `keep` for the ranker.

Retrieval returns K1 (~1,000) items, the ranker's cost grows with the rows it scores, and most
of those items never make the top k; a pre-ranker at a fraction of the ranker's cost per row
cuts the ranker's rows to K2 (~100). The stage is an ordinary model directory loaded as a
`Snapshot` (the same encoding and input kinds as the ranker's), called on a worker thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from streamrec.serving.request import rows_table
from streamrec.serving.snapshot import Snapshot
from streamrec.store import find_model_dir


class PreRankStage:
    def __init__(self, snapshot: Snapshot, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"the pre-ranker must keep at least one item (got {keep})")
        self.snapshot = snapshot
        self.keep = keep

    @classmethod
    def load(cls, path: str | Path, keep: int) -> PreRankStage:
        """The pre-ranking model in `path` (a run or model directory)."""
        return cls(Snapshot.load(find_model_dir(path)), keep)

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
        self, user: dict[str, Any], items: list[int], catalog_rows: list[dict[str, Any]]
    ) -> list[int]:
        """The `keep` items of `items` (each with its catalog row) the pre-ranker scores
        highest, best first. The user's features outside the model's context are ignored (the
        retriever may read more than the pre-ranker does); a wrong type is a 422."""
        snap = self.snapshot
        context = {f: v for f, v in user.items() if f in snap.context_features}
        candidates = [{f: r[f] for f in snap.candidate_features if f in r} for r in catalog_rows]
        scores = snap.predict(rows_table(context, candidates, snap.kinds))[:, 0]  # 422: bad type
        keep = min(self.keep, len(items))
        best = np.argpartition(-scores, keep - 1)[:keep]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [items[i] for i in best]
