"""Snapshot: the model being served — loaded read-only, updated in place by deltas.

All mutation (delta application, swapping in a reloaded model) happens on the batcher's worker
thread between batches, so inference never sees a half-applied delta and needs no lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from streamrec.batch import Batch
from streamrec.embedding.collection import EmbeddingCollection
from streamrec.embedding.quantized_rows import worth_quantizing
from streamrec.models.persistence import LoadedModel, load_model
from streamrec.serving.delta_apply import apply_delta
from streamrec.serving.inference_protocol import InferRequestReader
from streamrec.serving.request import CandidateRows, RankRequestReader
from streamrec.store import ModelDir
from streamrec.store.delta import Delta


class Snapshot:
    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model.eval()
        for table in self.model.dynamic_tables().values():
            table.drop_admission_state()  # serving never admits an id (deltas upsert rows)
        self.config = loaded.config
        self.schema = loaded.config.schema
        self.model_version: int = loaded.manifest.model_version
        # An online checkpoint already contains the deltas written before it.
        self.delta_version = loaded.manifest.last_delta_version
        self.delta_applied_at: float | None = None
        wanted = self.schema.input_columns(with_labels=False)
        self.kinds = loaded.input_kinds
        context = set(self.config.serving.context_features)
        self.context_features = [c for c in wanted if c in context]
        self.candidate_features = [c for c in wanted if c not in context]
        self.request_reader = RankRequestReader(self.kinds)
        self.tasks: list[str] = self.schema.task_names or ["label"]  # what scores are named
        # Scores carry one more column, the first task's logit σ, when the model estimates it
        # (`RankingModel.uncertainty`): /v1/rank returns it, /v1/recommend explores with it.
        self.uncertain = bool(self.model.estimates_uncertainty)
        self.infer_reader = InferRequestReader(self.kinds, self.tasks)  # /v2 (KServe) bodies

    @classmethod
    def load(
        cls, path: str | Path | ModelDir, pause: Callable[[], None] | None = None
    ) -> Snapshot:
        return cls(load_model(path, pause))

    @property
    def serving_version(self) -> str:
        return f"{self.model_version}.{self.delta_version}"

    @torch.inference_mode()
    def predict(self, table: pa.Table, rows: CandidateRows | None = None) -> np.ndarray:
        """Calibrated probabilities [rows, tasks] (+ σ: `uncertain`). `rows`: the requests
        `table` was made from, whose shared context the model then computes once each."""
        return self.predict_batch(self.encode(table, rows))

    def encode(self, table: pa.Table, rows: CandidateRows | None = None) -> Batch:
        """The model's input of `table`; with `rows` (what `table` was made from), with the
        request context of the features each request gave once (`Batch.context`)."""
        batch = self.schema.encode(table, with_labels=False)
        if rows is not None and rows.shared:
            batch = self.schema.share_requests(batch, rows.request_sizes, rows.shared)
        return batch

    @torch.inference_mode()
    def predict_batch(self, batch: Batch) -> np.ndarray:
        """Calibrated probabilities [rows, tasks] of rows already encoded for this model, and
        when the model is `uncertain` one more column: the first task's logit σ."""
        probabilities = self.model.predict(batch).numpy()
        if not self.uncertain:
            return probabilities
        sigma = self.model.uncertainty(batch).numpy().astype(probabilities.dtype)
        return np.concatenate([probabilities, sigma[:, None]], axis=1)

    def split(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities [rows, tasks], σ [rows] or None) of what `predict_batch` returned."""
        tasks = len(self.tasks)
        if scores.shape[1] > tasks:
            return scores[:, :tasks], scores[:, tasks]
        return scores, None

    def take_id_counts(self) -> tuple[int, int]:
        """(ids looked up, ids with no row) since the last call — the unknown-id rate of
        what the server was asked. Call from the thread that predicts."""
        looked_up = unknown = 0
        for collection in self.model.modules():
            if isinstance(collection, EmbeddingCollection):
                for lookup in collection.lookups:
                    looked_up += getattr(lookup, "ids_looked_up", 0)
                    unknown += getattr(lookup, "ids_unknown", 0)
                    lookup.ids_looked_up = lookup.ids_unknown = 0  # type: ignore[attr-defined]
        return looked_up, unknown

    def close(self) -> None:
        """Release what outlives a request: tiered tables' disk tiers (their private working
        copies are removed). The snapshot answers no more after this."""
        for table in self.model.dynamic_tables().values():
            if table.has_disk_tier:
                table.close()

    def take_tier_counts(self) -> dict[str, tuple[int, int, int, int]]:
        """Per tiered table: (distinct ids looked up, of those not in DRAM, rows in DRAM,
        rows on disk), the first two since the last call. Call from the thread that
        predicts."""
        out = {}
        for name, table in self.model.dynamic_tables().items():
            if table.has_disk_tier:
                out[name] = (table.ids_resolved, table.dram_misses, table.hot_rows, table.cold_rows)
                table.ids_resolved = table.dram_misses = 0
        return out

    def encode_rows(self, precision: str) -> Snapshot:
        """Hold the embedding rows at `precision` (`serving.row_precision`): every table where
        it saves bytes and that has no disk tier, and that is still fp32, is re-encoded chunk
        by chunk (`DynamicTable.set_row_precision`); a copy exported with fewer-bit rows stays
        as it is. → self."""
        if precision == "fp32":
            return self
        for table in self.model.dynamic_tables().values():
            if (table.row_precision == "fp32" and not table.has_disk_tier
                    and worth_quantizing(table.dim, precision)):
                table.set_row_precision(precision)
        return self

    def apply_delta(self, delta: Delta) -> None:
        apply_delta(self.model, delta)
        self.delta_version = delta.manifest.version
        self.delta_applied_at = time.time()

    def describe(self) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = {
            name: {"rows": len(t), "dim": t.dim, "row_precision": t.row_precision}
            for name, t in self.model.dynamic_tables().items()
        }
        for name, t in self.model.dynamic_tables().items():
            if t.has_disk_tier:
                tables[name].update(dram_rows=t.hot_rows, disk_rows=t.cold_rows)
        return {
            "model_version": self.model_version,
            "delta_version": self.delta_version,
            "serving_version": self.serving_version,
            "name": self.config.name,  # what /v2/models/{name} calls it
            "model": self.config.model.name,
            "tasks": self.schema.task_names or ["label"],
            "features": {"context": self.context_features, "candidate": self.candidate_features},
            "input_kinds": self.kinds,
            "tables": tables,
            "last_delta_applied_at": self.delta_applied_at,
            "seconds_behind_newest_delta": None,
            "path": str(self.loaded.path),
        }
