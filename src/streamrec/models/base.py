"""RankingModel: what every ranking model shares — its tables, its embedding collection, and
`predict`, which turns logits into calibrated probabilities.

A model is built from the schema and the table settings; `forward(batch)` returns logits
[B, num_tasks]. To add a model, subclass RankingModel, build layers in `__init__` from
`self.embedding_dims` / `self.dense_width`, write `forward`, and register it in
`streamrec.models.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.embedding.adaptive_dim import build_tables
from streamrec.embedding.collection import Embedded, EmbeddingCollection
from streamrec.models.objective import Objective, binary_objective
from streamrec.models.with_tables import WithTables
from streamrec.schema import Schema


class RankingModel(WithTables):
    predicts_labels = True

    def __init__(
        self, schema: Schema, tables: dict[str, TableConfig], with_embeddings: bool = True
    ) -> None:
        super().__init__()
        self.schema = schema
        self.table_configs = tables
        self.num_tasks = max(1, len(schema.labels))
        self.dense_width = schema.dense_width
        self.embeddings: EmbeddingCollection | None = None
        self.features: list[str] = []
        if with_embeddings and schema.embeddings:
            own = build_tables(tables)
            self.embeddings = EmbeddingCollection(schema, own)
            self.features = self.embeddings.feature_order
        self.embedding_dims = [self.embeddings.dim(f) for f in self.features]
        # Negative down-sampling rate w used in training; predictions are re-calibrated with
        # q = p / (p + (1 − p) / w) (He et al. 2014) so that calibration stays ≈ 1.
        self.register_buffer("negative_sampling_rate", torch.ones(()))

    # Whether the model can score. A model that learns something in batch before its first step
    # (gbdt_lr's trees) is not until `prepare` ran; the training job calls it on a fresh start.
    prepared = True

    def prepare(
        self,
        train: Callable[[], Iterable[Batch]],
        valid: Callable[[], Iterable[Batch]] | None = None,
        seed: int = 0,
    ) -> dict[str, Any] | None:
        """Learn what must be learnt in batch before the first step, from the training split's
        batches (and the validation split's). → a report for the manifest, or None: most models
        have nothing to learn here."""
        return None

    def prepared_state(self) -> dict[str, torch.Tensor]:
        """What `prepare` learnt, to give a model built alike (the linear rates' trials)."""
        return {}

    def load_prepared_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Take another model's `prepared_state()`."""

    # Whether `uncertainty` gives an estimate (the linear models: count-based, per id).
    estimates_uncertainty = False

    def uncertainty(self, batch: Batch) -> torch.Tensor | None:
        """[B]: the standard deviation of each row's first-task logit — large where the model
        has seen the row's ids rarely — for exploration (`serving/exploration.py`); None for a
        model without an estimate."""
        return None

    def embed(self, batch: Batch) -> Embedded:
        if self.embeddings is None:
            return Embedded()
        return self.embeddings(batch)

    def flat_embeddings(self, emb: Embedded) -> torch.Tensor:
        """[B, Σ dims]: every feature's pooled embedding, concatenated in `self.features` order."""
        if len(emb.groups) == 1:
            names, t = emb.groups[0]
            if names == self.features:
                return t.reshape(t.shape[0], t.shape[1] * t.shape[2])
        return torch.cat([emb.pooled[f] for f in self.features], dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def objective(self, output: torch.Tensor, batch: Batch) -> Objective:
        """BCE of the logits [B, num_tasks] against the labels (`binary_objective`)."""
        return binary_objective(output, batch)

    def use_negative_sampling(self, rate: float) -> None:
        """Remember the rate, saved with the model, so `predict` re-calibrates for it."""
        self.negative_sampling_rate.fill_(rate)

    @torch.no_grad()
    def predict(self, batch: Batch) -> torch.Tensor:
        """Calibrated probabilities [B, num_tasks] (no table changes: call in eval mode)."""
        p = torch.sigmoid(self.forward(batch).float())
        w = float(self.negative_sampling_rate)
        if w < 1.0:
            p = p / (p + (1.0 - p) / w)
        return p
