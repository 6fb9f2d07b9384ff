"""Choosing the linear model's per-id FTRL rate α and L2 strength λ2 on the validation split.

Why: no single (α, λ2) holds on every dataset. The defaults (α 0.3, λ2 1) match scikit-learn's
converged LogisticRegression on this project's three datasets, but on data we have not seen an
id table that over-fits in one epoch wants a smaller α or a larger λ2, and a slow one a larger
α. `lr` already keeps its best validation epoch; this keeps its best (α, λ2) the same way,
within a small budget: a coordinate search — α over ALPHAS at λ2 1, then λ2 over L2S at the
best α, TRIALS runs in all — each run trained as the job would be (its epochs, early stopping
and keep-best) in a temporary directory and scored by its best validation epoch
(`train.early_stopping_metric`). The job then trains the winner in its own run directory, and
the saved config names it (`model.params.row_optimizer`), so online training and serving read
the same rates.

It runs for `model.name: lr` and `gbdt_lr` (whose trees are fitted once, before the trials)
with a validation split, unless the config sets the rates itself
(`row_optimizer`, `linear_lr`) or turns it off (`model.params.rate_search: false`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamrec.config import JobConfig
from streamrec.data.splits import DatasetSplits
from streamrec.models.base import RankingModel
from streamrec.models.lr import FTRL_DEFAULTS
from streamrec.models.registry import build_model

ALPHAS = (0.1, 0.3, 1.0)
L2S = (1.0, 10.0)
TRIALS = len(ALPHAS) + len(L2S) - 1
LINEAR_MODELS = ("lr", "gbdt_lr")


def wants_rate_search(config: JobConfig, splits: DatasetSplits) -> bool:
    params = config.model.params or {}
    return (
        config.model.name in LINEAR_MODELS
        and splits.valid is not None
        and params.get("rate_search", True)
        and "row_optimizer" not in params
        and "linear_lr" not in params
    )


def search_rates(
    fitted: JobConfig,
    train: Callable[[JobConfig, Any, Path], float],
    note: Callable[[str], None] = lambda _: None,
    build: Callable[[JobConfig], RankingModel] | None = None,
) -> tuple[JobConfig, list[dict[str, float]]]:
    """The config with the chosen `row_optimizer`, and every trial {alpha, l2, score}.
    `train(config, model, run_dir)` trains one model as the job would and returns its best
    validation score (higher is better; NaN never wins); `build(config)` makes each trial's
    model (default: `build_model`)."""
    make = build or (lambda c: build_model(c.model, c.schema, c.table_configs()))
    trials: list[dict[str, float]] = []
    scores: dict[tuple[float, float], float] = {}

    def trial(alpha: float, l2: float) -> float:
        if (alpha, l2) not in scores:
            config = _with_rates(fitted, alpha, l2)
            model = make(config)
            with tempfile.TemporaryDirectory(prefix="streamrec-rate-search-") as tmp:
                score = train(config, model, Path(tmp))
            scores[alpha, l2] = score
            trials.append({"alpha": alpha, "l2": l2, "score": score})
            note(f"rate search: α {alpha:g}, λ2 {l2:g} → validation {score:.5f}")
        return scores[alpha, l2]

    default_l2 = float(FTRL_DEFAULTS["ftrl_l2"])
    alpha = _best(ALPHAS, lambda a: trial(a, default_l2), float(FTRL_DEFAULTS["lr"]))
    l2 = _best(L2S, lambda v: trial(alpha, v), default_l2)
    return _with_rates(fitted, alpha, l2), trials


def _best(values: tuple[float, ...], score: Callable[[float], float], default: float) -> float:
    """The value with the highest score; the default on ties and when every score is NaN."""
    best, best_score = default, score(default)
    for value in values:
        s = score(value)
        if s == s and (best_score != best_score or s > best_score):
            best, best_score = value, s
    return best


def _with_rates(fitted: JobConfig, alpha: float, l2: float) -> JobConfig:
    config = fitted.model_copy(deep=True)
    params = dict(config.model.params or {})
    params["row_optimizer"] = {"lr": alpha, "ftrl_l2": l2}
    config.model.params = params
    return config
