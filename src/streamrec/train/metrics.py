"""CTR metrics: AUC, GAUC, logloss, normalised entropy, calibration — lifetime and windowed.

Conventions (checked against scikit-learn in tests/train/test_metrics.py):
* AUC is exact: the Mann-Whitney statistic with tied scores counted as ½ (what
  sklearn.metrics.roc_auc_score computes). With one label class only it is undefined → NaN.
* GAUC is the impression-weighted mean of per-group AUCs (groups = users or requests). Groups
  whose labels are all 0 or all 1 have no AUC and are skipped, and their impressions leave the
  weights too.
* logloss is the mean binary cross-entropy, predictions clipped to [1e-7, 1 − 1e-7].
* NE (normalised entropy, He et al. 2014) = logloss / entropy of the empirical positive rate;
  below 1 means better than always predicting the base rate.
* calibration = Σ predictions / Σ labels (1 is perfect).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

_EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels, np.float64) > 0.5
    scores = np.asarray(scores, np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(labels.size, np.float64)
    # Average ranks over ties (1-based).
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.r_[0, boundaries]
    ends = np.r_[boundaries, labels.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    labels = np.asarray(labels, np.float64)
    scores = np.asarray(scores, np.float64)
    groups = np.asarray(groups)
    order = np.argsort(groups, kind="mergesort")
    g = groups[order]
    bounds = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1, g.size]
    total, weight = 0.0, 0
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[lo:hi]
        value = auc(labels[idx], scores[idx])
        if not np.isnan(value):
            total += value * (hi - lo)
            weight += hi - lo
    return total / weight if weight else float("nan")


def logloss(labels: np.ndarray, preds: np.ndarray) -> float:
    y = np.asarray(labels, np.float64)
    p = np.clip(np.asarray(preds, np.float64), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def normalized_entropy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Undefined (NaN) over one class: the base rate's entropy is 0 (clipped, it made NE
    hundreds of thousands — a number that looked like a measurement)."""
    rate = float(np.mean(labels)) if np.asarray(labels).size else 0.0
    if rate <= 0.0 or rate >= 1.0:
        return float("nan")
    base = float(np.clip(rate, _EPS, 1 - _EPS))
    entropy = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    return logloss(labels, preds) / entropy


def calibration(labels: np.ndarray, preds: np.ndarray) -> float:
    total = float(np.sum(labels))
    return float(np.sum(preds)) / total if total > 0 else float("nan")


UNDEFINED = {
    "auc": "the labels hold one class only",
    "ne": "the labels hold one class only",
    "gauc": "no group holds both classes",
    "calibration": "the labels hold no positive",
}


MIN_MEASURED_ROWS = 100  # fewer validation rows than this: the metrics are not a measurement


def measurement_warnings(metrics: dict[str, dict]) -> list[str]:
    """Why a task's validation metrics measure nothing (too few rows, one class), one line
    each — said out loud rather than printed as if they were numbers."""
    out = []
    for task, m in metrics.items():
        count, positives = m.get("count"), m.get("positives")
        if count is None or positives is None:
            continue
        if count < MIN_MEASURED_ROWS:
            out.append(f"{task}: validation metrics rest on {count} rows (fewer than "
                       f"{MIN_MEASURED_ROWS}): noise, not a measurement")
        if positives in (0, count):
            out.append(f"{task}: the validation labels hold one class only: AUC and NE are "
                       "undefined")
    return out


def json_ready(obj: object) -> object:
    """A copy fit for strict JSON: every non-finite float becomes null, and a dict that had
    one gets `undefined: {key: why}` (an AUC over one class is undefined, not NaN)."""
    if isinstance(obj, dict):
        out = {k: json_ready(v) for k, v in obj.items()}
        why = {
            k: UNDEFINED.get(k, "not a finite number")
            for k, v in obj.items()
            if isinstance(v, float) and not math.isfinite(v)
        }
        if why:
            out["undefined"] = why
        return out
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def ctr_metrics(
    labels: np.ndarray, preds: np.ndarray, groups: np.ndarray | None = None
) -> dict[str, float]:
    """All metrics of one task: auc, logloss, ne, calibration (+ gauc with groups), count,
    positives (labels ≥ 0.5: how much evidence the calibration rests on)."""
    out = {
        "auc": auc(labels, preds),
        "logloss": logloss(labels, preds),
        "ne": normalized_entropy(labels, preds),
        "calibration": calibration(labels, preds),
        "count": int(np.asarray(labels).size),
        "positives": int(np.count_nonzero(np.asarray(labels) >= 0.5)),
    }
    if groups is not None:
        out["gauc"] = gauc(labels, preds, groups)
    return out


class MetricAccumulator:
    """Collects (labels [B, T], predictions [B, T], groups [B]) batch by batch.

    `lifetime()` computes metrics over everything seen; `windowed()` over the last `window`
    examples (progressive validation in online training). Memory: the lifetime arrays grow with
    the examples seen (exact AUC needs them); pass keep_lifetime=False for unbounded streams.
    """

    def __init__(self, tasks: list[str], window: int = 10_000, keep_lifetime: bool = True) -> None:
        self.tasks = tasks
        self.window = window
        self.keep_lifetime = keep_lifetime
        self._labels: list[np.ndarray] = []
        self._preds: list[np.ndarray] = []
        self._groups: list[np.ndarray] = []
        self._recent: deque = deque()
        self._recent_rows = 0

    def update(
        self, labels: np.ndarray, preds: np.ndarray, groups: np.ndarray | None = None
    ) -> None:
        labels = np.asarray(labels, np.float64).reshape(len(labels), -1)
        preds = np.asarray(preds, np.float64).reshape(len(preds), -1)
        if self.keep_lifetime:
            self._labels.append(labels)
            self._preds.append(preds)
            if groups is not None:
                self._groups.append(np.asarray(groups))
        self._recent.append((labels, preds))
        self._recent_rows += len(labels)
        while self._recent and self._recent_rows - len(self._recent[0][0]) >= self.window:
            self._recent_rows -= len(self._recent.popleft()[0])

    def _compute(
        self, labels: np.ndarray, preds: np.ndarray, groups: np.ndarray | None
    ) -> dict[str, dict[str, float]]:
        return {t: ctr_metrics(labels[:, i], preds[:, i], groups) for i, t in enumerate(self.tasks)}

    def lifetime(self) -> dict[str, dict[str, float]]:
        if not self._labels:
            return {}
        groups = np.concatenate(self._groups) if self._groups else None
        labels, preds = np.concatenate(self._labels), np.concatenate(self._preds)
        if groups is not None and len(groups) != len(labels):
            groups = None
        return self._compute(labels, preds, groups)

    def windowed(self) -> dict[str, dict[str, float]]:
        if not self._recent:
            return {}
        labels = np.concatenate([r[0] for r in self._recent])
        preds = np.concatenate([r[1] for r in self._recent])
        return self._compute(labels, preds, None)
