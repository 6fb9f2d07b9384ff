"""Logistic regression: one weight per id (dim-1 tables) and per dense column, plus a bias.

Its defaults are the ones that match scikit-learn's fully converged LogisticRegression on the
three datasets of `benchmarks/quality.py` without per-dataset tuning (RESULTS.md):

* per-id weights: FTRL-Proximal (McMahan et al. 2013) with α = 0.3, β = 1, λ1 = 0, λ2 = 1 on
  per-example gradients (`SparseOptimizer.step`). Per-coordinate rates let an id seen
  thousands of times settle while a rare one still moves; λ2 keeps ids seen a few times from
  memorising their labels. Set `ftrl_l1` > 0 for sparse weights (ids whose |z| ≤ λ1 read 0
  and cost nothing in the exported model), or `row_optimizer: {}` to use the tables' own
  optimizer settings.
* the training job chooses α and λ2 on the validation split (`train/rate_search.py`: a
  coordinate search of four runs around these defaults) unless the config sets them.
* bias and dense weights: their own rate, `dense_lr` 0.05 (a deep model's 1e-3 moves the bias
  too slowly to follow the base rate in one pass, and the per-id weights absorb it instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from streamrec.batch import Batch
from streamrec.config import TableConfig
from streamrec.models.base import RankingModel
from streamrec.models.layers import LinearTerm
from streamrec.schema import Schema

FTRL_DEFAULTS: dict[str, Any] = {
    "optimizer": "ftrl",
    "lr": 0.3,
    "ftrl_beta": 1.0,
    "ftrl_l1": 0.0,
    "ftrl_l2": 1.0,
}


def row_settings(
    row_optimizer: Mapping[str, Any] | None, linear_lr: float | None
) -> dict[str, Any]:
    """The per-id weights' TableConfig fields: FTRL_DEFAULTS under `row_optimizer` (`{}`
    alone: the tables' own settings), with `linear_lr` as its rate when given."""
    settings = dict(FTRL_DEFAULTS if row_optimizer is None else row_optimizer)
    if row_optimizer:
        settings = FTRL_DEFAULTS | settings
    if linear_lr is not None:
        settings["lr"] = linear_lr
    return settings


class LR(RankingModel):
    def __init__(
        self,
        schema: Schema,
        tables: dict[str, TableConfig],
        linear_lr: float | None = None,
        row_optimizer: Mapping[str, Any] | None = None,
        dense_lr: float | None = 0.05,
        rate_search: bool = True,
    ) -> None:
        """row_optimizer: TableConfig fields for the per-id weights, over FTRL_DEFAULTS
        (`{}` alone: the tables' own settings); linear_lr: shorthand for its `lr`;
        dense_lr: the bias and dense weights' rate (None: `train.dense_lr`);
        rate_search: let the training job choose α and λ2 on the validation split when
        neither row_optimizer nor linear_lr is given (`train/rate_search.py`)."""
        super().__init__(schema, tables, with_embeddings=False)
        settings = row_settings(row_optimizer, linear_lr)
        self.linear = LinearTerm(schema, tables, self.num_tasks, settings)
        self.dense_lr = dense_lr

    estimates_uncertainty = True

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.linear(batch)

    @torch.no_grad()
    def uncertainty(self, batch: Batch) -> torch.Tensor:
        """[B]: √(Σ over the row's ids of 1 / (1 + times seen)) (`layers.id_variance`)."""
        return self.linear.logit_variance(batch).sqrt()

    def dense_param_groups(self, dense_lr: float) -> list[dict[str, Any]]:
        return [{"params": list(self.parameters()), "lr": self.dense_lr or dense_lr}]
